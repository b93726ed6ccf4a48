"""``memorix-pg mcp``: every tool and its errors through fastmcp's own client, in process and
against the command in a subprocess (stdio, and streamable HTTP on loopback), on the real server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport

from memorix_pg import MemoryAPI
from memorix_pg.cli import main
from memorix_pg.integrations.mcp import TOOLS, build_server, check_host
from tests.support.helpers import REPO_ROOT, db_fingerprint, nested, wait_for

README = (REPO_ROOT / "README.md").read_text()


def with_client(server: Any, scenario: Callable[[Client[Any]], Awaitable[Any]]) -> Any:
    """Run ``scenario(client)`` with a client connected to ``server`` (a FastMCP object, an MCP
    config or a transport), on an event loop of its own."""

    async def run() -> Any:
        async with Client(server) as client:
            return await scenario(client)

    return asyncio.run(run())


async def call(client: Client[Any], tool: str, **arguments: Any) -> Any:
    """The tool's structured result (a bare value or list comes back as ``{"result": ...}``)."""
    result = await client.call_tool(tool, arguments)
    content = result.structured_content
    assert content is not None
    return content["result"] if set(content) == {"result"} else content


async def error_of(client: Client[Any], tool: str, arguments: dict[str, Any]) -> str:
    """The tool error's text for a call that must fail."""
    result = await client.call_tool(tool, arguments, raise_on_error=False)
    assert result.is_error, f"{tool}({arguments}) did not fail: {result.structured_content}"
    text = result.content[0].text  # type: ignore[union-attr]
    assert isinstance(text, str)
    return text


def readme_mcp_section() -> str:
    return README.split("\n### MCP\n", 1)[1].split("\n## ", 1)[0]


