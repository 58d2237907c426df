"""Hypothesis drives LangGraph's ``InMemoryStore`` and ``LockstepStore`` through the same
random operations; every read must answer alike, and the index must hold exactly the
items put for it.

Operations: puts (indexed or not, values with nested fields), deletes, batches mixing
them, gets, searches by namespace prefix with equality and operator filters, offsets and
limits, namespace listings (by prefix, suffix and depth). Searches without a query are
compared as sets of (namespace, key, value): the two stores order them differently
(insertion order against newest first). ``list_namespaces`` is compared after removing
the namespaces ``InMemoryStore`` keeps listing once emptied.
"""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from langgraph.store.base import BaseStore, GetOp, PutOp, SearchOp
from langgraph.store.memory import InMemoryStore
from qdrant_client import QdrantClient

from coordinator import MemoryStore
from coordinator.embeddings import HashingEmbedder
from coordinator.integrations.langgraph import LockstepStore
from participants.memory import InMemoryStorage
from participants.qdrant import QdrantIndex

NAMESPACES = [("a",), ("a", "x"), ("a", "y"), ("b", "x")]
KEYS = ["k0", "k1", "k2"]
values = st.fixed_dictionaries(
    {"n": st.integers(-3, 3), "tag": st.sampled_from(["red", "blue"])},
    optional={"deep": st.fixed_dictionaries({"m": st.integers(0, 2)})},
)
filters = st.sampled_from(
    [
        None,
        {"tag": "red"},
        {"n": {"$gte": 0}},
        {"n": {"$lt": 2, "$ne": -1}},
        {"deep": {"m": 1}},
        {"tag": "blue", "n": {"$gt": -2}},
    ]
)


def found(items: list[Any]) -> list[tuple[Any, ...]]:
    return sorted((i.namespace, i.key, repr(sorted(i.value.items()))) for i in items)


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # In-process stores: this machine tests the store's logic (the backends have their
        # own tests), and a failing example must shrink within the test timeout.
        index = QdrantIndex(QdrantClient(":memory:"), "memories", embedder=HashingEmbedder(16))
        self.mem = MemoryStore(InMemoryStorage(), [index])
        self.ours = LockstepStore(self.mem)
        self.theirs = InMemoryStore()
        self.indexed: set[tuple[tuple[str, ...], str]] = set()

    def teardown(self) -> None:
        self.mem.close()

    def both(self, call: Any) -> tuple[Any, Any]:
        return call(self.ours), call(self.theirs)

    @rule(
        namespace=st.sampled_from(NAMESPACES),
        key=st.sampled_from(KEYS),
        value=values,
        indexed=st.booleans(),
    )
    def put(
        self, namespace: tuple[str, ...], key: str, value: dict[str, Any], indexed: bool
    ) -> None:
        def call(store: BaseStore) -> None:
            store.put(namespace, key, value, index=None if indexed else False)

        self.both(call)
        (self.indexed.add if indexed else self.indexed.discard)((namespace, key))

    @rule(namespace=st.sampled_from(NAMESPACES), key=st.sampled_from(KEYS))
    def delete(self, namespace: tuple[str, ...], key: str) -> None:
        self.both(lambda store: store.delete(namespace, key))
        self.indexed.discard((namespace, key))

    @rule(
        writes=st.lists(
            st.tuples(st.sampled_from(NAMESPACES), st.sampled_from(KEYS), st.none() | values),
            min_size=1,
            max_size=4,
        ),
        namespace=st.sampled_from(NAMESPACES),
        key=st.sampled_from(KEYS),
    )
    def batch(
        self,
        writes: list[tuple[tuple[str, ...], str, dict[str, Any] | None]],
        namespace: tuple[str, ...],
        key: str,
    ) -> None:
        """Reads in a batch see the state before its writes; the last write of a key wins."""
        ops = [GetOp(namespace, key), *(PutOp(ns, k, v) for ns, k, v in writes)]
        ops.append(SearchOp(namespace[:1], limit=20))
        ours, theirs = self.both(lambda store: store.batch(ops))
        assert (ours[0] and ours[0].value) == (theirs[0] and theirs[0].value)
        assert found(ours[-1]) == found(theirs[-1])
        for ns, k, v in writes:
            (self.indexed.discard if v is None else self.indexed.add)((ns, k))

    @rule(namespace=st.sampled_from(NAMESPACES), key=st.sampled_from(KEYS))
    def get(self, namespace: tuple[str, ...], key: str) -> None:
        ours, theirs = self.both(lambda store: store.get(namespace, key))
        assert (ours is None) == (theirs is None)
        if ours is not None:
            assert (ours.namespace, ours.key, ours.value) == (
                theirs.namespace,
                theirs.key,
                theirs.value,
            )

    @rule(
        prefix=st.sampled_from([(), ("a",), ("a", "x"), ("b",), ("c",)]),
        filter_=filters,
        limit=st.integers(0, 12),
        offset=st.integers(0, 3),
    )
    def search(
        self, prefix: tuple[str, ...], filter_: dict[str, Any] | None, limit: int, offset: int
    ) -> None:
        ours, theirs = self.both(lambda store: store.search(prefix, filter=filter_, limit=50))
        assert found(ours) == found(theirs)
        page = self.ours.search(prefix, filter=filter_, limit=limit, offset=offset)
        assert len(page) == len(ours[offset : offset + limit])
        assert found(page) == found(ours[offset : offset + limit])  # a window of the whole

    @rule(
        prefix=st.sampled_from([None, ("a",), ("a", "*"), ("*", "x")]),
        suffix=st.sampled_from([None, ("x",), ("*",)]),
        depth=st.sampled_from([None, 1, 2]),
    )
    def list_namespaces(
        self,
        prefix: tuple[str, ...] | None,
        suffix: tuple[str, ...] | None,
        depth: int | None,
    ) -> None:
        holding = {item.namespace for item in self.ours.search((), limit=1000)}
        listed = self.theirs.list_namespaces(prefix=prefix, suffix=suffix)
        expected = [ns for ns in listed if ns in holding]  # without the emptied ones
        if depth is not None:
            expected = sorted({ns[:depth] for ns in expected})
        ours = self.ours.list_namespaces(prefix=prefix, suffix=suffix, max_depth=depth)
        assert ours == expected

    @invariant()
    def the_index_holds_the_indexed_items(self) -> None:
        committed = self.mem.indexes[0].contents().committed
        assert len(committed) == len(self.indexed)
        stored = {
            (tuple(f["payload"]["namespace"]), f["payload"]["key"])
            for f in self.mem.query("memory")
        }
        assert stored == self.indexed


StoreMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=20, deadline=None)
TestLangGraphStore = StoreMachine.TestCase
