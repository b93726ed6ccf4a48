"""Commands that set memorix-pg up: the schema's migrations, the embedding models' exports, and
the demo."""

from __future__ import annotations

import click

from .options import clean_errors, database_option, embedder_option

__all__ = ["demo", "migrate", "models"]


@click.command()
@click.option("--embedder", default="sentence-transformers", show_default=True, help="Embedder to use.")
@click.option("--database-url", envvar="MEMORIX_DATABASE_URL", default=None, help="PostgreSQL URL.")
@clean_errors
def demo(embedder: str, database_url: str | None) -> None:
    """Store conversation, knowledge and episodic memories, search them, run retention,
    archive and stats, and print what happened.

    \b
    Example:
      memorix-pg demo
    """
    from ..demo import run_demo

    run_demo(embedder=embedder, database_url=database_url, echo=click.echo)


@click.command()
@database_option
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@clean_errors
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


@click.command()
@click.option("--export", "export_now", is_flag=True, help="Export the --embedder model now if not cached.")
@embedder_option
@clean_errors
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
