"""``memorix-pg``: a thin command-line layer over the library.

Each command opens the database, calls one library function, and turns a library error
into a one-line message and exit status 1 (no traceback for a user's mistake).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import click

from ..errors import MemorixError

F = TypeVar("F", bound=Callable[..., Any])


def _clean_errors(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MemorixError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None

    return wrapper  # type: ignore[return-value]


def _json_option(value: str | None, what: str) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"{what} is not valid JSON: {exc.msg} at column {exc.colno}") from None
    except ValueError as exc:  # e.g. an integer longer than Python parses (sys.get_int_max_str_digits)
        raise click.BadParameter(f"{what} is not valid JSON: {exc}") from None


database_option = click.option(
    "--database-url",
    envvar="MEMORIX_DATABASE_URL",
    default=None,
    help="PostgreSQL URL (default: $MEMORIX_DATABASE_URL, else the embedded server).",
)
collection_option = click.option(
    "--collection", "-c", default="default", show_default=True, help="Collection name."
)
embedder_option = click.option(
    "--embedder",
    default="sentence-transformers",
    show_default=True,
    help="'sentence-transformers', 'sentence-transformers/<model>', or 'hash'.",
)


def _api(database_url: str | None, collection: str, embedder: str) -> Any:
    from ..api import MemoryAPI

    return MemoryAPI(embedder=embedder, collection_name=collection, database_url=database_url)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="memorix-pg")
def main() -> None:
    """memorix-pg: AI memory on PostgreSQL + pgvector.

    \b
    Example:
      memorix-pg demo
    """


@main.command()
@click.option("--embedder", default="sentence-transformers", show_default=True, help="Embedder to use.")
@click.option("--database-url", envvar="MEMORIX_DATABASE_URL", default=None, help="PostgreSQL URL.")
@_clean_errors
def demo(embedder: str, database_url: str | None) -> None:
    """Store conversation, knowledge and episodic memories, search them, run retention,
    archive and stats, and print what happened.

    \b
    Example:
      memorix-pg demo
    """
    from ..demo import run_demo

    run_demo(embedder=embedder, database_url=database_url, echo=click.echo)


@main.command()
@database_option
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@_clean_errors
def migrate(database_url: str | None, revision: str) -> None:
    """Create or upgrade the memorix schema (alembic migrations shipped in the package).

    \b
    Example:
      MEMORIX_DATABASE_URL=postgresql://user:pass@localhost:5432/memorix memorix-pg migrate
    """
    from .. import migrate as migrations
    from ..database import check_pgvector, get_engine, redact_url, resolve_database

    resolved = resolve_database(database_url)
    check_pgvector(get_engine(resolved.url), resolved.url)
    migrations.upgrade(resolved.url, revision)
    at = migrations.current_revision(get_engine(resolved.url))
    click.echo(f"{redact_url(resolved.url)} is at revision {at}")
    if at == migrations.head_revision():
        from ..catalog import ensure_vector_indexes

        with get_engine(resolved.url).begin() as conn:
            built = ensure_vector_indexes(conn)
        if built:
            click.echo(f"built the missing HNSW index of: {', '.join(built)}")


@main.group()
def server() -> None:
    """Manage the embedded PostgreSQL server (data in $MEMORIX_DATA_DIR).

    \b
    Example:
      memorix-pg server start && psql "$(memorix-pg server url)"
    """


@server.command("start")
@_clean_errors
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
@_clean_errors
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
@_clean_errors
def server_url() -> None:
    """Print the embedded server's URL (starting it if needed) for psql or SQLAlchemy.

    \b
    Example:
      psql "$(memorix-pg server url)"
    """
    from ..server import embedded_server_status, ensure_embedded_server

    status = embedded_server_status()
    click.echo(status.url if status.running and status.url else ensure_embedded_server(keep_running=True))


@main.command()
@click.option("--export", "export_now", is_flag=True, help="Export the --embedder model now if not cached.")
@embedder_option
@_clean_errors
def models(export_now: bool, embedder: str) -> None:
    """List the cached ONNX exports of embedding models ($MEMORIX_DATA_DIR/models) and their sizes.

    A sentence-transformers model is exported on first use; --export does it ahead of time.

    \b
    Example:
      memorix-pg models --export
    """
    from ..onnx_embedder import list_exports, models_dir

    if export_now:
        from ..embedders import SentenceTransformerEmbedder, resolve_embedder

        chosen = resolve_embedder(embedder)
        if not isinstance(chosen, SentenceTransformerEmbedder):
            raise click.UsageError(f"--embedder {embedder!r} has no ONNX export (only sentence-transformers)")
        click.echo(f"exported {chosen.name} to {chosen.onnx_model().directory}")
    cache = models_dir()
    exports = list_exports(cache)
    click.echo(f"models dir: {cache}")
    if not exports:
        click.echo("(no cached exports)")
        return
    for item in exports:
        status = "ok" if item.problem is None else f"damaged, rebuilt on next use: {item.problem}"
        click.echo(
            f"{item.path.name}  {item.model}  {item.size_bytes / 1e6:.1f} MB  {item.created}  {status}"
        )
    click.echo(f"total: {sum(e.size_bytes for e in exports) / 1e6:.1f} MB in {len(exports)} export(s)")


@main.command()
@click.argument("text")
@click.option("--metadata", "-m", default=None, help="Metadata as a JSON object.")
@click.option(
    "--id",
    "memory_id",
    default=None,
    help="Memory id, any string (default: a new UUID); replaces that memory.",
)
@database_option
@collection_option
@embedder_option
@_clean_errors
def store(
    text: str,
    metadata: str | None,
    memory_id: str | None,
    database_url: str | None,
    collection: str,
    embedder: str,
) -> None:
    """Store one memory and print its id.

    \b
    Example:
      memorix-pg store "User prefers dark mode" -m '{"type": "preference", "user_id": "u1"}'
    """
    api = _api(database_url, collection, embedder)
    click.echo(api.store(text, metadata=_json_option(metadata, "--metadata"), id=memory_id))


@main.command()
@click.argument("query")
@click.option("--filter", "-f", "filter_json", default=None, help="Mongo-style filter as JSON.")
@click.option("--top-k", "-k", default=5, show_default=True, help="How many results.")
@click.option(
    "--mode",
    type=click.Choice(["vector", "text", "hybrid"]),
    default="vector",
    show_default=True,
    help="Rank by embedding similarity, by full text search, or by both fused.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@database_option
@collection_option
@embedder_option
@_clean_errors
def search(
    query: str,
    filter_json: str | None,
    top_k: int,
    mode: str,
    as_json: bool,
    database_url: str | None,
    collection: str,
    embedder: str,
) -> None:
    """Print the memories most similar to QUERY (an empty QUERY lists the newest).

    \b
    Example:
      memorix-pg search "what does the user like?" --filter '{"type": "preference"}' --top-k 3
      memorix-pg search "status of order 48213" --mode hybrid
    """
    api = _api(database_url, collection, embedder)
    results = api.retrieve(query, top_k=top_k, filter=_json_option(filter_json, "--filter"), mode=mode)
    for memory in results:
        if as_json:
            click.echo(
                json.dumps(
                    {"id": memory.id, "score": memory.score, "text": memory.text, "metadata": memory.metadata}
                )
            )
        else:
            score = f"{memory.score:.3f}" if memory.score is not None else "  -  "
            click.echo(f"{score}  {memory.text}  {json.dumps(memory.metadata)}")
    if not results and not as_json:
        click.echo("(no memories match)", err=True)


@main.command()
@database_option
@_clean_errors
def collections(database_url: str | None) -> None:
    """List the collections: name, memories, embedder, dimensions, distance, precision.

    \b
    Example:
      memorix-pg collections
    """
    from ..api import list_collections

    found = list_collections(database_url)
    if not found:
        click.echo("(no collections)", err=True)
        return
    rows = [("collection", "memories", "embedder", "dimensions", "distance", "precision")]
    rows += [(c.name, str(c.count), c.embedder, str(c.dimensions), c.distance, c.precision) for c in found]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip())


@main.command()
@click.option("--group-by", default="type", show_default=True, help="Metadata key to count by.")
@database_option
@collection_option
@embedder_option
@_clean_errors
def stats(group_by: str, database_url: str | None, collection: str, embedder: str) -> None:
    """Count a collection's memories, grouped by a metadata key.

    \b
    Example:
      memorix-pg stats --collection conversation_u1 --group-by role
    """
    api = _api(database_url, collection, embedder)
    result = api.stats(group_by)
    click.echo(f"collection {collection!r}: {result['total']} memories")
    width = max([len(str(k)) for k in result["groups"]] + [len(group_by)])
    click.echo(f"{group_by:<{width}}  count")
    for key, count in result["groups"].items():
        click.echo(f"{key!s:<{width}}  {count}")


@main.command("check-recall")
@click.option("--queries", default=100, show_default=True, help="Stored memories used as queries.")
@click.option("--top-k", default=10, show_default=True, help="k of recall@k.")
@click.option("--filter", "filter_json", default=None, help="Only memories matching this JSON filter.")
@click.option("--target", default=0.99, show_default=True, help="Recall the suggested ef_search must reach.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@database_option
@collection_option
@embedder_option
@_clean_errors
def check_recall(
    queries: int,
    top_k: int,
    filter_json: str | None,
    target: float,
    as_json: bool,
    database_url: str | None,
    collection: str,
    embedder: str,
) -> None:
    """Measure a collection's search recall against exact search, on its own data.

    Stored vectors serve as queries; prints recall@k of searches as planned, the HNSW walk's
    recall by ef_search, the worst queries and a suggested ef_search.

    \b
    Example:
      memorix-pg check-recall --collection knowledge --queries 200
    """
    api = _api(database_url, collection, embedder)
    report = api.check_recall(queries, top_k, _json_option(filter_json, "--filter"), target=target)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(report)))
    else:
        click.echo(str(report))


def _duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``15m``, ``90s`` or ``2w``."""
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    value, unit = text[:-1], text[-1:]
    if unit not in units or not value.isdigit() or int(value) <= 0:
        raise click.BadParameter(f"{text!r} is not a positive number followed by s, m, h, d or w (e.g. 30d)")
    return timedelta(**{units[unit]: int(value)})


