"""What LangGraph's long-term memory store does on a memory store (source of the
generated sync twin); ``langgraph/store.py`` gives it LangGraph's ``BaseStore`` faces.

An item is a fact: its value in the storage, its text in every index, written together in
one transaction (a batch's puts and deletes all at once), so a semantic search never finds
an item the storage lost, nor misses one it holds.
"""

from __future__ import annotations

import random
import threading
import weakref
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from langgraph.store.base import (
    GetOp,
    ListNamespacesOp,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
)

from coordinator._acompat import ALock, asleep
from coordinator.errors import UsageError, VersionConflict
from coordinator.filters import filterable
from coordinator.integrations.langgraph._items import (
    UNINDEXED,
    fits,
    item,
    item_id,
    matches,
    search_item,
    text_of,
)
from coordinator.memory._async.store import MOST_CANDIDATES
from coordinator.memory._model import Fact, check_user_type

if TYPE_CHECKING:
    from coordinator.memory._async.store import AsyncMemoryStore

_FETCH_MORE = 4  # a query search short of its page asks the index for this many times more
_ATTEMPTS = 8  # a batch that lost a race with another process's writer is written again


class AsyncStoreCore:
    """A batch of LangGraph store operations on ``store``: facts of type ``type`` (or
    :data:`UNINDEXED`), the text of ``fields`` embedded."""

    def __init__(self, store: AsyncMemoryStore, type: str, fields: Sequence[str]) -> None:
        check_user_type("type", type)
        self.store = store
        self.type = type
        self.fields = tuple(fields)
        self._writing = _lock_of(store)

    async def run(self, ops: Sequence[Op]) -> list[Result]:
        """Reads first, against the state before the batch; then every put and delete in
        one transaction (the last put of a key wins), as LangGraph's own stores do."""
        results: list[Result] = []
        puts: dict[tuple[tuple[str, ...], str], PutOp] = {}
        for op in ops:
            if isinstance(op, GetOp):
                found = await self.store.get(item_id(op.namespace, op.key))
                results.append(None if found is None else item(found))
            elif isinstance(op, SearchOp):
                results.append(await self._search(op))
            elif isinstance(op, ListNamespacesOp):
                results.append(await self._namespaces(op))
            elif isinstance(op, PutOp):
                puts[(tuple(op.namespace), op.key)] = op
                results.append(None)
            else:
                raise UsageError(f"LockstepStore: unknown operation {type(op).__name__}")
        if puts:
            await self._write(list(puts.values()))
        return results

    # -- writes -------------------------------------------------------------------------

    async def _write(self, puts: list[PutOp]) -> None:
        """The puts and deletes, in one transaction. A put replaces whatever the key holds,
        so a batch that lost a race with another process's writer reads again and writes
        again; the writers of one memory store take turns (racing there, one could lose
        every time to the others' commits in flight)."""
        async with self._writing:
            for attempt in range(_ATTEMPTS):
                try:
                    return await self._write_once(puts)
                except VersionConflict:
                    if attempt == _ATTEMPTS - 1:
                        raise
                    # Writers that collided spread out before they try again.
                    await asleep(random.uniform(0, 0.002 * (attempt + 1)))

    async def _write_once(self, puts: list[PutOp]) -> None:
        async with self.store.transaction() as tx:
            for op in puts:
                fact_id = item_id(op.namespace, op.key)
                current = await tx.get(fact_id)
                if op.value is None:
                    if current is not None:
                        await tx.delete(fact_id)
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
                text = text_of(op, self.fields)
                if text:
                    payload["content"] = text
                kind = self.type if text else UNINDEXED
                await tx.commit(Fact(id=fact_id, type=kind, payload=payload))

    # -- reads --------------------------------------------------------------------------

    async def _search(self, op: SearchOp) -> list[SearchItem]:
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
            return all(matches(value.get(field), v) for field, v in checked.items())

        if not op.query:
            facts = [
                *await self.store.query(self.type, pushed),
                *await self.store.query(UNINDEXED, pushed),
            ]
            facts.sort(key=lambda f: f["ts"], reverse=True)
            page = [(fact, None) for fact in facts if meets(fact)]
            return [search_item(f, s) for f, s in page[op.offset : op.offset + op.limit]]
        # The conditions checked here come after the index's nearest items: when too few
        # of those meet them, ask for more, until the page is full or the index has no more.
        k = max(wanted, 1)
        while True:
            hits = await self.store.search(op.query, k, self.type, pushed)
            kept = [(hit.fact, hit.score) for hit in hits if meets(hit.fact)]
            if len(kept) >= wanted or len(hits) < k or k >= MOST_CANDIDATES:
                break
            k = min(MOST_CANDIDATES, k * _FETCH_MORE)
        return [search_item(f, s) for f, s in kept[op.offset : op.offset + op.limit]]

    async def _namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        every = {
            tuple(f["payload"]["namespace"])
            for kind in (self.type, UNINDEXED)
            for f in await self.store.query(kind)
        }
        chosen = [ns for ns in every if all(fits(c, ns) for c in op.match_conditions or ())]
        if op.max_depth is not None:
            chosen = [ns[: op.max_depth] for ns in chosen]
        return sorted(set(chosen))[op.offset : op.offset + op.limit]


_LOCKS: weakref.WeakKeyDictionary[AsyncMemoryStore, ALock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _lock_of(store: AsyncMemoryStore) -> ALock:
    """One lock per memory store, shared by every LangGraph store on it."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(store, ALock())
