"""``memorix-pg mcp``: memories as MCP tools (remember, recall, forget, list_collections, stats).

An agent's client (Claude Desktop, an IDE, an agent framework) starts the server over stdio, or
connects to it over streamable HTTP on a loopback address. Each tool is one call of
:class:`~memorix_pg.AsyncMemoryAPI` on the server's collection, or on another one named by the
tool's optional ``collection`` argument (same database, embedder and tenant).

fastmcp comes with the ``mcp`` extra (``pip install 'memorix-pg[mcp]'``) and is imported only
when a server is built, so the core install works without it.

A mistake in a tool's arguments (a wrong type, a bad filter, an unknown id, ...) comes back to
the client as an MCP tool error that names the argument; the library's other errors (the
database is down, the role may not do this) come back as tool errors too, with their one-line
message. Neither stops the server, and no traceback reaches the client.
"""

# No ``from __future__ import annotations``: fastmcp reads the tools' annotations at runtime,
# and they use names (pydantic's Field) imported inside build_server.

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

from ..aio import AsyncMemoryAPI
from ..api import list_collections
from ..catalog import CollectionSummary
from ..embedders import Embedder, resolve_embedder
from ..errors import (
    CollectionNotFound,
    ConfigurationError,
    EmbedderMismatch,
    FilterError,
    InvalidInput,
    MemorixError,
    MemoryNotFound,
)
from ..hybrid import MODES
from ..memory import Memory
from ..validation import check_id, check_text, clean_metadata

if TYPE_CHECKING:
    from fastmcp import FastMCP

__all__ = [
    "DEFAULT_PORT",
    "EXTRA",
    "MAX_TOP_K",
    "MAX_TTL_SECONDS",
    "TOOLS",
    "BadArgument",
    "MemoryTools",
    "build_server",
    "check_host",
    "require_fastmcp",
    "serve",
    "server_for",
]

EXTRA = "memorix-pg[mcp]"
TOOLS = ("remember", "recall", "forget", "list_collections", "stats")
MAX_TOP_K = 100  # what one answer to an agent can sensibly carry
MAX_TTL_SECONDS = 100 * 366 * 24 * 3600  # a century: far enough, and never past the year 9999
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
SERVER_NAME = "memorix-pg"

INSTRUCTIONS = (
    "Long-term memory. `remember` stores a text (with optional JSON metadata) and returns its id; "
    "`recall` returns the memories most similar to a query, optionally narrowed by a Mongo-style "
    'metadata filter such as {"type": "preference", "user_id": "u1"}; `forget` deletes by id or '
    "by filter; `stats` counts memories by a metadata key; `list_collections` names the "
    "collections. Tools act on the server's collection unless given `collection`."
)


def require_fastmcp() -> None:
    """Fail with the extra to install when fastmcp is missing."""
    try:
        import fastmcp  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"the MCP server needs fastmcp, which comes with the mcp extra: pip install '{EXTRA}' ({exc})"
        ) from None


class BadArgument(MemorixError, ValueError):
    """A tool argument that cannot be used as given; ``argument`` names it."""

    def __init__(self, argument: str, message: str) -> None:
        # Always "argument: ...", whatever the message says, so a client can tell which one.
        prefix = f"{argument}: "
        super().__init__(message if message.startswith(prefix) else prefix + message)
        self.argument = argument


# The library errors that mean "this argument is wrong" (the rest: the database, a privilege...).
ARGUMENT_ERRORS = (InvalidInput, FilterError, MemoryNotFound, CollectionNotFound, EmbedderMismatch)


@contextlib.contextmanager
def blame(argument: str, errors: tuple[type[MemorixError], ...] = ARGUMENT_ERRORS) -> Iterator[None]:
    """Report a library error raised inside as a mistake in ``argument``."""
    try:
        yield
    except errors as exc:
        raise BadArgument(argument, str(exc)) from None


def memory_record(memory: Memory) -> dict[str, Any]:
    """A recalled memory as JSON: id, text, metadata, score (None when nothing ranked it),
    created_at (ISO 8601)."""
    return {
        "id": memory.id,
        "text": memory.text,
        "metadata": memory.metadata,
        "score": memory.score,
        "created_at": memory.created_at.isoformat() if memory.created_at is not None else None,
    }


def collection_record(info: CollectionSummary) -> dict[str, Any]:
    return {
        "name": info.name,
        "embedder": info.embedder,
        "dimension": info.dimensions,
        "distance": info.distance,
        "precision": info.precision,
        "count": info.count,
    }