@main.command()
@click.option("--older-than", required=True, help="Age, e.g. 30d, 12h, 2w.")
@click.option("--filter", "-f", "filter_json", default=None, help="Only memories matching this JSON filter.")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@database_option
@collection_option
@embedder_option
@_clean_errors
def cleanup(
    older_than: str,
    filter_json: str | None,
    dry_run: bool,
    database_url: str | None,
    collection: str,
    embedder: str,
) -> None:
    """Delete memories stored longer ago than --older-than (one DELETE).

    \b
    Example:
      memorix-pg cleanup --older-than 30d --filter '{"type": "conversation"}' --dry-run
    """
    age = _duration(older_than)
    api = _api(database_url, collection, embedder)
    flt = _json_option(filter_json, "--filter")
    if dry_run:
        click.echo(f"would delete {api.count_older_than(age, flt)} memories older than {older_than}")
    else:
        click.echo(f"deleted {api.cleanup(age, flt)} memories older than {older_than}")


@main.command("purge-expired")
@database_option
@collection_option
@embedder_option
@_clean_errors
def purge_expired(database_url: str | None, collection: str, embedder: str) -> None:
    """Delete memories whose TTL has passed.

    \b
    Example:
      memorix-pg purge-expired --collection sessions
    """
    api = _api(database_url, collection, embedder)
    click.echo(f"deleted {api.purge_expired()} expired memories")


