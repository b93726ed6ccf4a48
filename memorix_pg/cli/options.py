"""What the commands share: the options every command that opens a collection takes, JSON
arguments parsed, and a library error turned into a one-line message and exit status 1."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..errors import MemorixError

__all__ = [
    "clean_errors",
    "collection_option",
    "database_option",
    "embedder_option",
    "json_option",
    "open_api",
]

F = TypeVar("F", bound=Callable[..., Any])


def clean_errors(func: F) -> F:
    """A library error (a user's mistake, or an unreachable database) as a one-line message and
    exit status 1, not a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MemorixError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None

    return wrapper  # type: ignore[return-value]


def json_option(value: str | None, what: str) -> Any:
    """The JSON an option was given (None when it was not), or a usage error naming the option."""
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


def open_api(database_url: str | None, collection: str, embedder: str) -> Any:
    """The collection a command works on (the library is imported only when a command runs)."""
    from ..api import MemoryAPI

    return MemoryAPI(embedder=embedder, collection_name=collection, database_url=database_url)
