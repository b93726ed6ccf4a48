"""Commands that write and read memories: store, search, the collections, stats and the
search's recall."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from datetime import timedelta
from typing import Any

import click

from ..api import MemoryAPI
from .options import clean_errors, collection_option, database_option, embedder_option, json_option, open_api

__all__ = ["check_recall", "collections", "search", "stats", "store"]


@click.command()
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
@clean_errors
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
    api = open_api(database_url, collection, embedder)
    click.echo(api.store(text, metadata=json_option(metadata, "--metadata"), id=memory_id))


# retrieve's own defaults, so the options cannot drift from the library's.
_RETRIEVE = inspect.signature(MemoryAPI.retrieve).parameters
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _default(name: str) -> Any:
    return _RETRIEVE[name].default


def _shown(span: timedelta) -> str:
    """A span as the shortest whole form --half-life reads back (86400 s -> 1d)."""
    seconds = span.total_seconds()
    for unit in ("d", "h", "m"):
        if seconds and seconds % _UNITS[unit] == 0:
            return f"{seconds / _UNITS[unit]:g}{unit}"
    return f"{seconds:g}s"


class Duration(click.ParamType[timedelta, "str | timedelta"]):
    """Seconds (``3600``, ``1.5``) or a number with a unit: ``90s``, ``30m``, ``12h``, ``7d``.
    Zero is read (retrieve itself says a half-life must be positive)."""

    name = "duration"

    def convert(
        self, value: str | timedelta, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        if isinstance(value, timedelta):  # the default, taken from retrieve
            return value
        found = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", str(value).strip())
        if found is None:
            why = "is not seconds or a number followed by s, m, h or d (e.g. 12h)"
            self.fail(f"{value!r:.80} {why}", param, ctx)
        try:
            return timedelta(seconds=float(found[1]) * _UNITS[found[2]])
        except OverflowError:
            self.fail(f"{value!r:.80} is longer than a timedelta holds", param, ctx)


@click.command()
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
@click.option(
    "--rrf-k",
    type=float,
    default=_default("rrf_k"),
    show_default=True,
    help="Hybrid: reciprocal rank fusion's constant (larger flattens the ranks' weight).",
)
@click.option(
    "--vector-weight",
    type=float,
    default=_default("vector_weight"),
    show_default=True,
    help="Hybrid: weight of the vector arm.",
)
@click.option(
    "--text-weight",
    type=float,
    default=_default("text_weight"),
    show_default=True,
    help="Hybrid: weight of the text arm.",
)
@click.option(
    "--text-cutoff",
    type=float,
    default=_default("text_cutoff"),
    show_default=True,
    help="Hybrid: the text arm ranks rows scoring at least this share (0..1) of its best; 0: all.",
)
@click.option(
    "--recency-weight",
    type=float,
    default=_default("recency_weight"),
    show_default=True,
    help="Vector mode: weight of recency, 0.5 ** (age / --half-life), added to the score.",
)
@click.option(
    "--half-life",
    type=Duration(),
    default=_default("half_life"),
    show_default=_shown(_default("half_life")),
    help="Age at which recency counts half: seconds (3600), or a number with s, m, h or d (12h, 7d).",
)
@click.option(
    "--importance-key",
    default=_default("importance_key"),
    help="Vector mode: metadata key (dotted for nested) holding an importance from 1 to 10.",
)
@click.option(
    "--importance-weight",
    type=float,
    default=_default("importance_weight"),
    show_default=True,
    help="Vector mode: weight of the importance (scaled to 0..1) added to the score.",
)
@click.option(
    "--min-score", type=float, default=_default("min_score"), help="Drop results scoring less than this."
)
@click.option(
    "--mmr",
    is_flag=True,
    default=_default("mmr"),
    help="Pick the results by maximal marginal relevance among --fetch-k candidates (more diverse).",
)
@click.option(
    "--fetch-k",
    type=int,
    default=_default("fetch_k"),
    help="Candidates --mmr picks from (default: the library's, at least --top-k).",
)
@click.option(
    "--lambda-mult",
    type=float,
    default=_default("lambda_mult"),
    show_default=True,
    help="--mmr: 1 is pure similarity, 0 pure diversity.",
)
@click.option(
    "--show-ranks",
    is_flag=True,
    help="Add each result's ranks: the arms' ranks and scores, or the score's parts (--json: 'ranks').",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@database_option
@collection_option
@embedder_option
@clean_errors
def search(
    query: str,
    filter_json: str | None,
    top_k: int,
    mode: str,
    rrf_k: float,
    vector_weight: float,
    text_weight: float,
    text_cutoff: float,
    recency_weight: float,
    half_life: timedelta,
    importance_key: str | None,
    importance_weight: float,
    min_score: float | None,
    mmr: bool,
    fetch_k: int | None,
    lambda_mult: float,
    show_ranks: bool,
    as_json: bool,
    database_url: str | None,
    collection: str,
    embedder: str,
) -> None:
    """Print the memories most similar to QUERY (an empty QUERY lists the newest).

    \b
    Example:
      memorix-pg search "what does the user like?" --filter '{"type": "preference"}' --top-k 3
      memorix-pg search "status of order 48213" --mode hybrid --text-weight 2
      memorix-pg search "what is the user doing?" --recency-weight 0.5 --half-life 12h
    """
    api = open_api(database_url, collection, embedder)
    results = api.retrieve(
        query,
        top_k=top_k,
        filter=json_option(filter_json, "--filter"),
        mode=mode,
        rrf_k=rrf_k,
        vector_weight=vector_weight,
        text_weight=text_weight,
        text_cutoff=text_cutoff,
        recency_weight=recency_weight,
        half_life=half_life,
        importance_key=importance_key,
        importance_weight=importance_weight,
        min_score=min_score,
        mmr=mmr,
        fetch_k=fetch_k,
        lambda_mult=lambda_mult,
        ranks=show_ranks,
    )
    for memory in results:
        if as_json:
            row = {"id": memory.id, "score": memory.score, "text": memory.text, "metadata": memory.metadata}
            if show_ranks:
                row["ranks"] = memory.ranks
            click.echo(json.dumps(row))
        else:
            score = f"{memory.score:.3f}" if memory.score is not None else "  -  "
            ranks = f"  {json.dumps(memory.ranks)}" if show_ranks else ""
            click.echo(f"{score}  {memory.text}  {json.dumps(memory.metadata)}{ranks}")
    if not results and not as_json:
        click.echo("(no memories match)", err=True)


@click.command()
@database_option
@clean_errors
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


@click.command()
@click.option("--group-by", default="type", show_default=True, help="Metadata key to count by.")
@database_option
@collection_option
@embedder_option
@clean_errors
def stats(group_by: str, database_url: str | None, collection: str, embedder: str) -> None:
    """Count a collection's memories, grouped by a metadata key.

    \b
    Example:
      memorix-pg stats --collection conversation_u1 --group-by role
    """
    api = open_api(database_url, collection, embedder)
    result = api.stats(group_by)
    click.echo(f"collection {collection!r}: {result['total']} memories")
    width = max([len(str(k)) for k in result["groups"]] + [len(group_by)])
    click.echo(f"{group_by:<{width}}  count")
    for key, count in result["groups"].items():
        click.echo(f"{key!s:<{width}}  {count}")


@click.command("check-recall")
@click.option("--queries", default=100, show_default=True, help="Stored memories used as queries.")
@click.option("--top-k", default=10, show_default=True, help="k of recall@k.")
@click.option("--filter", "filter_json", default=None, help="Only memories matching this JSON filter.")
@click.option("--target", default=0.99, show_default=True, help="Recall the suggested ef_search must reach.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@database_option
@collection_option
@embedder_option
@clean_errors
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
    api = open_api(database_url, collection, embedder)
    report = api.check_recall(queries, top_k, json_option(filter_json, "--filter"), target=target)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(report)))
    else:
        click.echo(str(report))