def list_database_collections(database_url: str) -> list[CollectionSummary]:
    """Every collection of the database at ``database_url``, by name."""
    return list_collections(database_url)


@dataclass(frozen=True)
class ServerOptions:
    database_url: str | None
    collection: str
    tenant: str | None


class MemoryTools:
    """What the tools do, without the MCP layer: one AsyncMemoryAPI per collection used, made
    on first use and kept (they share the process's connection pool and one embedder)."""

    def __init__(
        self,
        database_url: str | None = None,
        collection: str = "default",
        embedder: str | Embedder = "sentence-transformers",
        tenant: str | None = None,
    ) -> None:
        self.options = ServerOptions(database_url, collection, tenant)
        self.embedder = resolve_embedder(embedder)
        # Checked now, so a bad --collection or --tenant fails at start rather than at first call.
        self._apis: dict[str, AsyncMemoryAPI] = {collection: self._make(collection)}
        self._opened: set[str] = set()

    def _make(self, name: str) -> AsyncMemoryAPI:
        return AsyncMemoryAPI(
            embedder=self.embedder,
            collection_name=name,
            database_url=self.options.database_url,
            tenant=self.options.tenant,
        )

    @property
    def default(self) -> AsyncMemoryAPI:
        return self._apis[self.options.collection]

    async def open(self) -> None:
        """Find the database, bring its schema up to date and open the server's collection."""
        await self._opened_api(self.default)

    async def _opened_api(self, api: AsyncMemoryAPI) -> AsyncMemoryAPI:
        if api.collection_name not in self._opened:
            await api.open()
            self._opened.add(api.collection_name)
        return api

    async def api(self, collection: str | None, create: bool) -> AsyncMemoryAPI:
        """The API for ``collection`` (None: the server's). A collection that does not exist is
        created when ``create`` (as ``remember`` does), else it is an error: reading or deleting
        in a misspelt collection must not leave an empty one behind."""
        if collection is None or collection == self.options.collection:
            return await self._opened_api(self.default)
        with blame("collection"):
            api = self._apis.get(collection)
            if api is None:
                made = self._make(collection)
                if not create and collection not in {c.name for c in await self.collections()}:
                    raise CollectionNotFound(
                        f"no collection named {collection!r} (list_collections names those that exist)"
                    )
                api = self._apis.setdefault(collection, made)
            return await self._opened_api(api)

    async def collections(self) -> list[CollectionSummary]:
        api = await self._opened_api(self.default)  # the schema exists once a collection is open
        return await asyncio.to_thread(list_database_collections, api.database_url)

    # -- the tools ------------------------------------------------------------------------

    async def remember(
        self,
        text: str,
        metadata: Mapping[str, Any] | None = None,
        id: str | None = None,
        ttl: float | None = None,
        collection: str | None = None,
    ) -> str:
        with blame("text"):
            check_text(text, "text")
        with blame("metadata"):
            clean_metadata(metadata, "metadata")
        if id is not None:
            with blame("id"):
                check_id(id, "id")
        expiry = None
        if ttl is not None:
            if not 0 < ttl <= MAX_TTL_SECONDS:
                raise BadArgument(
                    "ttl", f"must be a number of seconds in (0, {MAX_TTL_SECONDS}], got {ttl!r}"
                )
            expiry = timedelta(seconds=ttl)
        api = await self.api(collection, create=True)
        return await api.store(text, metadata=metadata, id=id, ttl=expiry)

    async def recall(
        self,
        query: str,
        filter: Mapping[str, Any] | None = None,
        top_k: int = 5,
        collection: str | None = None,
        mode: str = "vector",
    ) -> list[dict[str, Any]]:
        if not 1 <= top_k <= MAX_TOP_K:
            raise BadArgument("top_k", f"must be an int from 1 to {MAX_TOP_K}, got {top_k!r}")
        if mode not in MODES:
            raise BadArgument("mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
        api = await self.api(collection, create=False)
        with blame("filter", (FilterError,)), blame("query", (InvalidInput,)):
            found = await api.retrieve(query, top_k=top_k, filter=filter, mode=mode)
        return [memory_record(m) for m in found]

    async def forget(
        self,
        id: str | None = None,
        filter: Mapping[str, Any] | None = None,
        collection: str | None = None,
    ) -> int:
        if (id is None) == (filter is None):
            raise BadArgument(
                "id",
                "give exactly one of id and filter, got " + ("both" if id is not None else "neither"),
            )
        api = await self.api(collection, create=False)
        if id is not None:
            with blame("id"):
                check_id(id, "id")
                if not await api.delete(id):
                    raise MemoryNotFound(f"no memory with id {id} in collection {api.collection_name!r}")
            return 1
        if not filter:
            raise BadArgument(
                "filter",
                "an empty filter would delete the whole collection, which this tool refuses "
                '(name what to delete, e.g. {"type": "conversation"})',
            )
        with blame("filter", (FilterError, InvalidInput)):
            return await api.delete_by_filter(filter)

    async def list_collections(self) -> list[dict[str, Any]]:
        return [collection_record(c) for c in await self.collections()]

    async def stats(self, group_by: str | None = None, collection: str | None = None) -> dict[str, Any]:
        api = await self.api(collection, create=False)
        with blame("group_by", (InvalidInput, FilterError)):
            result = await api.stats(group_by)
        # JSON object keys are strings; a group's value may be a number, a bool or null.
        groups = [{"value": value, "count": count} for value, count in result["groups"].items()]
        return {"collection": api.collection_name, "total": result["total"], "groups": groups}


def build_server(
    database_url: str | None = None,
    collection: str = "default",
    embedder: str | Embedder = "sentence-transformers",
    tenant: str | None = None,
) -> "FastMCP[Any]":
    """A FastMCP server whose tools use ``collection`` (created when absent) of the database
    (``database_url``, else ``MEMORIX_DATABASE_URL``, else the embedded server)."""
    require_fastmcp()
    return server_for(MemoryTools(database_url, collection, embedder, tenant))


def server_for(tools: MemoryTools) -> "FastMCP[Any]":
    """The FastMCP server exposing ``tools``: argument schemas, descriptions, error mapping."""
    require_fastmcp()
    import mcp_types
    from fastmcp import FastMCP
    from fastmcp.exceptions import ToolError, ValidationError
    from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
    from fastmcp.tools import ToolResult
    from mcp_types import ToolAnnotations
    from pydantic import Field
    from pydantic import ValidationError as PydanticValidationError

    def tool_error(exc: MemorixError) -> ToolError:
        text = str(exc) if isinstance(exc, BadArgument) else f"{type(exc).__name__}: {exc}"
        # A caller's mistake is the caller's to see, not an error of the server's.
        return ToolError(text, log_level=logging.INFO)

    class ArgumentErrors(Middleware):
        """Schema violations (a wrong type, a missing or unknown argument, top_k out of range) as
        one line per argument, e.g. ``top_k: Input should be less than or equal to 100``."""

        async def on_call_tool(
            self,
            context: MiddlewareContext[mcp_types.CallToolRequestParams],
            call_next: CallNext[mcp_types.CallToolRequestParams, ToolResult],
        ) -> ToolResult:
            try:
                return await call_next(context)
            except ValidationError as exc:
                if not isinstance(exc.__cause__, PydanticValidationError):
                    raise
                lines = [
                    f"{'.'.join(str(part) for part in error['loc']) or 'arguments'}: {error['msg']}"
                    for error in exc.__cause__.errors(include_url=False)
                ]
                raise ToolError("; ".join(lines), log_level=logging.INFO) from None

    collection = tools.options.collection
    server: FastMCP[Any] = FastMCP(
        SERVER_NAME,
        instructions=INSTRUCTIONS,
        middleware=[ArgumentErrors()],
        # Details of unexpected errors stay in the server's log; the client sees the tool's name.
        mask_error_details=True,
    )

    # Numbers are strict: "5" is not an int and true is not 1, a client that sends them has a bug
    # worth seeing. (Not the server-wide strict mode: it re-encodes the arguments as JSON first,
    # which fails on a lone surrogate before the text's own check can name the argument.)
    Collection = Annotated[
        str | None,
        Field(description=f"Collection to use (default: the server's, {collection!r})."),
    ]
    Filter = Annotated[
        dict[str, Any] | None,
        Field(
            description="MongoDB-style filter on the metadata, e.g. "
            '{"type": "preference", "importance": {"$gte": 3}}; operators include $eq $ne $gt $gte '
            "$lt $lte $in $nin $exists $and $or $not $contains $regex."
        ),
    ]

    @server.tool(annotations=ToolAnnotations(destructive_hint=False))
    async def remember(
        text: Annotated[str, Field(description="What to remember.")],
        metadata: Annotated[
            dict[str, Any] | None,
            Field(description='JSON object stored with the text, e.g. {"type": "preference"}.'),
        ] = None,
        id: Annotated[
            str | None,
            Field(
                description="Id to store it under (any string of up to 512 characters); "
                "a memory with this id is replaced."
            ),
        ] = None,
        ttl: Annotated[
            float | None,
            Field(
                description="Seconds until the memory expires (default: never).",
                gt=0,
                le=MAX_TTL_SECONDS,
                strict=True,
            ),
        ] = None,
        collection: Collection = None,
    ) -> str:
        """Store a memory and return its id."""
        try:
            return await tools.remember(text, metadata, id, ttl, collection)
        except MemorixError as exc:
            raise tool_error(exc) from None

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    async def recall(
        query: Annotated[
            str, Field(description="What to look for; an empty query returns the newest memories.")
        ],
        filter: Filter = None,
        top_k: Annotated[
            int, Field(description="How many memories at most.", ge=1, le=MAX_TOP_K, strict=True)
        ] = 5,
        collection: Collection = None,
        mode: Annotated[
            Literal["vector", "text", "hybrid"],
            Field(
                description="vector: by meaning; text: by the query's words (ids, names, codes); "
                "hybrid: both, fused by reciprocal rank."
            ),
        ] = "vector",
    ) -> list[dict[str, Any]]:
        """The memories that best match the query (best first), with id, text, metadata, score
        (higher is better: similarity, the text's share of the query's words, or the fused score,
        by mode) and created_at."""
        try:
            return await tools.recall(query, filter, top_k, collection, mode)
        except MemorixError as exc:
            raise tool_error(exc) from None

    @server.tool(annotations=ToolAnnotations(destructive_hint=True, idempotent_hint=True))
    async def forget(
        id: Annotated[str | None, Field(description="Id of the memory to delete.")] = None,
        filter: Filter = None,
        collection: Collection = None,
    ) -> int:
        """Delete one memory by id, or every memory matching a (non-empty) filter; give exactly
        one of the two. Returns how many were deleted."""
        try:
            return await tools.forget(id, filter, collection)
        except MemorixError as exc:
            raise tool_error(exc) from None

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    async def list_collections() -> list[dict[str, Any]]:
        """The database's collections: name, embedder, dimension, distance, precision."""
        try:
            return await tools.list_collections()
        except MemorixError as exc:
            raise tool_error(exc) from None

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    async def stats(
        group_by: Annotated[
            str | None,
            Field(description='Metadata key to count by (a dot path reaches inside), e.g. "type".'),
        ] = None,
        collection: Collection = None,
    ) -> dict[str, Any]:
        """How many memories the collection holds, and how many per value of group_by
        (memories without the key count under null)."""
        try:
            return await tools.stats(group_by, collection)
        except MemorixError as exc:
            raise tool_error(exc) from None

    return server


def check_host(host: str, allow_remote: bool) -> None:
    """Refuse to listen on an address other machines can reach, unless told to: the server has
    no authentication, so whoever reaches it can read and delete every memory."""
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not allow_remote:
        raise ConfigurationError(
            f"--host {host} is not a loopback address; the MCP server has no authentication, so "
            "anyone who can reach it could read and delete memories. Use 127.0.0.1, or pass "
            "--allow-remote (behind a proxy that authenticates) to serve on it anyway"
        )


async def _run(tools: MemoryTools, transport: Literal["stdio", "http"], host: str, port: int) -> None:
    await tools.open()  # a wrong URL or embedder fails here, before serving, not at the first call
    server = server_for(tools)
    if transport == "stdio":
        await server.run_async(transport="stdio", show_banner=False)
    else:
        await server.run_async(transport="http", show_banner=False, host=host, port=port)


def serve(
    transport: Literal["stdio", "http"] = "stdio",
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    allow_remote: bool = False,
    database_url: str | None = None,
    collection: str = "default",
    embedder: str | Embedder = "sentence-transformers",
    tenant: str | None = None,
) -> None:
    """Run the server until the client disconnects (stdio) or the process is stopped (http)."""
    if transport not in ("stdio", "http"):
        raise ConfigurationError(f"transport {transport!r} is not one of 'stdio', 'http'")
    if transport == "http":
        check_host(host, allow_remote)
    require_fastmcp()
    asyncio.run(_run(MemoryTools(database_url, collection, embedder, tenant), transport, host, port))
