"""LangGraph's long-term memory store (``BaseStore``) on a Lockstep memory store.

An item is a fact: its value in the storage, its text in every index, written together in
one transaction (a batch's puts and deletes all at once), so a semantic search never finds
an item the storage lost, nor misses one it holds.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from langgraph.store.base import (
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
)
from langgraph.store.base.embed import get_text_at_path, tokenize_path

from coordinator.abc import OWN_TYPE_PREFIX
from coordinator.errors import UsageError, VersionConflict
from coordinator.filters import filterable
from coordinator.integrations import check_store
from coordinator.memory._model import Fact, check_user_type
from coordinator.memory._sync.store import MOST_CANDIDATES

if TYPE_CHECKING:
    from coordinator.memory import MemoryStore

UNINDEXED = OWN_TYPE_PREFIX + "store_item"
"""The type of an item put with ``index=False`` (or with no text to embed): the storage
keeps it, no index holds it."""
_NAMESPACE = uuid.UUID("5b0e8c1d-2f3a-4e6b-9d7c-8a1f0e2d3c4b")
_FETCH_MORE = 4  # a query search short of its page asks the index for this many times more
_ATTEMPTS = 8  # a batch that lost a race with another process's writer is written again


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
    thread. TTLs are not supported.
    """

    def __init__(
        self, store: MemoryStore, *, type: str = "memory", fields: Sequence[str] = ("$",)
    ) -> None:
        from coordinator.memory import MemoryStore

        check_store("LockstepStore", store, MemoryStore)
        check_user_type("type", type)
        self.store = store
        self.type = type
        self.fields = tuple(fields)
        self._writing = _lock_of(store)

    # -- the batch ------------------------------------------------------------------------

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Reads first, against the state before the batch; then every put and delete in
        one transaction (the last put of a key wins), as LangGraph's own stores do."""
        results: list[Result] = []
        puts: dict[tuple[tuple[str, ...], str], PutOp] = {}
        for op in ops:
            if isinstance(op, GetOp):
                found = self.store.get(_item_id(op.namespace, op.key))
                results.append(None if found is None else _item(found))
            elif isinstance(op, SearchOp):
                results.append(self._search(op))
            elif isinstance(op, ListNamespacesOp):
                results.append(self._namespaces(op))
            elif isinstance(op, PutOp):
                puts[(tuple(op.namespace), op.key)] = op
                results.append(None)
            else:
                raise UsageError(f"LockstepStore: unknown operation {type(op).__name__}")
        if puts:
            self._write(list(puts.values()))
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return await asyncio.to_thread(self.batch, list(ops))

    # -- writes -------------------------------------------------------------------------

    def _write(self, puts: list[PutOp]) -> None:
        """The puts and deletes, in one transaction. A put replaces whatever the key holds,
        so a batch that lost a race with another process's writer reads again and writes
        again; the writers of one memory store take turns (racing there, one could lose
        every time to the others' commits in flight)."""
        with self._writing:
            for attempt in range(_ATTEMPTS):
                try:
                    return self._write_once(puts)
                except VersionConflict:
                    if attempt == _ATTEMPTS - 1:
                        raise
                    # Writers that collided spread out before they try again.
                    time.sleep(random.uniform(0, 0.002 * (attempt + 1)))

    def _write_once(self, puts: list[PutOp]) -> None:
        with self.store.transaction() as tx:
            for op in puts:
                fact_id = _item_id(op.namespace, op.key)
                current = tx.get(fact_id)
                if op.value is None:
                    if current is not None:
                        tx.delete(fact_id)
                    continue
                payload: dict[str, Any] = {
                    "namespace": list(op.namespace),
                    "key": op.key,
                    "value": dict(op.value),
                    **{f"ns_{i}": label for i, label in enumerate(op.namespace)},
                    "created_at": (
                        current["payload"]["created_at"]
                        if current is not None
                        else datetime.now(UTC).isoformat()
                    ),
                }
                text = self._text(op)
                if text:
                    payload["content"] = text
                kind = self.type if text else UNINDEXED
                tx.commit(Fact(id=fact_id, type=kind, payload=payload))

    def _text(self, op: PutOp) -> str:
        """The text the indexes embed for this put: its fields' texts, one per line."""
        if op.index is False or op.value is None:
            return ""
        paths = self.fields if op.index is None else op.index
        texts: list[str] = []
        for path in paths:
            if path == "$":
                texts.append(json.dumps(op.value, sort_keys=True, ensure_ascii=False))
            else:
                texts += get_text_at_path(op.value, tokenize_path(path))
        return "\n".join(t for t in texts if t.strip())

    # -- reads --------------------------------------------------------------------------

    def _search(self, op: SearchOp) -> list[SearchItem]:
        prefix = tuple(op.namespace_prefix)
        pushed: dict[str, str | int] = {f"payload.ns_{i}": label for i, label in enumerate(prefix)}
        checked = dict(op.filter or {})
        for field, wanted in checked.items():
            # A plain equality on a plainly named field the storage (or index) filters too;
            # every condition is checked here anyway, with LangGraph's semantics.
            key = f"payload.value.{field}"
            if isinstance(wanted, str | int) and filterable(key, wanted):
                pushed[key] = wanted
        wanted = max(op.offset, 0) + max(op.limit, 0)

        def meets(fact: dict[str, Any]) -> bool:
            value = fact["payload"]["value"]
            return all(_matches(value.get(field), v) for field, v in checked.items())

        if not op.query:
            facts = [
                *self.store.query(self.type, pushed),
                *self.store.query(UNINDEXED, pushed),
            ]
            facts.sort(key=lambda f: f["ts"], reverse=True)
            page = [(fact, None) for fact in facts if meets(fact)]
            return [_search_item(f, s) for f, s in page[op.offset : op.offset + op.limit]]
        # The conditions checked here come after the index's nearest items: when too few
        # of those meet them, ask for more, until the page is full or the index has no more.
        k = max(wanted, 1)
        while True:
            hits = self.store.search(op.query, k, self.type, pushed)
            kept = [(hit.fact, hit.score) for hit in hits if meets(hit.fact)]
            if len(kept) >= wanted or len(hits) < k or k >= MOST_CANDIDATES:
                break
            k = min(MOST_CANDIDATES, k * _FETCH_MORE)
        return [_search_item(f, s) for f, s in kept[op.offset : op.offset + op.limit]]

    def _namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        every = {
            tuple(f["payload"]["namespace"])
            for kind in (self.type, UNINDEXED)
            for f in self.store.query(kind)
        }
        chosen = [ns for ns in every if all(_fits(c, ns) for c in op.match_conditions or ())]
        if op.max_depth is not None:
            chosen = [ns[: op.max_depth] for ns in chosen]
        return sorted(set(chosen))[op.offset : op.offset + op.limit]


