"""The MCP server: an agent's memory as tools, end to end.

``lockstep mcp`` runs as a real subprocess over stdio, as an MCP host launches it; the
tools' answers are checked, then the stores themselves (storage and index) once the
server has exited. Refused calls come back as tool errors with Lockstep's message and
leave every store as it was.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.base import empty_checkpoint
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult, TextContent

from coordinator import AsyncMemoryStore, Fact, MemoryStore
from coordinator.embeddings import HashingEmbedder
from coordinator.integrations.langgraph import AsyncLockstepSaver
from coordinator.integrations.mcp import memory_server

EMBEDDER = HashingEmbedder(16)


def text(result: CallToolResult) -> str:
    first = result.content[0]
    assert isinstance(first, TextContent), first
    return first.text


def answer(result: CallToolResult) -> Any:
    """A tool's structured answer (a list comes wrapped as ``{"result": [...]}``)."""
    assert not result.is_error, text(result)
    content = result.structured_content
    return content["result"] if set(content) == {"result"} else content


@pytest.mark.anyio
async def test_an_agent_remembers_recalls_changes_and_undoes_through_the_stdio_server(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "memory"
    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "coordinator.cli", "mcp", "--path", str(directory)],
        env={**os.environ, "LOCKSTEP_EMBEDDER": "hashing:16"},
    )
    async with Client(server) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert tools["recall"].annotations.read_only_hint is True  # type: ignore[union-attr]
        assert tools["forget"].annotations.destructive_hint is True  # type: ignore[union-attr]

        tea = answer(
            await client.call_tool(
                "remember",
                {"content": "the user drinks green tea", "fields": {"topic": "drinks"}},
            )
        )
        city = answer(
            await client.call_tool(
                "remember", {"content": "the user lives in Lyon", "session_id": "chat-1"}
            )
        )
        assert (tea["version"], tea["actor"], tea["payload"]["topic"]) == (1, "mcp", "drinks")

        found = answer(await client.call_tool("recall", {"query": "the user drinks green tea"}))
        assert found[0]["id"] == tea["id"] and found[0]["score"] > found[-1]["score"]
        in_chat = answer(await client.call_tool("list_memories", {"session_id": "chat-1"}))
        assert [m["id"] for m in in_chat] == [city["id"]]

        changed = answer(
            await client.call_tool(
                "update_memory", {"id": tea["id"], "content": "the user drinks black tea"}
            )
        )
        assert changed["version"] == 2 and changed["payload"]["topic"] == "drinks"  # kept

        assert answer(await client.call_tool("forget", {"id": city["id"]}))["deleted"] is True
        gone = answer(await client.call_tool("get_memory", {"id": city["id"]}))
        assert gone is None
        versions = answer(await client.call_tool("memory_history", {"id": city["id"]}))
        assert [v["deleted"] for v in versions] == [False, True]

        undone = answer(await client.call_tool("undo", {"steps": 1}))
        assert undone["undone"] == [city["id"]]
    # The server has exited and closed the store: read the stores themselves.
    with MemoryStore.open(directory, embedder=EMBEDDER) as mem:
        facts = {f["id"]: f for f in mem.query()}
        assert facts[tea["id"]]["payload"]["content"] == "the user drinks black tea"
        assert facts[city["id"]]["payload"]["content"] == "the user lives in Lyon"
        index = mem.indexes[0].contents().committed
        assert index == {tea["id"]: 2, city["id"]: facts[city["id"]]["version"]}
        assert mem.verify().clean


@pytest.mark.anyio
async def test_refused_calls_say_why_and_leave_every_store_as_it_was(tmp_path: Path) -> None:
    async with await AsyncMemoryStore.open(tmp_path / "memory", embedder=EMBEDDER) as store:
        await refusals_leave_the_store(store)


async def refusals_leave_the_store(store: AsyncMemoryStore) -> None:
    kept = await store.commit(Fact(type="note", payload={"content": "kept"}))
    before = (await store.query(), (await store.indexes[0].contents()).committed)
    refusals: list[tuple[str, dict[str, Any], str]] = [
        ("remember", {"content": "big", "fields": {"n": 2**70}}, "payload.n"),
        ("remember", {"content": "x", "type": "lockstep:checkpoint"}, "Lockstep's own"),
        ("remember", {"content": "nul \u0000 inside"}, "NUL"),
        ("forget", {"id": "no-such-memory"}, "no memory with id 'no-such-memory'"),
        ("update_memory", {"id": kept}, "give content or fields"),
        ("update_memory", {"id": "no-such-memory", "content": "x"}, "no memory with id"),
        ("undo", {"steps": 0}, "steps"),
        ("recall", {"query": "kept", "k": 0}, "k must be a positive int"),
    ]
    async with Client(memory_server(store)) as client:
        for tool, arguments, reason in refusals:
            result = await client.call_tool(tool, arguments)
            assert result.is_error, (tool, arguments)
            assert reason in text(result), text(result)
    assert (await store.query(), (await store.indexes[0].contents()).committed) == before


@pytest.mark.anyio
async def test_the_tools_do_not_show_lockstep_records(tmp_path: Path) -> None:
    async with await AsyncMemoryStore.open(tmp_path / "memory", embedder=EMBEDDER) as store:
        await lockstep_records_stay_hidden(store)


async def lockstep_records_stay_hidden(store: AsyncMemoryStore) -> None:
    note = await store.commit(Fact(type="note", payload={"content": "a memory"}))
    saver = AsyncLockstepSaver(store)
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = {"messages": ["hi"]}
    checkpoint["channel_versions"] = {"messages": saver.get_next_version(None, None)}
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    await saver.aput(config, checkpoint, {}, checkpoint["channel_versions"])  # type: ignore[arg-type]
    hidden = [f["id"] for f in await store.query() if f["id"] != note]
    assert hidden  # the checkpoint's facts are in the storage
    async with Client(memory_server(store)) as client:
        listed = answer(await client.call_tool("list_memories", {}))
        assert [m["id"] for m in listed] == [note]
        for fact_id in hidden:
            assert answer(await client.call_tool("get_memory", {"id": fact_id})) is None
            refused = await client.call_tool("forget", {"id": fact_id})
            assert refused.is_error
            replaced = await client.call_tool("remember", {"content": "x", "id": fact_id})
            assert replaced.is_error and "Lockstep's own" in text(replaced)
        found = answer(await client.call_tool("recall", {"query": "hi", "k": 10}))
        assert [m["id"] for m in found] == [note]
    assert await store.get(hidden[0]) is not None  # still there