@main.command()
@click.option("--filter", "-f", "filter_json", required=True, help="Which memories to move (JSON).")
@click.option("--to", "target", required=True, help="Archive collection (created when absent).")
@database_option
@collection_option
@embedder_option
@_clean_errors
def archive(filter_json: str, target: str, database_url: str | None, collection: str, embedder: str) -> None:
    """Move matching memories to another collection in one statement, embeddings kept.

    \b
    Example:
      memorix-pg archive --filter '{"timestamp": {"$lt": "2026-01-01"}}' --to archive_2025
    """
    api = _api(database_url, collection, embedder)
    moved = api.archive(_json_option(filter_json, "--filter"), to=target)
    click.echo(f"moved {moved} memories from {collection!r} to {target!r}")


@main.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@database_option
@collection_option
@embedder_option
@_clean_errors
def import_command(
    path: str, no_progress: bool, database_url: str | None, collection: str, embedder: str
) -> None:
    """Store the memories of a JSONL file (text, metadata, optional id, embedding, created_at).

    Lines with ids are upserted, so re-running an interrupted import is safe.

    \b
    Example:
      memorix-pg import memories.jsonl --collection notes
    """
    from ..transfer import import_jsonl

    api = _api(database_url, collection, embedder)
    click.echo(f"imported {import_jsonl(api, path, progress=not no_progress)} memories into {collection!r}")


