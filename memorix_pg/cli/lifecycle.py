"""Commands that remove or move memories by age, TTL, filter or subject: cleanup,
purge-expired, archive and forget."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta

import click

from .options import clean_errors, collection_option, database_option, embedder_option, json_option, open_api

__all__ = ["archive", "cleanup", "forget_command", "purge_expired"]


def _duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``15m``, ``90s`` or ``2w``."""
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    value, unit = text[:-1], text[-1:]
    if unit not in units or not value.isdigit() or int(value) <= 0:
        raise click.BadParameter(f"{text!r} is not a positive number followed by s, m, h, d or w (e.g. 30d)")
    return timedelta(**{units[unit]: int(value)})


@click.command()
@click.option("--older-than", required=True, help="Age, e.g. 30d, 12h, 2w.")
@click.option("--filter", "-f", "filter_json", default=None, help="Only memories matching this JSON filter.")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@database_option
@collection_option
@embedder_option
@clean_errors
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
    api = open_api(database_url, collection, embedder)
    flt = json_option(filter_json, "--filter")
    if dry_run:
        click.echo(f"would delete {api.count_older_than(age, flt)} memories older than {older_than}")
    else:
        click.echo(f"deleted {api.cleanup(age, flt)} memories older than {older_than}")


@click.command("purge-expired")
@database_option
@collection_option
@embedder_option
@clean_errors
def purge_expired(database_url: str | None, collection: str, embedder: str) -> None:
    """Delete memories whose TTL has passed.

    \b
    Example:
      memorix-pg purge-expired --collection sessions
    """
    api = open_api(database_url, collection, embedder)
    click.echo(f"deleted {api.purge_expired()} expired memories")


@click.command()
@click.option("--filter", "-f", "filter_json", required=True, help="Which memories to move (JSON).")
@click.option("--to", "target", required=True, help="Archive collection (created when absent).")
@database_option
@collection_option
@embedder_option
@clean_errors
def archive(filter_json: str, target: str, database_url: str | None, collection: str, embedder: str) -> None:
    """Move matching memories to another collection in one statement, embeddings kept.

    \b
    Example:
      memorix-pg archive --filter '{"timestamp": {"$lt": "2026-01-01"}}' --to archive_2025
    """
    api = open_api(database_url, collection, embedder)
    moved = api.archive(json_option(filter_json, "--filter"), to=target)
    click.echo(f"moved {moved} memories from {collection!r} to {target!r}")


@click.command("forget")
@click.option("--where", "where_json", required=True, help="JSON filter naming the subject.")
@click.option("--dry-run", is_flag=True, help="Count what would be erased; erase nothing.")
@click.option("--tenant", default=None, help="Only this tenant's memories (default: every tenant's).")
@database_option
@clean_errors
def forget_command(where_json: str, dry_run: bool, tenant: str | None, database_url: str | None) -> None:
    """Erase a person: every memory matching --where in every collection (archives included)
    and every summary built from them, in one transaction; prints the receipt as JSON.

    \b
    Example:
      memorix-pg forget --where '{"user_id": "u1"}' --dry-run
    """
    from ..api import forget

    receipt = forget(json_option(where_json, "--where"), database_url, tenant, dry_run=dry_run)
    click.echo(json.dumps({**dataclasses.asdict(receipt), "total": receipt.total}, sort_keys=True))
