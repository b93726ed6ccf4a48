"""Run the alembic migrations from the library and the CLI (the schema's single source).

The scripts live in ``migrations/`` at the top of a checkout and ship inside the wheel as
``memorix_pg/migrations``; :func:`migrations_dir` finds whichever is present.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from .database import get_engine, unavailable
from .errors import MemorixError
from .models import SCHEMA

__all__ = ["current_revision", "downgrade", "head_revision", "migrations_dir", "upgrade"]


def migrations_dir() -> Path:
    """The alembic script directory: inside the installed package, else the checkout's."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "migrations", here.parent / "migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise MemorixError(f"the migration scripts are missing (looked in {here / 'migrations'})")


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None before the first migration."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table_schema": SCHEMA})
        return context.get_current_revision()


def _run(url: str, action: str, revision: str) -> None:
    engine = get_engine(url)
    cfg = _config()
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            if action == "upgrade":
                command.upgrade(cfg, revision)
            else:
                command.downgrade(cfg, revision)
    except DBAPIError as exc:
        if exc.connection_invalidated or isinstance(exc, sa.exc.OperationalError):
            raise unavailable(url, exc) from None
        raise


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (idempotent; safe to race)."""
    _run(url, "upgrade", revision)


def downgrade(url: str, revision: str) -> None:
    _run(url, "downgrade", revision)
