"""An MCP server that gives an agent its memory as tools (``pip install 'lockstep[mcp]'``).

``lockstep mcp`` serves the store the settings name over stdio (the way an MCP host
launches a server); :func:`memory_server` builds the same server on a store you opened.
Every tool that writes is one Lockstep transaction: a memory lands in the storage and in
every index, or nowhere. A failed call comes back as a tool error with Lockstep's message
(which field, what was expected), and nothing was written.

Tools: ``remember``, ``recall`` (semantic search), ``get_memory``, ``list_memories``,
``update_memory``, ``forget``, ``memory_history``, ``undo`` (a rollback, itself recorded).
Lockstep's own records (types beginning ``lockstep:``, such as LangGraph checkpoints) are
not listed.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

try:
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp.types import ToolAnnotations
except ImportError as missing:  # pragma: no cover - depends on the installation
    raise ImportError(
        "coordinator.integrations.mcp needs the MCP SDK: pip install 'lockstep[mcp]'"
    ) from missing

from coordinator.abc import is_own_type
from coordinator.errors import LockstepError, UsageError
from coordinator.integrations import check_store
from coordinator.memory._model import Fact, check_user_type

if TYPE_CHECKING:
    from coordinator.memory._async.store import AsyncMemoryStore

INSTRUCTIONS = (
    "Long-term memory. `remember` stores a memory (text, optional type, session and extra "
    "fields); `recall` finds memories by meaning; `update_memory`, `forget` and `undo` change "
    "them. Each change lands in every store of the memory or in none."
)
_READ = ToolAnnotations(read_only_hint=True, open_world_hint=False)
_WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
_DESTROY = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False)


P = ParamSpec("P")
R = TypeVar("R")


def _told(tool: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Lockstep's errors reach the agent with their message (MCP shows an unexpected
    exception's type only): which field, what was expected, what to do."""

    @functools.wraps(tool)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await tool(*args, **kwargs)
        except LockstepError as err:
            raise ToolError(f"{type(err).__name__}: {err}") from err

    return call


def memory_server(
    store: AsyncMemoryStore, *, name: str = "lockstep", actor: str = "mcp"
) -> MCPServer:
    """An MCP server whose tools read and change ``store``; ``actor`` is recorded in the
    history of every change they make. The store stays the caller's to close."""
    from coordinator.memory import AsyncMemoryStore

    check_store("memory_server", store, AsyncMemoryStore)
    server = MCPServer(name, instructions=INSTRUCTIONS)

    @server.tool(annotations=_WRITE)
    @_told
    async def remember(
        content: str,
        type: str = "note",
        session_id: str | None = None,
        fields: dict[str, Any] | None = None,
        id: str | None = None,
    ) -> dict[str, Any]:
        """Store a memory: its text (``content``), a type ("note" unless given), a session,
        and any extra JSON ``fields``. With the ``id`` of an existing memory, replace it.
        Returns the memory as stored (its id and version)."""
        check_user_type("type", type)
        if id is not None:
            await _not_ours(id)
        payload = {**(fields or {}), "content": content}
        fact = (
            Fact(type=type, payload=payload)
            if id is None
            else Fact(id=id, type=type, payload=payload)
        )
        fact_id = await store.commit(fact, session_id=session_id, actor=actor)
        return _memory(await store.get(fact_id))

    @server.tool(annotations=_READ)
    @_told
    async def recall(
        query: str,
        k: int = 5,
        type: str | None = None,
        session_id: str | None = None,
        filters: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """The ``k`` memories closest in meaning to ``query`` (optionally of one type or
        session, and with payload fields equal to ``filters``: {"payload.role": "diet"}),
        best first, each with its similarity ``score`` (higher is closer)."""
        hits = await store.search(query, k, type, filters, session_id)
        return [{**_memory(hit.fact), "score": hit.score} for hit in hits]

    @server.tool(annotations=_READ)
    @_told
    async def get_memory(id: str) -> dict[str, Any] | None:
        """The memory with this id, or null."""
        found = _visible(await store.get(id))
        return None if found is None else _memory(found)

    @server.tool(annotations=_READ)
    @_told
    async def list_memories(
        type: str | None = None,
        session_id: str | None = None,
        filters: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Memories by type, session and equal payload fields ({"payload.role": "diet"}),
        oldest first."""
        found = await store.query(type, filters, session_id)
        return [_memory(f) for f in found if _visible(f)]

    @server.tool(annotations=_WRITE)
    @_told
    async def update_memory(
        id: str, content: str | None = None, fields: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Change a memory's text and/or some of its fields (the others are kept)."""
        await _existing(id)
        patch = {**(fields or {}), **({} if content is None else {"content": content})}
        if not patch:
            raise UsageError("update_memory(): give content or fields to change")
        await store.update(id, {"payload": patch}, actor=actor)
        return _memory(await store.get(id))

    @server.tool(annotations=_DESTROY)
    @_told
    async def forget(id: str) -> dict[str, Any]:
        """Delete a memory from every store (its history is kept; ``undo`` brings it back)."""
        await _existing(id)
        await store.delete(None, id, actor=actor)
        return {"id": id, "deleted": True}

    @server.tool(annotations=_READ)
    @_told
    async def memory_history(id: str) -> list[dict[str, Any]]:
        """Every version of a memory, oldest first, with who changed it and why."""
        await _existing(id, deleted_too=True)
        return [_memory(v) for v in await store.history(id)]

    @server.tool(annotations=_DESTROY)
    @_told
    async def undo(steps: int = 1, session_id: str | None = None) -> dict[str, Any]:
        """Undo the last ``steps`` changes (of one session, or of the whole memory); the
        undo is itself a change in history. Returns the ids of the memories it touched."""
        return {"undone": await store.rollback(steps, session_id, actor=actor)}

    async def _not_ours(fact_id: str) -> None:
        """Refuse to replace one of Lockstep's own records (a checkpoint, say) by its id."""
        found = await store.get(fact_id)
        if found is not None and _visible(found) is None:
            raise UsageError(f"id {fact_id!r} names one of Lockstep's own records")

    async def _existing(fact_id: str, *, deleted_too: bool = False) -> None:
        """Refuse an id that names no memory (a deleted one will do for its history)."""
        found = await store.get(fact_id)
        if deleted_too and found is None:
            versions = await store.history(fact_id)
            found = versions[-1] if versions else None
        if _visible(found) is None:
            raise UsageError(f"no memory with id {fact_id!r}")

    return server


def _visible(fact: dict[str, Any] | None) -> dict[str, Any] | None:
    """The fact, unless it is absent or one of Lockstep's own records (not a memory)."""
    return None if fact is None or is_own_type(fact["type"]) else fact


def _memory(fact: dict[str, Any] | None) -> dict[str, Any]:
    """What a tool returns of a fact: JSON only (its timestamp as ISO text)."""
    if fact is None:  # pragma: no cover - a fact just written or checked is there
        raise UsageError("the memory is gone")
    keep = ("id", "type", "payload", "session_id", "version", "actor", "reason", "deleted")
    shown = {key: fact.get(key) for key in keep}
    ts = fact.get("ts")
    shown["ts"] = ts.isoformat() if isinstance(ts, datetime) else ts
    return shown
