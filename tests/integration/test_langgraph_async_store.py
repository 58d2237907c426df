"""LangGraph's long-term memory store on an ``AsyncMemoryStore``, on real stores.

The same script as the synchronous store's goes through ``AsyncLockstepStore`` (its
synchronous methods, called from a worker thread as a synchronous tool calls them, run on
the store's event loop) and is compared with LangGraph's ``InMemoryStore``; the async
methods reach the same stores; writers racing on one key all land.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from langgraph.graph import END, START, StateGraph
from langgraph.store.base import BaseStore, PutOp
from langgraph.store.memory import InMemoryStore

from coordinator import AsyncMemoryStore, UsageError
from coordinator.embeddings import HashingEmbedder
from coordinator.integrations.langgraph import UNINDEXED, AsyncLockstepSaver, AsyncLockstepStore
from tests.integration.test_langgraph_store import Turn, same_script
from tests.support.servers import ASYNC_COMBOS, async_memory_store

pytestmark = pytest.mark.anyio
EMBEDDER = HashingEmbedder(16)


@pytest.fixture(params=ASYNC_COMBOS)
async def amem(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncMemoryStore]:
    async for store in async_memory_store(request, tmp_path, EMBEDDER):
        yield store


async def test_the_async_store_answers_as_langgraphs_own(amem: AsyncMemoryStore) -> None:
    ours = AsyncLockstepStore(amem)
    # A synchronous caller on another thread, as LangGraph runs a synchronous tool.
    assert await asyncio.to_thread(same_script, ours) == same_script(InMemoryStore())
    assert await ours.alist_namespaces() == [("users", "ada", "prefs"), ("users", "bob", "prefs")]
    items = {f["payload"]["key"]: f["type"] for f in await amem.query()}
    assert items == {"diet": "memory", "drink": UNINDEXED}
    assert len((await amem.indexes[0].contents()).committed) == 2  # "drink": index=False


async def test_the_async_methods_write_and_search_every_store(amem: AsyncMemoryStore) -> None:
    store = AsyncLockstepStore(amem, fields=["text"])
    await store.aput(("notes",), "a", {"text": "the user is allergic to peanuts"})
    await store.aput(("notes",), "b", {"text": "the user lives in Lyon", "n": 2})
    item = await store.aget(("notes",), "b")
    assert item is not None and item.value == {"text": "the user lives in Lyon", "n": 2}
    hits = await store.asearch(("notes",), query="the user is allergic to peanuts", limit=2)
    assert [h.key for h in hits] == ["a", "b"]
    assert [h.key for h in await store.asearch(("notes",), filter={"n": {"$gte": 2}})] == ["b"]
    with pytest.raises(UsageError, match=r"payload\.value\.big"):
        await store.abatch(
            [PutOp(("notes",), "c", {"v": 1}), PutOp(("notes",), "d", {"big": 2**70})]
        )
    await store.adelete(("notes",), "a")
    stored = {f["payload"]["key"]: f for f in await amem.query()}
    assert set(stored) == {"b"}  # "a" deleted; nothing of the refused batch
    assert set((await amem.indexes[0].contents()).committed) == {stored["b"]["id"]}
    for mirror in amem.mirrors:
        assert [f.payload["key"] for f in await mirror.all_facts()] == ["b"]


async def test_a_synchronous_call_on_the_loop_thread_is_refused(tmp_path: Path) -> None:
    amem = await AsyncMemoryStore.open(tmp_path / "memory", embedder=EMBEDDER)
    store = AsyncLockstepStore(amem)
    with pytest.raises(UsageError, match="await its async methods"):
        store.put(("a",), "k", {"v": 1})  # waiting here would stop the loop it needs
    assert await amem.query() == []
    await amem.close()


async def test_writers_racing_on_one_key_each_land_and_the_last_one_stays(tmp_path: Path) -> None:
    amem = await AsyncMemoryStore.open(tmp_path / "memory", embedder=EMBEDDER)
    stores = [AsyncLockstepStore(amem), AsyncLockstepStore(amem)]

    async def writer(n: int) -> None:
        for i in range(10):
            await stores[n % 2].aput(("race",), "same", {"writer": n, "i": i})

    await asyncio.gather(*(writer(n) for n in range(4)))
    [fact] = await amem.query(typename="memory")
    assert fact["version"] == 40  # every put landed, one after another
    assert (await amem.indexes[0].contents()).committed == {fact["id"]: 40}
    await amem.close()


async def test_an_async_graph_remembers_with_async_nodes_and_a_synchronous_tool(
    tmp_path: Path,
) -> None:
    """``ainvoke`` with the async saver and store: an async node awaits the store, a
    synchronous one (run by LangGraph in a worker thread) calls it as it is."""

    async def remember(state: Turn, *, store: BaseStore) -> dict[str, Any]:
        await store.aput(("memories", state["user"]), str(uuid.uuid4()), {"text": state["said"]})
        return {}

    def recall(state: Turn, *, store: BaseStore) -> dict[str, Any]:
        known = store.search(("memories", state["user"]), query=state["said"], limit=10)
        return {"said": f"I know {len(known)} things about you"}

    builder = StateGraph(Turn)
    builder.add_node("remember", remember)
    builder.add_node("recall", recall)
    builder.add_edge(START, "remember")
    builder.add_edge("remember", "recall")
    builder.add_edge("recall", END)
    amem = await AsyncMemoryStore.open(tmp_path / "memory", embedder=EMBEDDER)
    graph = builder.compile(
        checkpointer=AsyncLockstepSaver(amem), store=AsyncLockstepStore(amem, fields=["text"])
    )
    first = await graph.ainvoke(
        {"user": "ada", "said": "I like tea"}, {"configurable": {"thread_id": "1"}}
    )
    second = await graph.ainvoke(
        {"user": "ada", "said": "I live in Lyon"}, {"configurable": {"thread_id": "2"}}
    )
    assert (first["said"], second["said"]) == (
        "I know 1 things about you",
        "I know 2 things about you",  # the other thread's memory, from the store
    )
    memories = await amem.query(typename="memory")
    assert sorted(f["payload"]["content"] for f in memories) == ["I like tea", "I live in Lyon"]
    assert set((await amem.indexes[0].contents()).committed) == {f["id"] for f in memories}
    assert (await amem.verify()).clean
    await amem.close()
