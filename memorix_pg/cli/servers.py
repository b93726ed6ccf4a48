"""Commands that run servers: the embedded PostgreSQL (``server start|stop|status|url``) and the
MCP server (``mcp``)."""

from __future__ import annotations

import click

from .options import clean_errors, collection_option, database_option, embedder_option

__all__ = ["mcp", "server"]


@click.group()
def server() -> None:
    """Manage the embedded PostgreSQL server (data in $MEMORIX_DATA_DIR).

    \b
    Example:
      memorix-pg server start && psql "$(memorix-pg server url)"
    """


@server.command("start")
@clean_errors
def server_start() -> None:
    """Start the embedded server and keep it running after this command exits.

    \b
    Example:
      memorix-pg server start
    """
    from ..server import ensure_embedded_server

    url = ensure_embedded_server(keep_running=True)
    click.echo(url)


@server.command("stop")
@clean_errors
def server_stop() -> None:
    """Stop the embedded server.

    \b
    Example:
      memorix-pg server stop
    """
    from ..server import stop_embedded_server

    click.echo("stopped" if stop_embedded_server() else "not running")


@server.command("status")
def server_status() -> None:
    """Say whether the embedded server runs, with its pid, data dir and URL.

    \b
    Example:
      memorix-pg server status
    """
    from ..server import embedded_server_status

    status = embedded_server_status()
    click.echo(f"data dir: {status.data_dir}")
    if status.running:
        click.echo(f"running:  yes (pid {status.pid}{', kept running' if status.keep_running else ''})")
        click.echo(f"url:      {status.url}")
    else:
        click.echo("running:  no")


@server.command("url")
@clean_errors
def server_url() -> None:
    """Print the embedded server's URL (starting it if needed) for psql or SQLAlchemy.

    \b
    Example:
      psql "$(memorix-pg server url)"
    """
    from ..server import embedded_server_status, ensure_embedded_server

    status = embedded_server_status()
    click.echo(status.url if status.running and status.url else ensure_embedded_server(keep_running=True))


@click.command()
@click.option(
    "--transport",
    type=click.Choice(["stdio", "http"]),
    default="stdio",
    show_default=True,
    help="stdio: the client starts this command; http: streamable HTTP at http://HOST:PORT/mcp.",
)
@click.option(
    "--host",
    default=None,
    help="Address to listen on with --transport http (default 127.0.0.1). Only loopback "
    "addresses are accepted unless --allow-remote is given.",
)
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="Port for --transport http (default 8765)."
)
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Accept a --host that is not loopback. The server has no authentication: whoever reaches "
    "it can read and delete memories, so put an authenticating proxy in front.",
)
@click.option("--tenant", default=None, help="Tenant every tool reads and writes as.")
@database_option
@collection_option
@embedder_option
@clean_errors
def mcp(
    transport: str,
    host: str | None,
    port: int | None,
    allow_remote: bool,
    tenant: str | None,
    database_url: str | None,
    collection: str,
    embedder: str,
) -> None:
    """Serve memory tools to MCP clients: remember, recall, forget, list_collections, stats.

    The tools use --collection unless a call names another; only remember creates a collection.
    Over HTTP it listens on loopback addresses only, since it has no authentication.

    \b
    Needs the mcp extra:
      pip install 'memorix-pg[mcp]'

    \b
    Example:
      memorix-pg mcp --collection notes
      memorix-pg mcp --transport http --host 127.0.0.1 --port 8765
    """
    from ..integrations.mcp import DEFAULT_HOST, DEFAULT_PORT, require_fastmcp, serve

    if transport == "stdio" and (host is not None or port is not None or allow_remote):
        raise click.UsageError("--host, --port and --allow-remote apply to --transport http only")
    try:
        require_fastmcp()
    except ImportError as exc:
        raise click.ClickException(str(exc)) from None
    serve(
        "http" if transport == "http" else "stdio",
        host=host or DEFAULT_HOST,
        port=port or DEFAULT_PORT,
        allow_remote=allow_remote,
        database_url=database_url,
        collection=collection,
        embedder=embedder,
        tenant=tenant,
    )
