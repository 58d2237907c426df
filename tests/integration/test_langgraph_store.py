"""LangGraph's long-term memory store on a memory store, on real stores.

The same operations go to LangGraph's ``InMemoryStore`` and to ``LockstepStore``, and
their answers are compared; then what only Lockstep does: a semantic search goes to the
index, ``index=False`` items stay out of it, and a batch lands whole or not at all in the
storage, the mirror and the index.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.store.base import BaseStore, PutOp
from langgraph.store.memory import InMemoryStore

from coordinator import MemoryStore, UsageError
from coordinator.embeddings import HashingEmbedder
from coordinator.integrations.langgraph import UNINDEXED, LockstepSaver, LockstepStore
from participants.memory import InMemoryStorage, MemoryBackend
from tests.support.servers import postgres_redis_chroma

EMBEDDER = HashingEmbedder(16)


@pytest.fixture(params=["embedded", "postgres + redis + chroma server"])
def mem(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MemoryStore]:
    if request.param == "embedded":
        store = MemoryStore.open(tmp_path / "memory", embedder=EMBEDDER)
    else:
        store = postgres_redis_chroma(request, EMBEDDER)
    yield store
    assert store.verify().clean
    store.close()


def same_script(store: BaseStore) -> list[Any]:
    """Operations an agent makes, and what each returns (ids, values; not timestamps)."""
    seen: list[Any] = []
    store.put(("users", "ada", "prefs"), "diet", {"food": "vegan", "strict": True, "n": 3})
    store.put(("users", "ada", "prefs"), "drink", {"food": "tea", "n": 1}, index=False)
    store.put(("users", "bob", "prefs"), "diet", {"food": "omnivore", "n": 5})
    store.put(("users", "bob", "notes"), "x", {"food": "vegan", "tags": {"a": 1}})
    store.put(("users", "ada", "prefs"), "diet", {"food": "vegetarian", "strict": True, "n": 4})
    store.delete(("users", "bob", "notes"), "x")
    store.delete(("users", "nobody"), "nothing")  # deleting what is not there: no error
    seen.append(store.get(("users", "ada", "prefs"), "diet").value)  # type: ignore[union-attr]
    seen.append(store.get(("users", "bob", "notes"), "x"))
    for prefix, filter_ in [
        (("users",), None),
        (("users", "ada"), None),
        (("users",), {"food": "vegetarian"}),
        (("users",), {"n": {"$gte": 3}}),
        (("users",), {"n": {"$lt": 5, "$ne": 1}}),
        (("users",), {"strict": True}),
        (("nobody",), None),
    ]:
        found = store.search(prefix, filter=filter_, limit=10)
        seen.append(sorted((i.namespace, i.key) for i in found))
    seen.append(len(store.search(("users",), limit=1)) + len(store.search(("users",), offset=2)))
    return seen


def test_the_store_answers_as_langgraphs_own(mem: MemoryStore) -> None:
    ours = LockstepStore(mem)
    assert same_script(ours) == same_script(InMemoryStore())
    # InMemoryStore keeps listing a namespace once its last item is deleted (and one a
    # delete of a missing key named); the Postgres store, like this one, lists those
    # that hold items.
    assert ours.list_namespaces() == [("users", "ada", "prefs"), ("users", "bob", "prefs")]
    assert ours.list_namespaces(prefix=("users", "*", "prefs")) == ours.list_namespaces()
    assert ours.list_namespaces(suffix=("prefs",), max_depth=2) == [
        ("users", "ada"),
        ("users", "bob"),
    ]
    assert ours.list_namespaces(limit=1, offset=1) == [("users", "bob", "prefs")]
    assert ours.list_namespaces(prefix=("users", "ada", "prefs", "deeper")) == []
    items = {f["payload"]["key"]: f["type"] for f in mem.query()}
    assert items == {"diet": "memory", "drink": UNINDEXED}  # one of each namespace's keys
    committed = mem.indexes[0].contents().committed
    assert len(committed) == 2  # the two "diet" items; "drink" was put with index=False


def test_a_query_searches_the_index_by_the_configured_fields(mem: MemoryStore) -> None:
    store = LockstepStore(mem, fields=["text"])
    store.put(("notes",), "a", {"text": "the user is allergic to peanuts", "source": "chat"})
    store.put(("notes",), "b", {"text": "the user lives in Lyon", "source": "form"})
    store.put(("notes",), "c", {"other": "no text field: not embedded"})
    hits = store.search(("notes",), query="the user is allergic to peanuts", limit=2)
    assert [h.key for h in hits] == ["a", "b"]
    assert hits[0].score is not None and hits[0].score > hits[1].score  # type: ignore[operator]
    assert [
        h.key for h in store.search(("notes",), query="peanuts", filter={"source": "form"})
    ] == ["b"]
    assert store.search(("elsewhere",), query="peanuts") == []
    stored = {f["payload"]["key"]: f for f in mem.query()}
    assert stored["a"]["payload"]["content"] == "the user is allergic to peanuts"
    assert stored["c"]["type"] == UNINDEXED  # nothing to embed: kept out of the index
    assert set(mem.indexes[0].contents().committed) == {stored["a"]["id"], stored["b"]["id"]}


def test_a_batch_with_one_bad_value_writes_none_of_it(mem: MemoryStore) -> None:
    store = LockstepStore(mem)
    store.put(("kept",), "k", {"v": 1})
    before = (mem.query(), mem.indexes[0].contents().committed)
    with pytest.raises(UsageError, match=r"payload\.value\.big"):
        store.batch(
            [
                PutOp(("new",), "fine", {"v": 2}),
                PutOp(("kept",), "k", None),  # a delete in the same batch
                PutOp(("new",), "bad", {"big": 2**70}),
            ]
        )
    assert (mem.query(), mem.indexes[0].contents().committed) == before
    for mirror in mem.mirrors:
        assert [f.payload["key"] for f in mirror.all_facts()] == ["k"]


class Turn(TypedDict):
    user: str
    said: str


def test_a_graph_remembers_across_threads_with_the_saver_beside_it(tmp_path: Path) -> None:
    def remember(state: Turn, config: RunnableConfig, *, store: BaseStore) -> dict[str, Any]:
        store.put(("memories", state["user"]), str(uuid.uuid4()), {"text": state["said"]})
        known = store.search(("memories", state["user"]), query=state["said"], limit=10)
        return {"said": f"I know {len(known)} things about you"}

    builder = StateGraph(Turn)
    builder.add_node("remember", remember)
    builder.add_edge(START, "remember")
    builder.add_edge("remember", END)
    with MemoryStore.open(tmp_path / "memory", embedder=EMBEDDER) as mem:
        graph = builder.compile(
            checkpointer=LockstepSaver(mem), store=LockstepStore(mem, fields=["text"])
        )
        first = graph.invoke(
            {"user": "ada", "said": "I like tea"}, {"configurable": {"thread_id": "1"}}
        )
        second = graph.invoke(
            {"user": "ada", "said": "I live in Lyon"}, {"configurable": {"thread_id": "2"}}
        )
        assert (first["said"], second["said"]) == (
            "I know 1 things about you",
            "I know 2 things about you",  # the other thread's memory, from the store
        )
        memories = mem.query(typename="memory")
        assert sorted(f["payload"]["content"] for f in memories) == ["I like tea", "I live in Lyon"]
        assert set(mem.indexes[0].contents().committed) == {f["id"] for f in memories}
        assert mem.verify().clean


@pytest.mark.anyio
async def test_the_async_methods_reach_the_same_stores(tmp_path: Path) -> None:
    with MemoryStore.open(tmp_path / "memory", embedder=EMBEDDER) as mem:
        store = LockstepStore(mem)
        await store.aput(("a",), "k", {"v": 1})
        item = await store.aget(("a",), "k")
        assert item is not None and item.value == {"v": 1}
        assert [i.key for i in await store.asearch(("a",), query="v")] == ["k"]
        await store.adelete(("a",), "k")
        assert mem.query() == [] and mem.indexes[0].contents().committed == {}


def test_misuse_is_refused_by_name(tmp_path: Path) -> None:
    with MemoryStore.open(tmp_path / "memory", embedder=EMBEDDER) as mem:
        with pytest.raises(UsageError, match="Lockstep's own"):
            LockstepStore(mem, type="lockstep:x")
        store = LockstepStore(mem)
        store.put(("a",), "k", {"n": 1})
        with pytest.raises(UsageError, match=r"unknown operators \['\$regex'\]"):
            store.search(("a",), filter={"n": {"$regex": "1"}})
        with pytest.raises(NotImplementedError, match="TTL is not supported"):
            store.put(("a",), "k", {"n": 2}, ttl=5)
        assert store.get(("a",), "k").value == {"n": 1}  # type: ignore[union-attr]


def test_writers_racing_on_one_key_each_land_and_the_last_one_stays(tmp_path: Path) -> None:
    """A put replaces what the key holds (LangGraph's semantics): a put that lost a race
    with another writer retries instead of failing the caller's graph step. Writers of
    one store take turns; two stores on the same memory race as two processes would."""
    with MemoryStore.open(tmp_path / "memory", embedder=EMBEDDER) as mem:
        stores = [LockstepStore(mem), LockstepStore(mem)]
        errors: list[BaseException] = []

        def writer(n: int) -> None:
            try:
                for i in range(15):
                    stores[n % 2].put(("race",), "same", {"writer": n, "i": i})
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        item = stores[0].get(("race",), "same")
        assert item is not None and item.value["i"] == 14
        [fact] = mem.query(typename="memory")
        assert fact["version"] == 60  # every put landed, one after another
        assert mem.indexes[0].contents().committed == {fact["id"]: 60}


def test_a_put_that_loses_a_race_with_another_process_writes_again() -> None:
    """Two memory stores on one storage, as two processes have: the other one writes the
    key between this put's read and its commit; the put conflicts, reads again and lands
    after it instead of failing the caller's graph step."""
    backend = MemoryBackend()
    first, second = (MemoryStore(InMemoryStorage("facts", backend)) for _ in range(2))
    ours, other = LockstepStore(first), LockstepStore(second)
    ours.put(("race",), "same", {"by": "ours", "i": 0})
    opened = first.transaction
    cut_in: list[str] = []

    def transaction(*args: Any, **kwargs: Any) -> Any:
        tx = opened(*args, **kwargs)
        read = tx.get

        def get(fact_id: str) -> Any:
            found = read(fact_id)
            if not cut_in:
                cut_in.append(fact_id)
                other.put(("race",), "same", {"by": "other"})
            return found

        tx.get = get  # type: ignore[method-assign]
        return tx

    first.transaction = transaction  # type: ignore[method-assign]
    ours.put(("race",), "same", {"by": "ours", "i": 1})
    assert cut_in  # the other writer did cut in
    history = first.history(cut_in[0])
    assert [v["payload"]["value"] for v in history] == [
        {"by": "ours", "i": 0},
        {"by": "other"},
        {"by": "ours", "i": 1},
    ]


def test_a_query_with_a_filter_few_items_meet_still_fills_its_page(tmp_path: Path) -> None:
    """An operator filter is checked here, after the index's nearest items: when few items
    meet it, the search asks the index for more until the page is full or none are left."""
    with MemoryStore.open(tmp_path / "memory", embedder=EMBEDDER) as mem:
        store = LockstepStore(mem, fields=["text"])
        store.batch([PutOp(("notes",), f"k{n}", {"text": f"note {n}", "n": n}) for n in range(60)])
        hits = store.search(("notes",), query="note 1", filter={"n": {"$gte": 55}}, limit=4)
        assert len(hits) == 4 and all(h.value["n"] >= 55 for h in hits)
        every = store.search(("notes",), query="note 1", filter={"n": {"$gte": 55}}, limit=10)
        assert sorted(h.value["n"] for h in every) == [55, 56, 57, 58, 59]