@main.command()
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True),
    default="-",
    show_default=True,
    help="File to write ('-' for standard output).",
)
@click.option("--filter", "-f", "filter_json", default=None, help="Only memories matching this JSON filter.")
@database_option
@collection_option
@embedder_option
@_clean_errors
def export(
    output: str, filter_json: str | None, database_url: str | None, collection: str, embedder: str
) -> None:
    """Write a collection's memories as JSONL, embeddings included (import reads it back exactly).

    \b
    Example:
      memorix-pg export --collection notes -o notes.jsonl
    """
    from ..transfer import export_jsonl

    api = _api(database_url, collection, embedder)
    flt = _json_option(filter_json, "--filter")
    with click.open_file(output, "w", encoding="utf-8") as out:
        count = export_jsonl(api, out, flt, progress=output != "-")
    click.echo(f"exported {count} memories from {collection!r}", err=True)


@main.command("import-chroma")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--collection", "-c", default=None, help="Chroma collection to copy (default: all).")
@click.option("--to", "target", default=None, help="memorix collection to copy into (default: same name).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@database_option
@embedder_option
@_clean_errors
def import_chroma_command(
    path: str,
    collection: str | None,
    target: str | None,
    no_progress: bool,
    database_url: str | None,
    embedder: str,
) -> None:
    """Copy a Chroma persistent store: ids, documents, metadatas and embeddings (no re-embedding).

    \b
    Example:
      memorix-pg import-chroma ./chroma_db --collection knowledge
    """
    from ..transfer import import_chroma

    for result in import_chroma(
        path, collection, target, database_url=database_url, embedder=embedder, progress=not no_progress
    ):
        extra = (
            f" ({result.skipped_without_document} without a document skipped)"
            if result.skipped_without_document
            else ""
        )
        click.echo(f"{result.source} -> {result.target}: {result.imported} memories{extra}")


@main.command("rotate-key")
@click.option(
    "--old-key",
    envvar="MEMORIX_ENCRYPTION_KEY",
    default=None,
    help="Current key (default: $MEMORIX_ENCRYPTION_KEY; none if the data is not encrypted yet).",
)
@click.option(
    "--new-key",
    envvar="MEMORIX_NEW_ENCRYPTION_KEY",
    default=None,
    help="New key ($MEMORIX_NEW_ENCRYPTION_KEY).",
)
@click.option("--decrypt", is_flag=True, help="Store the data in plaintext again (no new key).")
@click.option("--generate", is_flag=True, help="Only print a new random key.")
@click.option("--encrypted-metadata", default="", help="Comma-separated metadata keys that are encrypted.")
@click.option("--tenant", default=None, help="Tenant whose memories to rewrite.")
@database_option
@collection_option
@embedder_option
@_clean_errors
def rotate_key(
    old_key: str | None,
    new_key: str | None,
    decrypt: bool,
    generate: bool,
    encrypted_metadata: str,
    tenant: str | None,
    database_url: str | None,
    collection: str,
    embedder: str,
) -> None:
    """Re-encrypt a collection's texts under a new key, in one transaction.

    Keys come from the environment so they stay out of the process list.

    \b
    Example:
      export MEMORIX_NEW_ENCRYPTION_KEY=$(memorix-pg rotate-key --generate)
      MEMORIX_ENCRYPTION_KEY=<old key> memorix-pg rotate-key --collection notes
    """
    from ..api import MemoryAPI
    from ..crypto import generate_key

    if generate:
        click.echo(generate_key())
        return
    if new_key is None and not decrypt:
        raise click.UsageError("give a new key ($MEMORIX_NEW_ENCRYPTION_KEY or --new-key), or --decrypt")
    keys = tuple(k.strip() for k in encrypted_metadata.split(",") if k.strip())
    api = MemoryAPI(
        embedder=embedder,
        collection_name=collection,
        database_url=database_url,
        tenant=tenant,
        encryption_key=old_key,
        encrypted_metadata=keys if old_key else (),
    )
    count = api.rotate_key(None if decrypt else new_key, encrypted_metadata=keys)
    click.echo(f"rewrote {count} memories of {collection!r} under {'no key' if decrypt else 'the new key'}")


@main.command()
@click.option("--embedder", "new_embedder", required=True, help="The embedder to re-embed with, e.g. 'hash'.")
@click.option(
    "--batch", type=click.IntRange(1), default=256, show_default=True, help="Memories per transaction."
)
@click.option(
    "--encryption-key",
    envvar="MEMORIX_ENCRYPTION_KEY",
    default=None,
    help="The collection's key, if its texts are encrypted (default: $MEMORIX_ENCRYPTION_KEY).",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@database_option
@collection_option
@_clean_errors
def reembed(
    new_embedder: str,
    batch: int,
    encryption_key: str | None,
    no_progress: bool,
    database_url: str | None,
    collection: str,
) -> None:
    """Re-embed a collection with another embedder, online; resumes an interrupted run.

    Reads and writes go on meanwhile; the collection switches to the new embedder (and
    dimension) in one transaction at the end.

    \b
    Example:
      memorix-pg reembed --collection notes --embedder sentence-transformers/all-mpnet-base-v2
    """
    from ..api import MemoryAPI, list_collections

    current = {c.name: c.embedder for c in list_collections(database_url)}
    if collection not in current:
        raise click.ClickException(f"CollectionNotFound: no collection {collection!r} in this database")
    api = MemoryAPI(
        embedder=current[collection],
        collection_name=collection,
        database_url=database_url,
        encryption_key=encryption_key,
    )
    report = api.reembed(new_embedder, batch, progress=not no_progress)
    click.echo(
        f"re-embedded {collection!r} with {report.embedder!r} ({report.dimensions} dims): "
        f"{report.embedded} memories embedded{' (resumed)' if report.resumed else ''}"
    )


@main.command()
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
@_clean_errors
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


@main.command("backup")
@click.argument("path", type=click.Path(dir_okay=False, writable=True))
@database_option
@_clean_errors
def backup_command(path: str, database_url: str | None) -> None:
    """Back up the memorix schema (collections, memories, vectors, indexes, RLS policies) to
    FILE with pg_dump.

    \b
    Example:
      memorix-pg backup memories.dump
    """
    from ..backup import backup

    report = backup(path, database_url)
    click.echo(
        f"backed up {report.collections} collections, {report.memories} memories to {report.path} "
        f"({report.bytes} bytes)"
    )


@main.command("restore")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--replace", is_flag=True, help="Replace the collections the database holds already.")
@database_option
@_clean_errors
def restore_command(path: str, replace: bool, database_url: str | None) -> None:
    """Restore a backup made by `memorix-pg backup`, in one transaction. Refuses a database
    that holds collections unless --replace.

    \b
    Example:
      memorix-pg restore memories.dump --replace
    """
    from ..backup import restore

    report = restore(path, database_url, replace=replace)
    click.echo(f"restored {report.collections} collections, {report.memories} memories from {report.path}")


@main.command("forget")
@click.option("--where", "where_json", required=True, help="JSON filter naming the subject.")
@click.option("--dry-run", is_flag=True, help="Count what would be erased; erase nothing.")
@click.option("--tenant", default=None, help="Only this tenant's memories (default: every tenant's).")
@database_option
@_clean_errors
def forget_command(where_json: str, dry_run: bool, tenant: str | None, database_url: str | None) -> None:
    """Erase a person: every memory matching --where in every collection (archives included)
    and every summary built from them, in one transaction; prints the receipt as JSON.

    \b
    Example:
      memorix-pg forget --where '{"user_id": "u1"}' --dry-run
    """
    from ..api import forget

    receipt = forget(_json_option(where_json, "--where"), database_url, tenant, dry_run=dry_run)
    click.echo(json.dumps({**dataclasses.asdict(receipt), "total": receipt.total}, sort_keys=True))


@main.command("move-tenant")
@click.argument("tenant")
@click.option("--to", "to", required=True, help="PostgreSQL URL of the destination database.")
@click.option(
    "--timeout", default=600.0, show_default=True, type=float, help="Seconds to wait for the copy to match."
)
@click.option(
    "--source-conninfo",
    default=None,
    help="How the destination server reaches the source (default: the source URL).",
)
@click.option("--keep-source", is_flag=True, help="Copy and check, but keep the tenant at the source.")
@database_option
@_clean_errors
def move_tenant_command(
    tenant: str,
    to: str,
    timeout: float,
    source_conninfo: str | None,
    keep_source: bool,
    database_url: str | None,
) -> None:
    """Move every memory of TENANT to another database by logical replication, online; the
    source is cleaned only after counts and checksums match. Prints the receipt as JSON.

    \b
    Example:
      memorix-pg move-tenant acme --to postgresql://user:pass@db2/memorix
    """
    from ..move import move_tenant

    receipt = move_tenant(
        tenant, to, database_url, timeout, source_conninfo=source_conninfo, clean_source=not keep_source
    )
    click.echo(json.dumps({**dataclasses.asdict(receipt), "total": receipt.total}, sort_keys=True))

