"""Commands that rewrite a collection in place: its texts under a new key, its vectors with
another embedder."""

from __future__ import annotations

import click

from .options import clean_errors, collection_option, database_option, embedder_option

__all__ = ["reembed", "rotate_key"]


@click.command("rotate-key")
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
@clean_errors
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


@click.command()
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
@clean_errors
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