def readme_block(language: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", readme_mcp_section(), flags=re.S)
    assert len(blocks) == 1, f"the MCP section has {len(blocks)} {language} blocks"
    return str(blocks[0])


def readme_commands() -> list[list[str]]:
    return [shlex.split(line, comments=True) for line in readme_block("bash").splitlines() if line.strip()]


def cli_command(argv: list[str]) -> list[str]:
    """``memorix-pg ...`` as this checkout runs it (the console script may point at another one)."""
    assert argv[0] == "memorix-pg"
    return [sys.executable, "-m", "memorix_pg.cli", *argv[1:]]


def subprocess_env(database_url: str) -> dict[str, str]:
    return {**os.environ, "MEMORIX_DATABASE_URL": database_url, "PYTHONPATH": str(REPO_ROOT)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the tools, in process -----------------------------------------------------------------------


def test_the_tools_and_their_argument_schemas() -> None:
    server = build_server("postgresql://unused@127.0.0.1/unused", "notes", "hash")

    async def scenario(client: Client[Any]) -> None:
        tools = {tool.name: tool for tool in await client.list_tools()}
        assert sorted(tools) == sorted(TOOLS)
        recall = tools["recall"].input_schema
        assert recall["required"] == ["query"]
        assert recall["properties"]["top_k"]["minimum"] == 1
        assert recall["properties"]["top_k"]["maximum"] == 100
        assert recall["properties"]["mode"]["enum"] == ["vector", "text", "hybrid"]
        assert recall["additionalProperties"] is False
        assert set(tools["forget"].input_schema["properties"]) == {"id", "filter", "collection"}
        assert tools["recall"].annotations is not None and tools["recall"].annotations.read_only_hint
        assert tools["forget"].annotations is not None and tools["forget"].annotations.destructive_hint

    with_client(server, scenario)  # lists tools without touching the (unreachable) database


def test_remember_recall_stats_list_and_forget(database_url: str) -> None:
    server = build_server(database_url, "notes", "hash")
    api = MemoryAPI(embedder="hash", collection_name="notes", database_url=database_url)
    chosen = str(uuid.uuid4())

    async def scenario(client: Client[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        out["tea"] = await call(client, "remember", text="User drinks green tea", metadata={"type": "pref"})
        out["lisbon"] = await call(client, "remember", text="User lives in Lisbon", metadata={"type": "fact"})
        out["chosen"] = await call(client, "remember", text="Meeting on Friday", id=chosen, ttl=3600)
        out["recall"] = await call(client, "recall", query="green tea", filter={"type": "pref"}, top_k=3)
        out["recall_all"] = await call(client, "recall", query="where does the user live", top_k=2)
        out["retrieve"] = [(m.id, m.score) for m in api.retrieve("where does the user live", top_k=2)]
        for mode in ("text", "hybrid"):
            out[mode] = await call(client, "recall", query="Lisbon tea", top_k=3, mode=mode)
            out[f"retrieve_{mode}"] = [
                (m.id, m.score) for m in api.retrieve("Lisbon tea", top_k=3, mode=mode)
            ]
        out["newest"] = await call(client, "recall", query="", top_k=1)
        out["stats"] = await call(client, "stats", group_by="type")
        out["total"] = await call(client, "stats")
        out["collections"] = await call(client, "list_collections")
        out["replaced"] = await call(client, "remember", text="Meeting moved to Monday", id=chosen)
        out["forget_id"] = await call(client, "forget", id=out["tea"])
        out["forget_filter"] = await call(client, "forget", filter={"type": {"$in": ["fact", "x"]}})
        return out

    before = datetime.now(UTC)
    out = with_client(server, scenario)
    assert out["chosen"] == chosen and out["replaced"] == chosen

    [tea] = out["recall"]
    assert tea["id"] == out["tea"] and tea["text"] == "User drinks green tea"
    assert tea["metadata"] == {"type": "pref"} and tea["score"] > 0
    assert before <= datetime.fromisoformat(tea["created_at"]) <= datetime.now(UTC)
    # recall is retrieve: the same memories, order and scores as the API gives.
    assert [(m["id"], m["score"]) for m in out["recall_all"]] == out["retrieve"]
    for mode in ("text", "hybrid"):  # and mode is retrieve's mode
        assert [(m["id"], m["score"]) for m in out[mode]] == out[f"retrieve_{mode}"]
    assert {m["text"] for m in out["text"]} == {"User drinks green tea", "User lives in Lisbon"}
    assert [(m["text"], m["score"]) for m in out["newest"]] == [("Meeting on Friday", None)]

    assert out["stats"] == {
        "collection": "notes",
        "total": 3,
        "groups": [{"value": "fact", "count": 1}, {"value": "pref", "count": 1}, {"value": None, "count": 1}],
    }
    assert out["total"] == {"collection": "notes", "total": 3, "groups": []}
    assert out["collections"] == [
        {
            "name": "notes",
            "embedder": "hash-384",
            "dimension": 384,
            "distance": "cosine",
            "precision": "full",
            "count": 3,
        }
    ]

    assert out["forget_id"] == 1 and out["forget_filter"] == 1
    [left] = api.list()
    assert left.id == chosen and left.text == "Meeting moved to Monday"  # the same id replaced it
    assert api.get(out["tea"]) is None


def test_ttl_sets_the_expiry(database_url: str) -> None:
    server = build_server(database_url, "notes", "hash")
    memory_id = with_client(server, lambda c: call(c, "remember", text="one-time code 4242", ttl=90))
    stored = MemoryAPI(embedder="hash", collection_name="notes", database_url=database_url).list()
    assert [m.id for m in stored] == [memory_id]
    assert stored[0].expires_at is not None and stored[0].created_at is not None
    lifetime = stored[0].expires_at - stored[0].created_at
    assert abs(lifetime - timedelta(seconds=90)) < timedelta(seconds=5)


def test_a_call_may_name_another_collection(database_url: str) -> None:
    server = build_server(database_url, "notes", "hash")

    async def scenario(client: Client[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        await call(client, "remember", text="in notes")
        out["id"] = await call(client, "remember", text="in work", collection="work")
        out["work"] = await call(client, "recall", query="", collection="work")
        out["notes"] = await call(client, "recall", query="")
        out["stats"] = await call(client, "stats", collection="work")
        out["collections"] = [c["name"] for c in await call(client, "list_collections")]
        out["errors"] = [
            await error_of(client, tool, {**arguments, "collection": "wrok"})
            for tool, arguments in (("recall", {"query": "x"}), ("stats", {}), ("forget", {"id": out["id"]}))
        ]
        out["forget"] = await call(client, "forget", id=out["id"], collection="work")
        return out

    out = with_client(server, scenario)
    assert [m["text"] for m in out["work"]] == ["in work"]
    assert [m["text"] for m in out["notes"]] == ["in notes"]
    assert out["stats"]["collection"] == "work" and out["stats"]["total"] == 1
    assert out["collections"] == ["notes", "work"]
    for error in out["errors"]:
        assert error == "collection: no collection named 'wrok' (list_collections names those that exist)"
    assert out["forget"] == 1
    # Reading in a misspelt collection created nothing.
    names = with_client(server, lambda c: call(c, "list_collections"))
    assert [c["name"] for c in names] == ["notes", "work"]


UNKNOWN_ID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"

# (tool, arguments, the argument the error must name, a fragment of the library's message or None)
BAD_CALLS: list[tuple[str, dict[str, Any], str, str | None]] = [
    ("remember", {}, "text", "Missing required argument"),
    ("remember", {"text": 5}, "text", "valid string"),
    ("remember", {"text": ""}, "text", "empty"),
    ("remember", {"text": "a\x00b"}, "text", "NUL byte"),
    ("remember", {"text": "\ud800"}, "text", "lone surrogate"),
    ("remember", {"text": "a", "metadata": ["x"]}, "metadata", None),
    ("remember", {"text": "a", "metadata": {"k": "a\x00"}}, "metadata", "NUL byte"),
    ("remember", {"text": "a", "metadata": nested(40)}, "metadata", "deeper than 32"),
    ("remember", {"text": "a", "id": "x" * 513}, "id", "the limit is 512"),
    ("remember", {"text": "a", "id": ""}, "id", "empty"),
    ("remember", {"text": "a", "ttl": 0}, "ttl", "greater than 0"),
    ("remember", {"text": "a", "ttl": "soon"}, "ttl", None),
    ("remember", {"text": "a", "ttl": 10**12}, "ttl", "less than or equal"),
    ("remember", {"text": "a", "collection": ""}, "collection", "non-empty"),
    ("remember", {"text": "a", "collection": "x" * 600}, "collection", "the limit is 512"),
    ("remember", {"text": "a", "colour": "red"}, "colour", "Unexpected keyword argument"),
    ("recall", {"query": "x", "top_k": 0}, "top_k", "greater than or equal to 1"),
    ("recall", {"query": "x", "top_k": 101}, "top_k", "less than or equal to 100"),
    ("recall", {"query": "x", "top_k": True}, "top_k", "valid integer"),
    ("recall", {"query": "x", "top_k": "3"}, "top_k", "valid integer"),
    ("recall", {"query": 3}, "query", "valid string"),
    ("recall", {"query": "\ud800"}, "query", "lone surrogate"),
    ("recall", {"query": "x", "top_k": 10**30}, "top_k", "less than or equal to 100"),
    ("recall", {"query": "x", "filter": {"a": {"$foo": 1}}}, "filter", "unknown operator '$foo'"),
    ("recall", {"query": "x", "filter": {"$or": []}}, "filter", None),
    ("recall", {"query": "x", "filter": {"k": {"$regex": "("}}}, "filter", "regular expression"),
    ("recall", {"query": "x", "filter": "type=pref"}, "filter", None),
    ("recall", {"query": "x", "mode": "bm25"}, "mode", "'vector', 'text' or 'hybrid'"),
    ("forget", {}, "id", "exactly one of id and filter"),
    ("forget", {"id": UNKNOWN_ID, "filter": {"a": 1}}, "id", "exactly one of id and filter"),
    ("forget", {"id": UNKNOWN_ID}, "id", f"no memory with id {UNKNOWN_ID}"),
    ("forget", {"id": "nope"}, "id", "no memory with id nope"),
    ("forget", {"id": "'; DROP TABLE memorix.memories; --"}, "id", "no memory with id"),
    ("forget", {"filter": {}}, "filter", "whole collection"),
    ("forget", {"filter": {"a": {"$bad": 1}}}, "filter", "unknown operator"),
    ("stats", {"group_by": ""}, "group_by", None),
    ("stats", {"group_by": 7}, "group_by", "valid string"),
    ("stats", {"group_by": "\ud800"}, "group_by", "lone surrogate"),
]


def test_bad_arguments_are_tool_errors_that_name_the_argument(database_url: str) -> None:
    server = build_server(database_url, "notes", "hash")
    kept = with_client(server, lambda c: call(c, "remember", text="keep me", metadata={"a": 1}))
    before = db_fingerprint(database_url)

    async def scenario(client: Client[Any]) -> list[str]:
        errors = [await error_of(client, tool, arguments) for tool, arguments, _, _ in BAD_CALLS]
        # The server is still there, and still answers.
        assert [m["id"] for m in await call(client, "recall", query="keep")] == [kept]
        return errors

    errors = with_client(server, scenario)
    for (tool, arguments, argument, fragment), error in zip(BAD_CALLS, errors, strict=True):
        case = f"{tool}({arguments!r}) -> {error!r}"
        assert error.startswith(f"{argument}: "), case
        assert fragment is None or fragment in error, case
        assert "Traceback" not in error and "pydantic.dev" not in error, case
    assert db_fingerprint(database_url) == before  # nothing was written


def test_library_errors_become_tool_errors(database_url: str) -> None:
    MemoryAPI(embedder="hash-16", collection_name="small", database_url=database_url)
    server = build_server(database_url, "notes", "hash")

    async def scenario(client: Client[Any]) -> str:
        return await error_of(client, "recall", {"query": "x", "collection": "small"})

    assert with_client(server, scenario) == (
        "collection: collection 'small' was created with embedder 'hash-16' (16 dims); it cannot be "
        "used with 'hash-384' (384 dims). Use the same embedder, or another collection_name."
    )

    port = free_port()  # nothing listens there
    down = build_server(f"postgresql://memorix:s3cret@127.0.0.1:{port}/memorix", "notes", "hash")

    async def unreachable(client: Client[Any]) -> list[str]:
        return [
            await error_of(client, "remember", {"text": "x"}),
            await error_of(client, "list_collections", {}),
        ]

    for error in with_client(down, unreachable):
        assert error.startswith(
            f"DatabaseUnavailable: cannot connect to PostgreSQL at postgresql://memorix:***@127.0.0.1:{port}/memorix"
        )
        assert "s3cret" not in error


def test_tenant_scopes_every_tool(database_url: str) -> None:
    alice = build_server(database_url, "notes", "hash", tenant="alice")
    bob = build_server(database_url, "notes", "hash", tenant="bob")
    memory_id = with_client(alice, lambda c: call(c, "remember", text="alice's secret"))

    async def as_bob(client: Client[Any]) -> tuple[Any, Any, str]:
        return (
            await call(client, "recall", query="secret"),
            await call(client, "stats"),
            await error_of(client, "forget", {"id": memory_id}),
        )

    found, stats, error = with_client(bob, as_bob)
    assert found == [] and stats["total"] == 0
    assert error.startswith(f"id: no memory with id {memory_id}")
    assert [m["id"] for m in with_client(alice, lambda c: call(c, "recall", query="secret"))] == [memory_id]
    stored = MemoryAPI(embedder="hash", collection_name="notes", database_url=database_url, tenant="alice")
    assert [m.id for m in stored.list()] == [memory_id]


# -- the command ---------------------------------------------------------------------------------


def test_readme_shell_commands_are_all_tested() -> None:
    """Each command of the README's MCP block is run by one of the tests below."""
    commands = readme_commands()
    assert [c[:2] for c in commands] == [["memorix-pg", "mcp"]] * len(commands)
    assert [c[2:] for c in commands] == [
        ["--help"],
        ["--transport", "http", "--host", "127.0.0.1", "--port", "8765"],
    ]


def test_help_says_how_to_run_it(database_url: str) -> None:
    [help_command] = [c for c in readme_commands() if "--help" in c]
    result = subprocess.run(
        cli_command(help_command),
        env=subprocess_env(database_url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for fragment in (
        "remember, recall, forget",
        "--allow-remote",
        "loopback",
        "no authentication",
        "memorix-pg[mcp]",
    ):
        assert fragment in " ".join(result.stdout.split()), fragment


def test_readme_client_config_runs_the_server_over_stdio(database_url: str) -> None:
    """The README's config, as an MCP client runs it: remember, recall, forget in a subprocess."""
    config = json.loads(readme_block("json"))
    [entry] = config["mcpServers"].values()
    command = cli_command([entry["command"], *entry["args"], "--embedder", "hash"])
    entry.update(command=command[0], args=command[1:], env=subprocess_env(database_url), cwd=str(REPO_ROOT))

    async def scenario(client: Client[Any]) -> tuple[Any, ...]:
        memory_id = await call(client, "remember", text="User prefers dark mode", metadata={"type": "pref"})
        found = await call(client, "recall", query="dark mode", filter={"type": "pref"})
        in_between = MemoryAPI(embedder="hash", collection_name="notes", database_url=database_url).count()
        bad = await error_of(client, "recall", {"query": "x", "top_k": 0})
        return memory_id, found, in_between, bad, await call(client, "forget", id=memory_id)

    memory_id, found, in_between, bad, forgotten = with_client(config, scenario)
    assert [(m["id"], m["text"]) for m in found] == [(memory_id, "User prefers dark mode")]
    assert in_between == 1  # in the collection the config names, in the database given
    assert bad == "top_k: Input should be greater than or equal to 1"
    assert forgotten == 1
    assert MemoryAPI(embedder="hash", collection_name="notes", database_url=database_url).count() == 0


def test_readme_http_command_serves_streamable_http_on_loopback(database_url: str) -> None:
    [line] = [c for c in readme_commands() if "http" in c]
    port = free_port()
    argv = [*line[:-1], str(port), "--embedder", "hash", "--collection", "web"]
    assert line[-2] == "--port"
    process = subprocess.Popen(
        cli_command(argv),
        env=subprocess_env(database_url),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def listening() -> bool:
        assert process.poll() is None, process.communicate()[1][-3000:]
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    try:
        assert wait_for(listening, timeout=60), "the server did not start listening"

        async def scenario(client: Client[Any]) -> tuple[Any, Any]:
            memory_id = await call(client, "remember", text="served over HTTP")
            return memory_id, await call(client, "recall", query="HTTP")

        memory_id, found = with_client(StreamableHttpTransport(f"http://127.0.0.1:{port}/mcp"), scenario)
        assert [m["id"] for m in found] == [memory_id]
        assert [
            m.id for m in MemoryAPI(embedder="hash", collection_name="web", database_url=database_url).list()
        ] == [memory_id]
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert "Traceback" not in stderr, stderr[-3000:]


def test_http_refuses_an_address_other_machines_reach(database_url: str) -> None:
    result = CliRunner().invoke(
        main,
        ["mcp", "--transport", "http", "--host", "0.0.0.0", "--embedder", "hash"],
        env={"MEMORIX_DATABASE_URL": database_url},
    )
    assert result.exit_code == 1
    assert "--host 0.0.0.0 is not a loopback address" in result.output
    assert "--allow-remote" in result.output and "Traceback" not in result.output

    for host in ("127.0.0.1", "127.0.0.5", "::1", "localhost"):
        check_host(host, allow_remote=False)
    for host in ("0.0.0.0", "192.168.1.20", "::", "memory.example.com"):
        with pytest.raises(ValueError, match="not a loopback address"):
            check_host(host, allow_remote=False)
        check_host(host, allow_remote=True)


def test_stdio_refuses_http_options() -> None:
    result = CliRunner().invoke(main, ["mcp", "--port", "9000"])
    assert result.exit_code == 2
    assert "--host, --port and --allow-remote apply to --transport http only" in result.output


def test_a_bad_database_fails_at_start_in_one_line() -> None:
    port = free_port()
    result = CliRunner().invoke(
        main,
        ["mcp", "--embedder", "hash", "--database-url", f"postgresql://memorix:s3cret@127.0.0.1:{port}/x"],
    )
    assert result.exit_code == 1
    assert result.output.startswith("Error: DatabaseUnavailable: cannot connect to PostgreSQL")
    assert "s3cret" not in result.output and "Traceback" not in result.output


def test_without_the_extra_the_error_names_it() -> None:
    """fastmcp is imported only by the server: without it the library imports, and the command
    says which extra to install."""
    code = (
        "import sys; sys.modules['fastmcp'] = None\n"  # what an install without the extra looks like
        "import memorix_pg, memorix_pg.integrations.mcp\n"
        "from memorix_pg.cli import main\n"
        "main(['mcp'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1, result.stderr
    assert "needs fastmcp" in result.stderr and "pip install 'memorix-pg[mcp]'" in result.stderr
    assert "Traceback" not in result.stderr
