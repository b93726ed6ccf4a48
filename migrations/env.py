"""alembic environment for memorix-pg (stock two-mode env.py).

Online mode uses the connection handed over in ``config.attributes["connection"]`` when the
library migrates itself, else ``MEMORIX_DATABASE_URL``, else the embedded server. A
transaction-scoped advisory lock serialises concurrent migrators (several processes
starting at once), and the schema is created first because it holds the version table.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, pool, text
from sqlalchemy.schema import CreateSchema

from memorix_pg.models import SCHEMA, Base

config = context.config
target_metadata = Base.metadata

# Any constant works; it only has to be the same for every migrator.
MIGRATION_LOCK_KEY = 7_263_110_452


def _url() -> str:
    from memorix_pg.database import resolve_database, sqlalchemy_url

    explicit = config.get_main_option("sqlalchemy.url")
    return sqlalchemy_url(explicit or resolve_database().url)


def _include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    # Per-collection HNSW indexes are created at run time, not by migrations.
    return not (
        type_ == "index"
        and name is not None
        and name.startswith(("memories_embedding_hnsw_", "memories_embedding_alt_hnsw_"))
    )


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table_schema=SCHEMA,
        include_schemas=True,
        include_object=_include_object,
        transaction_per_migration=False,
    )


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        version_table_schema=SCHEMA,
        include_schemas=True,
    )
    with context.begin_transaction():
        context.execute(CreateSchema(SCHEMA, if_not_exists=True))
        context.run_migrations()


def _run_online(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        connection.execute(CreateSchema(SCHEMA, if_not_exists=True))
        context.run_migrations()


def run_migrations_online() -> None:
    shared = config.attributes.get("connection")
    if shared is not None:
        _run_online(shared)
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run_online(connection)
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
