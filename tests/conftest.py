"""The suite's fixtures live in tests/support/fixtures.py (a plugin): one real PostgreSQL server
per test session (embedded, or ``--database-url``), a fresh database per test. Nothing mocks
the database. The other helpers are in tests/support/ as well."""

pytest_plugins = ["tests.support.fixtures"]
