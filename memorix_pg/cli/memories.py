"""Commands that write and read memories: store, search, the collections, stats and the
search's recall."""

from __future__ import annotations

import dataclasses
import json

import click

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
    api = open_api(database_url, collection, embedder)
    results = api.retrieve(query, top_k=top_k, filter=json_option(filter_json, "--filter"), mode=mode)
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
