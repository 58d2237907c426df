"""LangGraph's long-term memory store (``BaseStore``) on a Lockstep memory store.

An item is a fact: its value in the storage, its text in every index, written together in
one transaction (a batch's puts and deletes all at once), so a semantic search never finds
an item the storage lost, nor misses one it holds. :class:`LockstepStore` works on a
``MemoryStore``, :class:`AsyncLockstepStore` on an ``AsyncMemoryStore``; what they do is
in ``_async/store.py`` (the synchronous twin generated from it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from langgraph.store.base import BaseStore, Op, Result

from coordinator.integrations import check_store
from coordinator.integrations._loop import EventLoopBridge
from coordinator.integrations.langgraph._async.store import AsyncStoreCore
from coordinator.integrations.langgraph._items import UNINDEXED
from coordinator.integrations.langgraph._sync.store import StoreCore

if TYPE_CHECKING:
    from coordinator.memory import AsyncMemoryStore, MemoryStore

__all__ = ["UNINDEXED", "AsyncLockstepStore", "LockstepStore"]


class LockstepStore(BaseStore):
    """``BaseStore`` (``store.put``/``get``/``search``/``delete``/``list_namespaces``) on a
    :class:`MemoryStore`, for ``builder.compile(store=LockstepStore(mem))``.

    :param type: the fact type of the items the indexes embed.
    :param fields: what of an item's value is embedded (LangGraph's paths: ``"$"`` the
        whole value as JSON, ``"text"``, ``"sections[*].body"``…), unless a put names its
        own (``index=[...]``); several texts are embedded as one. ``index=False`` keeps an
        item out of the indexes (found by filters, never by a query).

    Searches with a ``query`` go to the store's indexes (cosine similarity as ``score``);
    the others read the storage, newest first. ``abatch`` runs ``batch`` in a worker
    thread (:class:`AsyncLockstepStore` is the async one). TTLs are not supported.
    """

    def __init__(
        self, store: MemoryStore, *, type: str = "memory", fields: Sequence[str] = ("$",)
    ) -> None:
        from coordinator.memory import MemoryStore

        check_store("LockstepStore", store, MemoryStore)
        self._core = StoreCore(store, type, fields)

    @property
    def store(self) -> MemoryStore:
        return self._core.store

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Reads first, against the state before the batch; then every put and delete in
        one transaction (the last put of a key wins), as LangGraph's own stores do."""
        return self._core.run(list(ops))

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return await asyncio.to_thread(self.batch, list(ops))


class AsyncLockstepStore(BaseStore):
    """:class:`LockstepStore` on an :class:`AsyncMemoryStore`, for graphs run with
    ``ainvoke``/``astream``: ``await store.aput(...)``, ``asearch``… Make it inside the
    event loop that uses the memory store: the synchronous methods (``store.put``, as a
    synchronous tool called from a worker thread uses them) run on that loop and wait; on
    the loop's own thread they are refused, since waiting there would stop the loop."""

    def __init__(
        self, store: AsyncMemoryStore, *, type: str = "memory", fields: Sequence[str] = ("$",)
    ) -> None:
        from coordinator.memory import AsyncMemoryStore

        check_store("AsyncLockstepStore", store, AsyncMemoryStore)
        self._core = AsyncStoreCore(store, type, fields)
        self._bridge = EventLoopBridge(
            "AsyncLockstepStore",
            "await its async methods (aput, aget, asearch...) on the loop, or use "
            "LockstepStore with a MemoryStore",
        )

    @property
    def store(self) -> AsyncMemoryStore:
        return self._core.store

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """As :meth:`LockstepStore.batch`."""
        return await self._core.run(list(ops))

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """:meth:`abatch` on the store's event loop, from another thread."""
        return self._bridge.wait(self.abatch(list(ops)))
