"""The suite's fixtures are pytest plugins in tests/support/: fixtures.py (one real PostgreSQL
server per test session, embedded or ``--database-url``, and a fresh database per test; nothing
mocks the database), hostile.py (the collections the hostile-input tests aim at) and
logical_server.py (a second server, ``wal_level = logical``, for moving tenants between servers)."""

pytest_plugins = ["tests.support.fixtures", "tests.support.hostile", "tests.support.logical_server"]
