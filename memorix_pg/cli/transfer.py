"""Commands that carry memories between files, stores and databases: JSONL import and export,
Chroma import, backup and restore, and moving a tenant to another database."""

from __future__ import annotations

import dataclasses
import json

import click

from .options import clean_errors, collection_option, database_option, embedder_option, json_option, open_api

__all__ = [
    "backup_command",
    "export",
    "import_chroma_command",
    "import_command",
    "move_tenant_command",
    "restore_command",
]


@click.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@database_option
@collection_option
@embedder_option
@clean_errors
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

    api = open_api(database_url, collection, embedder)
    click.echo(f"imported {import_jsonl(api, path, progress=not no_progress)} memories into {collection!r}")


@click.command()
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
@clean_errors
def export(
    output: str, filter_json: str | None, database_url: str | None, collection: str, embedder: str
) -> None:
    """Write a collection's memories as JSONL, embeddings included (import reads it back exactly).

    \b
    Example:
      memorix-pg export --collection notes -o notes.jsonl
    """
    from ..transfer import export_jsonl

    api = open_api(database_url, collection, embedder)
    flt = json_option(filter_json, "--filter")
    with click.open_file(output, "w", encoding="utf-8") as out:
        count = export_jsonl(api, out, flt, progress=output != "-")
    click.echo(f"exported {count} memories from {collection!r}", err=True)


@click.command("import-chroma")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--collection", "-c", default=None, help="Chroma collection to copy (default: all).")
@click.option("--to", "target", default=None, help="memorix collection to copy into (default: same name).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@database_option
@embedder_option
@clean_errors
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


@click.command("backup")
@click.argument("path", type=click.Path(dir_okay=False, writable=True))
@database_option
@clean_errors
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


@click.command("restore")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--replace", is_flag=True, help="Replace the collections the database holds already.")
@database_option
@clean_errors
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


@click.command("move-tenant")
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
@clean_errors
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
