"""``memorix-pg``: a thin command-line layer over the library.

Each command opens the database, calls one library function, and turns a library error
into a one-line message and exit status 1 (no traceback for a user's mistake).
"""

from __future__ import annotations

import click

from .install import demo, migrate, models
from .lifecycle import archive, cleanup, forget_command, purge_expired
from .memories import check_recall, collections, search, stats, store
from .rewrite import reembed, rotate_key
from .servers import mcp, server
from .transfer import (
    backup_command,
    export,
    import_chroma_command,
    import_command,
    move_tenant_command,
    restore_command,
)

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="memorix-pg")
def main() -> None:
    """memorix-pg: AI memory on PostgreSQL + pgvector.

    \b
    Example:
      memorix-pg demo
    """


# One module per group of commands; each command is added here, so this list is the whole CLI
# (``--help`` lists them sorted).
for _command in (
    demo,
    migrate,
    server,
    models,
    store,
    search,
    collections,
    stats,
    check_recall,
    cleanup,
    purge_expired,
    archive,
    import_command,
    export,
    import_chroma_command,
    rotate_key,
    reembed,
    mcp,
    backup_command,
    restore_command,
    forget_command,
    move_tenant_command,
):
    main.add_command(_command)
