"""What the tests and the benchmarks share: fixtures (a pytest plugin), helpers, the fault lab, the
load driver and its worker, and the MongoDB reference model and strategies of the filter tests.

Import from the modules themselves; this package imports nothing, so ``python -m
tests.support.load_worker`` starts with memorix_pg alone.
"""