_LOCKS: weakref.WeakKeyDictionary[MemoryStore, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _lock_of(store: MemoryStore) -> threading.Lock:
    """One lock per memory store, shared by every LockstepStore on it."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(store, threading.Lock())


def _item_id(namespace: Sequence[str], key: str) -> str:
    return f"lgstore:{uuid.uuid5(_NAMESPACE, json.dumps([list(namespace), key]))}"


def _item(fact: dict[str, Any]) -> Item:
    payload = fact["payload"]
    return Item(
        value=payload["value"],
        key=payload["key"],
        namespace=tuple(payload["namespace"]),
        created_at=datetime.fromisoformat(payload["created_at"]),
        updated_at=fact["ts"],
    )


def _search_item(fact: dict[str, Any], score: float | None) -> SearchItem:
    item = _item(fact)
    return SearchItem(item.namespace, item.key, item.value, item.created_at, item.updated_at, score)


def _fits(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    labels = namespace[: len(path)] if condition.match_type == "prefix" else namespace[-len(path) :]
    return all(p in ("*", label) for p, label in zip(path, labels, strict=True)) if path else True


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": lambda a, b: a == b,
    "$ne": lambda a, b: a != b,
    "$gt": lambda a, b: a is not None and float(a) > float(b),
    "$gte": lambda a, b: a is not None and float(a) >= float(b),
    "$lt": lambda a, b: a is not None and float(a) < float(b),
    "$lte": lambda a, b: a is not None and float(a) <= float(b),
}


def _matches(value: Any, wanted: Any) -> bool:
    """LangGraph's filter semantics: equality, nested dicts, ``$eq``/``$ne``/``$gt``…"""
    if isinstance(wanted, dict):
        if any(key.startswith("$") for key in wanted):
            unknown = sorted(k for k in wanted if k not in _OPERATORS)
            if unknown:
                raise UsageError(f"search filter: unknown operators {unknown}")
            return all(_OPERATORS[op](value, operand) for op, operand in wanted.items())
        return isinstance(value, dict) and all(_matches(value.get(k), v) for k, v in wanted.items())
    return bool(value == wanted)
