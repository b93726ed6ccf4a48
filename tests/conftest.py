"""The suite's fixtures are pytest plugins in tests/support/: fixtures.py (one real PostgreSQL
server per test session, embedded or ``--database-url``, and a fresh database per test; nothing
mocks the database) and hostile.py (the collections the hostile-input tests aim at)."""

pytest_plugins = ["tests.support.fixtures", "tests.support.hostile"]
