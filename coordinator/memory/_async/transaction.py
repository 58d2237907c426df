"""A memory transaction: the changes one atomic commit carries, and the writes it sends to
the storage, its mirrors and every index (source of the generated sync twin).

Reads through a transaction see its own changes; nothing is written until it finishes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from pydantic import BaseModel

from coordinator._acompat import ablocking
from coordinator.abc import AsyncIndex, Embedder, indexed_text
from coordinator.errors import ImmutableViolation, UsageError
from coordinator.ids import new_txid
from coordinator.memory._model import Fact, as_dict, check_text
from coordinator.outcomes import Outcome
from coordinator.records import (
    DeleteFact,
    Execute,
    FactRecord,
    JSONValue,
    TransactionMeta,
    UpsertFact,
    Write,
    singleton_claim,
)

if TYPE_CHECKING:
    from coordinator.memory._async.store import AsyncMemoryStore


@dataclass
class _Change:
    """One fact's change inside a transaction: committed state before, state after.

    ``after`` is ``None`` for a delete, whose ``tombstone`` goes to history.
    """

    before: FactRecord | None
    after: FactRecord | None
    claim: str | None = None
    tombstone: FactRecord | None = None


class AsyncMemoryTransaction:
    """Several changes committed as one atomic transaction (``async with store.transaction()``).

    Reads through the transaction (``get``) see its own changes. Nothing is written until
    the block exits without an exception; then everything commits at once, or nothing.
    """

    def __init__(
        self,
        store: AsyncMemoryStore,
        session_id: str | None = None,
        actor: str | None = None,
        reason: str | None = None,
        *,
        kind: str = "write",
        undoes: tuple[str, ...] = (),
    ) -> None:
        self._store = store
        self.txid = new_txid()
        self.session_id = session_id
        self.actor = actor
        self.reason = reason
        self._kind = kind
        self._undoes = undoes
        self._changes: dict[str, _Change] = {}
        self._reads: dict[str, FactRecord | None] = {}
        self._newest: dict[str, int] = {}  # the newest version in history, where read
        self._sql: dict[str, list[Write]] = {}
        self.outcome: Outcome | None = None
        self._held = contextlib.ExitStack()

    async def __aenter__(self) -> Self:
        # A transaction under way is a commit under way: a close from another thread or
        # task waits for it, rather than close the stores under its reads.
        self._held.enter_context(self._store.coordinator.running())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._held:
            if exc_type is None:
                self.outcome = await self.finish()

    # -- reads --------------------------------------------------------------------------

    async def get(self, fact_id: str) -> dict[str, Any] | None:
        """The fact as this transaction would leave it.

        The version read here is the one this transaction's writes to the fact will
        expect: a read-modify-write inside a transaction never loses a concurrent update
        (the commit raises ``VersionConflict`` instead).
        """
        current = await self._current(fact_id)
        return None if current is None else as_dict(current)

    async def _current(self, fact_id: str) -> FactRecord | None:
        change = self._changes.get(fact_id)
        if change is not None:
            return change.after
        return await self._read(fact_id)

    async def _read(self, fact_id: str) -> FactRecord | None:
        """The committed state, read once per transaction (later writes expect it)."""
        if fact_id not in self._reads:
            # With the newest version in history, in the same read: a fact it creates
            # is numbered without another one.
            record, self._newest[fact_id] = await self._store.storage.head(fact_id)
            self._reads[fact_id] = record
        return self._reads[fact_id]

    def _know(self, heads: Mapping[str, tuple[FactRecord | None, int]]) -> None:
        """Take ``heads`` (as :meth:`AsyncStorage.head` returns them) as this transaction's
        reads of facts it has not read yet."""
        for fact_id, (record, newest) in heads.items():
            if fact_id not in self._reads:
                self._reads[fact_id], self._newest[fact_id] = record, newest

    # -- changes ------------------------------------------------------------------------

    async def commit(
        self,
        fact: Fact,
        session_id: str | None = None,
        ephemeral: bool = False,
        actor: str | None = None,
        reason: str | None = None,
    ) -> str:
        """Insert ``fact``, or update it when its id (or its singleton key) exists.

        :returns: the id of the fact written (an existing one for a singleton match).
        :raises ValidationFailed: the payload does not fit the registered schema.
        :raises ImmutableViolation: the fact exists and its type is immutable.
        """
        if not isinstance(fact, Fact):
            raise UsageError(f"commit() takes a Fact, got {type(fact).__name__}")
        check_text("fact id", fact.id, required=True)  # before it is looked up anywhere
        payload = self._store.schemas.validate(fact.type, fact.payload)
        constraint = self._store.constraints.get(fact.type)
        fact_id = fact.id
        claim = None
        if constraint is not None and constraint.singleton_key is not None:
            value = payload.get(constraint.singleton_key)
            if value is not None:
                if not isinstance(value, str | int | float | bool):
                    raise UsageError(
                        f"singleton key {constraint.singleton_key!r} of a {fact.type!r} fact "
                        f"must be a scalar, got {type(value).__name__}"
                    )
                claim = singleton_claim(fact.type, constraint.singleton_key, value)
                holder = await self._singleton_holder(fact.type, constraint.singleton_key, value)
                if holder is not None:
                    fact_id = holder
        current = await self._current(fact_id)
        if current is not None and constraint is not None and constraint.immutable:
            raise ImmutableViolation(
                f"fact {fact_id!r} of immutable type {fact.type!r} may not change"
            )
        session = session_id if session_id is not None else fact.session_id
        if session is None:
            session = self.session_id
        await self._put(
            fact_id,
            fact.type,
            payload,
            session_id=session,
            source=fact.source,
            actor=actor or self.actor,
            reason=reason or self.reason,
            claim=claim,
        )
        return fact_id

    async def commit_model(
        self,
        model: BaseModel,
        fact_id: str | None = None,
        source: str | None = None,
        session_id: str | None = None,
        ephemeral: bool = False,
        actor: str | None = None,
        reason: str | None = None,
    ) -> str:
        """Commit a registered Pydantic model instance as a fact (see :meth:`commit`).

        :raises UsageError: the model's class was never registered with ``register_schema``.
        """
        if not isinstance(model, BaseModel):
            raise UsageError(f"commit_model() takes a pydantic model, got {type(model).__name__}")
        typename = self._store.schemas.type_of(type(model))
        if typename is None:
            name = type(model).__name__
            raise UsageError(
                f"model class {name!r} is not registered; call "
                f"register_schema('your_type_name', {name}) first"
            )
        fact = Fact(type=typename, payload=model.model_dump(mode="json"), source=source)
        if fact_id is not None:
            fact = fact.model_copy(update={"id": fact_id})
        return await self.commit(fact, session_id, ephemeral, actor, reason)

    async def update(
        self,
        fact_id: str,
        patch: Mapping[str, Any],
        actor: str | None = None,
        reason: str | None = None,
    ) -> str:
        """Merge ``patch["payload"]`` into the fact's payload (shallow), as a new version.

        :raises UsageError: unknown fact id, or a patch with keys other than ``payload``.
        """
        if not isinstance(patch, Mapping) or set(patch) - {"payload"}:
            raise UsageError(
                "update(fact_id, patch): patch must be a dict like {'payload': {...}}; got "
                f"{patch!r}"
            )
        if not isinstance(patch.get("payload", {}), Mapping):
            raise UsageError("update(): patch['payload'] must be a dict")
        current = await self._existing(fact_id)
        self._check_mutable(current)
        payload = {**current.payload, **patch.get("payload", {})}
        payload = self._store.schemas.validate(current.type, payload)
        claim = self._claim_of(current.type, payload)
        if claim is not None:
            key = self._store.constraints[current.type].singleton_key
            assert key is not None
            holder = await self._singleton_holder(current.type, key, payload[key])
            if holder is not None and holder != fact_id:
                raise UsageError(
                    f"update() would give fact {fact_id!r} the singleton key {key}="
                    f"{payload[key]!r}, which fact {holder!r} holds"
                )
        await self._put(
            fact_id,
            current.type,
            payload,
            session_id=current.session_id,
            source=current.source,
            actor=actor or self.actor,
            reason=reason or self.reason,
            claim=claim,
        )
        return fact_id

    async def delete(
        self, fact_id: str, actor: str | None = None, reason: str | None = None
    ) -> str:
        """Delete the fact from every store.

        :raises UsageError: unknown fact id. :raises ImmutableViolation: immutable type.
        """
        _check_actor_reason(actor or self.actor, reason or self.reason)
        current = await self._existing(fact_id)
        self._check_mutable(current)
        change = await self._change(fact_id)
        change.after = None
        change.claim = None
        change.tombstone = FactRecord(
            fact_id,
            current.type,
            current.payload,
            0,  # numbered at finish, after the version it replaces
            current.session_id,
            current.source,
            actor or self.actor,
            reason or self.reason,
            time.time(),
            self.txid,
            deleted=True,
        )
        return fact_id

    def execute(
        self,
        participant: str,
        sql: str,
        params: Sequence[JSONValue] | Mapping[str, JSONValue] = (),
    ) -> None:
        """Run your own SQL inside ``participant``'s branch of this transaction, when it
        commits (in the participant's own dialect and parameter style).

        A Postgres storage or mirror runs it inside its prepared branch; a SQLite storage
        inside the local transaction that commits it with the decision (see
        ``SQLiteStorage``). A statement that fails aborts the whole transaction.

        :raises UsageError: no participant of this store has that name, or it cannot run
            SQL, or ``sql`` is empty.
        """
        if not isinstance(sql, str) or not sql.strip():
            raise UsageError("execute(participant, sql, params): sql must be a non-empty str")
        names = {p.name: p for p in self._store.participants}
        if participant not in names:
            raise UsageError(
                f"execute(): no participant named {participant!r}; this store has {sorted(names)}"
            )
        if not getattr(names[participant], "runs_sql", False):
            raise UsageError(
                f"execute(): participant {participant!r} cannot run SQL inside a transaction "
                "(a Postgres storage or mirror, or a SQLite storage, can)"
            )
        self._sql.setdefault(participant, []).append(Execute(sql, params))

    # -- helpers ------------------------------------------------------------------------

    async def _existing(self, fact_id: str) -> FactRecord:
        check_text("fact_id", fact_id, required=True)
        current = await self._current(fact_id)
        if current is None:
            raise UsageError(f"no fact with id {fact_id!r}")
        return current

    def _check_mutable(self, fact: FactRecord) -> None:
        constraint = self._store.constraints.get(fact.type)
        if constraint is not None and constraint.immutable:
            raise ImmutableViolation(
                f"fact {fact.id!r} of immutable type {fact.type!r} may not change"
            )

    def _claim_of(self, typename: str, payload: Mapping[str, Any]) -> str | None:
        constraint = self._store.constraints.get(typename)
        if constraint is None or constraint.singleton_key is None:
            return None
        value = payload.get(constraint.singleton_key)
        return None if value is None else singleton_claim(typename, constraint.singleton_key, value)

    async def _singleton_holder(self, typename: str, key: str, value: JSONValue) -> str | None:
        for fact_id, change in self._changes.items():
            after = change.after
            if after is not None and after.type == typename and after.payload.get(key) == value:
                return fact_id
        found = await self._store.storage.query(typename, {f"payload.{key}": value}, None)
        for fact in found:
            touched = self._changes.get(fact.id)
            if touched is None or touched.after is not None:
                return fact.id
        return None

    async def _change(self, fact_id: str) -> _Change:
        """This transaction's change of the fact (its committed state read on first touch)."""
        change = self._changes.get(fact_id)
        if change is None:
            before = await self._read(fact_id)
            change = self._changes[fact_id] = _Change(before, before)
        return change

    async def _put(
        self,
        fact_id: str,
        typename: str,
        payload: dict[str, Any],
        *,
        session_id: str | None,
        source: str | None,
        actor: str | None,
        reason: str | None,
        claim: str | None,
    ) -> None:
        # The id was checked where it came in (commit); the rest may come from the caller.
        check_text("fact type", typename, required=True)
        for what, value in (("session_id", session_id), ("source", source)):
            check_text(what, value)
        _check_actor_reason(actor, reason)
        change = await self._change(fact_id)
        change.after = FactRecord(
            fact_id, typename, payload, 0, session_id, source, actor, reason, time.time(), self.txid
        )
        change.claim = claim
        change.tombstone = None

    # -- commit -------------------------------------------------------------------------

    async def finish(self) -> Outcome | None:
        """Commit every change of this transaction atomically (done by ``async with``)."""
        if not self._changes and not self._sql and not self._undoes:
            return None
        store = self._store
        store.check_open(under_way=True)  # begun before the store was closed?
        storage_writes: list[Write] = []
        index_changes: list[tuple[str, int, FactRecord | None, FactRecord | None, str | None]] = []
        for fact_id, change in self._changes.items():
            expected = 0 if change.before is None else change.before.version
            version = (
                expected + 1 if change.before is not None else await self._next_version(fact_id)
            )
            if change.after is not None:
                after = _with_version(change.after, version)
                storage_writes.append(UpsertFact(after, expected, claim=change.claim))
                index_changes.append((fact_id, expected, change.before, after, change.claim))
            elif change.before is not None and change.tombstone is not None:
                tombstone = _with_version(change.tombstone, version)
                storage_writes.append(DeleteFact(fact_id, expected, tombstone))
                index_changes.append((fact_id, expected, change.before, None, None))
        storage_writes.append(
            TransactionMeta(self._session(), self._kind, self._undoes, self.actor, self.reason)
        )
        writes: dict[str, list[Write]] = {store.storage.name: storage_writes}
        for mirror in store.mirrors:
            writes[mirror.name] = list(storage_writes)
        for index in store.indexes:
            writes[index.name] = await self._index_writes(index, index_changes)
        for participant, statements in self._sql.items():
            writes.setdefault(participant, []).extend(statements)
        return await store.coordinator.commit(
            writes, txid=self.txid, deferrable=[index.name for index in store.indexes]
        )

    def _session(self) -> str | None:
        """The session this transaction belongs to (what ``rollback(session_id=...)`` sees):
        the one it was opened with, else the one all the facts it changes share."""
        if self.session_id is not None or self._kind != "write":
            return self.session_id
        sessions = {
            state.session_id
            for change in self._changes.values()
            for state in (change.before, change.after)
            if state is not None
        }
        return sessions.pop() if len(sessions) == 1 else None

    async def _next_version(self, fact_id: str) -> int:
        # A fact re-created after a delete continues its numbering, so history and index
        # points never reuse a version (the storages refuse one history holds).
        newest = self._newest.get(fact_id)
        if newest is None:
            _, newest = await self._store.storage.head(fact_id)
        return newest + 1

    async def _index_writes(
        self,
        index: AsyncIndex,
        changes: Sequence[tuple[str, int, FactRecord | None, FactRecord | None, str | None]],
    ) -> list[Write]:
        upserts: list[tuple[FactRecord, int, str]] = []
        writes: list[Write] = []
        for fact_id, expected, before, after, _ in changes:
            text = None if after is None else indexed_text(index, after)
            if text is not None and after is not None:
                upserts.append((after, expected, text))
            elif before is not None and index_holds(index, before):
                writes.append(DeleteFact(fact_id, expected, _with_version(before, expected + 1)))
        if upserts:
            # Embeddings are computed here, before prepare, outside any lock.
            vectors = await embed(index.embedder, [text for _, _, text in upserts])
            for (after, expected, _), vector in zip(upserts, vectors, strict=True):
                writes.append(UpsertFact(after, expected, embedding=tuple(vector)))
        return writes


def _check_actor_reason(actor: str | None, reason: str | None) -> None:
    check_text("actor", actor)
    check_text("reason", reason)


async def embed(embedder: Embedder, texts: list[str]) -> list[list[float]]:
    """``embedder.embed(texts)``; for async callers, in a worker thread unless the embedder
    is ``inline`` (a model takes milliseconds to seconds a text, and the loop would wait)."""
    if getattr(embedder, "inline", False):
        return embedder.embed(texts)
    return await ablocking(embedder.embed, texts)


async def embed_query(embedder: Embedder, text: str) -> list[float]:
    """``embedder.embed_query(text)``, called as :func:`embed` calls ``embed``."""
    if getattr(embedder, "inline", False):
        return embedder.embed_query(text)
    return await ablocking(embedder.embed_query, text)


def _with_version(record: FactRecord, version: int) -> FactRecord:
    return FactRecord(
        record.id,
        record.type,
        record.payload,
        version,
        record.session_id,
        record.source,
        record.actor,
        record.reason,
        record.ts,
        record.txid,
        record.deleted,
    )


def index_holds(index: AsyncIndex, fact: FactRecord) -> bool:
    try:
        return indexed_text(index, fact) is not None
    except UsageError:
        return False
