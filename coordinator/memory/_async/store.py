"""The agent-facing memory API on the engine (source of the generated sync twin).

Every write, rollback and session operation is one atomic transaction across the storage
(the source of truth) and every index: it lands everywhere or nowhere.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pydantic import BaseModel

from coordinator._acompat import ASYNC_API, ablocking
from coordinator._async.coordinator import AsyncCoordinator
from coordinator.abc import (
    AsyncDecisionLog,
    AsyncIndex,
    AsyncStorage,
    AsyncSupportsLastResource,
    Embedder,
    Hit,
    Vote,
)
from coordinator.errors import ConfigurationError, ImmutableViolation, UsageError
from coordinator.faults import FaultHook, no_faults
from coordinator.filters import check_filters, matches
from coordinator.ids import new_txid
from coordinator.log import AsyncMemoryDecisionLog
from coordinator.memory._model import Constraint, Fact, SchemaRegistry, ScoredFact, as_dict
from coordinator.memory._verify import Drift, VerifyReport, compare, compare_copies
from coordinator.outcomes import Outcome, RecoveryReport
from coordinator.plugins import open_decision_log, open_participant
from coordinator.policy import Policy
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
from coordinator.settings import LockstepSettings


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

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
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
        """Run your own SQL inside ``participant``'s branch of this transaction."""
        if not isinstance(sql, str) or not sql.strip():
            raise UsageError("execute(participant, sql, params): sql must be a non-empty str")
        self._sql.setdefault(participant, []).append(Execute(sql, params))

    # -- helpers ------------------------------------------------------------------------

    async def _existing(self, fact_id: str) -> FactRecord:
        if not isinstance(fact_id, str):
            raise UsageError(f"fact_id must be a str, got {type(fact_id).__name__}")
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
            text = None if after is None else index.text_of(after)
            if text is not None and after is not None:
                upserts.append((after, expected, text))
            elif before is not None and _held(index, before):
                writes.append(DeleteFact(fact_id, expected, _with_version(before, expected + 1)))
        if upserts:
            # Embeddings are computed here, before prepare, outside any lock.
            vectors = index.embedder.embed([text for _, _, text in upserts])
            for (after, expected, _), vector in zip(upserts, vectors, strict=True):
                writes.append(UpsertFact(after, expected, embedding=tuple(vector)))
        return writes


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


def _held(index: AsyncIndex, fact: FactRecord) -> bool:
    try:
        return index.text_of(fact) is not None
    except UsageError:
        return False


class AsyncMemoryStore:
    """Typed, versioned agent memory, atomic across a storage and its vector indexes.

    MemState's method names and semantics, each made atomic: a write, a rollback, a
    session promotion or discard lands in the storage and every index, or in none.

    :param storage: the source of truth (``AsyncSQLiteStorage``, ``AsyncInMemoryStorage``,
        Postgres, Redis).
    :param hooks: vector indexes to keep in lockstep (MemState's name; see ``add_index``).
    :param mirrors: further storages that hold a copy of every fact (e.g. Redis beside
        Postgres, for readers that want the facts there); see ``add_mirror``.
    :param log: the decision log. Default: the storage's own — for SQLite, a table in the
        same file (a ``<file>.decisions`` log left by an earlier version stays in use); for
        Postgres, a table in the same database; with either, the storage commits last
        together with the COMMIT record (``Policy.last_resource``; pass a log to choose
        otherwise). For Redis and the in-memory storage, this process's memory (decisions
        do not survive it: pass a durable ``log`` when an index or mirror is kept beside
        them).
    :param policy: timeouts and retry bounds of the engine.
    """

    def __init__(
        self,
        storage: AsyncStorage,
        hooks: Sequence[AsyncIndex] | None = None,
        *,
        mirrors: Sequence[AsyncStorage] = (),
        log: AsyncDecisionLog | None = None,
        policy: Policy | None = None,
        fault_hook: FaultHook = no_faults,
    ) -> None:
        if not isinstance(storage, AsyncStorage):
            raise UsageError(
                f"storage must be a Lockstep storage participant, got {type(storage).__name__}"
            )
        self.storage = storage
        self.indexes: list[AsyncIndex] = []
        self.mirrors: list[AsyncStorage] = []
        self.schemas = SchemaRegistry()
        self.constraints: dict[str, Constraint] = {}
        self.policy = policy or Policy()
        default_log = getattr(storage, "default_decision_log", None)
        if log is None and default_log is not None:
            log = default_log()
            holds = getattr(storage, "holds_decision_log", None)
            if (
                self.policy.last_resource is None
                and isinstance(storage, AsyncSupportsLastResource)
                and holds is not None
                and holds(log)
            ):
                # Its own log lives in its own database: commit it last, with the
                # decision (one local transaction instead of PREPARE, decide, COMMIT).
                self.policy = replace(self.policy, last_resource=storage.name)
        self.log: AsyncDecisionLog = log or AsyncMemoryDecisionLog()
        self._fault_hook = fault_hook
        self.coordinator = AsyncCoordinator(
            [storage], self.log, policy=self.policy, fault_hook=fault_hook
        )
        for mirror in mirrors:
            self.add_mirror(mirror)
        for index in hooks or ():
            self.add_index(index)

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        embedder: Embedder | None = None,
        policy: Policy | None = None,
        fault_hook: FaultHook = no_faults,
    ) -> AsyncMemoryStore:
        """The embedded default in directory ``path``: SQLite facts with the decision log in
        the same file (the storage commits last, with the decision), a Qdrant local-mode
        vector index, the offline semantic embedder. Recovery runs first.

        Qdrant's local mode locks its directory to one process, so no other coordinator
        can be half-way through a commit on these files: every in-doubt branch left by an
        earlier process is resolved at once, without waiting out the in-doubt timeout.
        """
        directory = await ablocking(_whole, path)  # the URLs below name it from the root
        await ablocking(directory.mkdir, parents=True, exist_ok=True)
        storage = open_participant(
            f"sqlite:///{directory / 'facts.db'}", name="facts", asynchronous=ASYNC_API
        )
        index = open_participant(
            f"qdrant+local:///{directory / 'vectors'}?collection=memories",
            name="vectors",
            asynchronous=ASYNC_API,
            embedder=embedder,
        )
        # Without a log the storage keeps its decisions in facts.db and commits last with
        # them; a decisions.db left by an earlier version (facts.db holding no log of its
        # own) stays in use.
        log = None
        beside = directory / "decisions.db"
        has_own_log = getattr(storage, "has_decision_table", lambda: False)
        if await ablocking(beside.exists) and not await ablocking(has_own_log):
            log = _log(open_decision_log(f"sqlite:///{beside}", asynchronous=ASYNC_API))
        store = cls(
            _storage(storage), [_index(index)], log=log, policy=policy, fault_hook=fault_hook
        )
        await store.coordinator_with(in_doubt_timeout=0.001, redrive_after=0.0).recover()
        return store

    @classmethod
    async def from_settings(cls, settings: LockstepSettings | None = None) -> AsyncMemoryStore:
        """The stores ``lockstep.toml`` / ``LOCKSTEP_*`` describe (see :mod:`coordinator.settings`)."""
        settings = settings or LockstepSettings()
        embedder = settings.make_embedder()
        if settings.storage is None:
            if settings.mirrors or settings.indexes:
                raise ConfigurationError(
                    "settings name indexes or mirrors but no storage; set `storage` (the "
                    "source of truth) or use `path` alone for the embedded default"
                )
            return await cls.open(
                settings.path or "lockstep-memory", embedder=embedder, policy=settings.policy()
            )
        storage = open_participant(settings.storage, name="facts", asynchronous=ASYNC_API)
        indexes = [
            _index(open_participant(url, asynchronous=ASYNC_API, embedder=embedder))
            for url in settings.indexes
        ]
        mirrors = [
            _storage(open_participant(url, name=f"mirror{n}", asynchronous=ASYNC_API))
            for n, url in enumerate(settings.mirrors)
        ]
        log = None
        if settings.log is not None:
            log = _log(open_decision_log(settings.log, asynchronous=ASYNC_API))
        store = cls(_storage(storage), indexes, mirrors=mirrors, log=log, policy=settings.policy())
        await store.recover()
        return store

    def coordinator_with(self, **policy: Any) -> AsyncCoordinator:
        """A coordinator over the same stores with some policy fields changed."""
        return AsyncCoordinator(
            self.participants,
            self.log,
            policy=replace(self.policy, **policy),
            fault_hook=self._fault_hook,
        )

    @property
    def participants(self) -> list[AsyncStorage | AsyncIndex]:
        """Every store a transaction writes: the storage, the mirrors, the indexes."""
        return [self.storage, *self.mirrors, *self.indexes]

    # -- configuration ------------------------------------------------------------------

    def add_index(self, index: AsyncIndex) -> None:
        """Keep ``index`` in lockstep with the storage from now on."""
        if not isinstance(index, AsyncIndex):
            raise UsageError(f"add_index() takes a Lockstep index, got {type(index).__name__}")
        self.indexes.append(index)
        self.coordinator = self.coordinator_with()

    add_hook = add_index  # MemState's name

    def add_mirror(self, mirror: AsyncStorage) -> None:
        """Keep a copy of every fact, with its history, in ``mirror`` from now on.

        A mirror is a derived store: every transaction writes it together with the
        storage, ``verify`` compares it with the storage and ``repair`` rebuilds it from
        there. Reads go to the storage. A mirror that has fallen behind (say, emptied
        behind Lockstep's back) votes NO on changes to the facts it lacks, so nothing
        commits on top of a wrong copy; ``repair`` puts it right.
        """
        if not isinstance(mirror, AsyncStorage):
            raise UsageError(f"add_mirror() takes a Lockstep storage, got {type(mirror).__name__}")
        self.mirrors.append(mirror)
        self.coordinator = self.coordinator_with()

    def register_schema(
        self, typename: str, model: type[BaseModel], constraint: Constraint | None = None
    ) -> None:
        """Validate facts of ``typename`` with ``model``; apply ``constraint`` to them."""
        self.schemas.register(typename, model)
        if constraint is not None:
            if not isinstance(constraint, Constraint):
                raise UsageError(
                    f"constraint must be a Constraint, got {type(constraint).__name__}"
                )
            self.constraints[typename] = constraint

    def transaction(
        self, session_id: str | None = None, actor: str | None = None, reason: str | None = None
    ) -> AsyncMemoryTransaction:
        """Several changes, one atomic commit: ``async with store.transaction() as tx:``."""
        return AsyncMemoryTransaction(self, session_id, actor, reason)

    # -- writes (each one atomic transaction) -------------------------------------------

    async def commit(
        self,
        fact: Fact,
        session_id: str | None = None,
        ephemeral: bool = False,
        actor: str | None = None,
        reason: str | None = None,
    ) -> str:
        """Insert or update ``fact`` in every store; returns its id."""
        async with self.transaction(session_id, actor, reason) as tx:
            fact_id = await tx.commit(fact, session_id, ephemeral, actor, reason)
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
        """Commit a registered Pydantic model instance as a fact; returns its id."""
        async with self.transaction(session_id, actor, reason) as tx:
            written = await tx.commit_model(
                model, fact_id, source, session_id, ephemeral, actor, reason
            )
        return written

    async def update(
        self,
        fact_id: str,
        patch: Mapping[str, Any],
        actor: str | None = None,
        reason: str | None = None,
    ) -> str:
        """Merge ``patch["payload"]`` into the fact, as a new version, everywhere."""
        async with self.transaction(None, actor, reason) as tx:
            await tx.update(fact_id, patch, actor, reason)
        return fact_id

    async def delete(
        self,
        session_id: str | None,
        fact_id: str,
        actor: str | None = None,
        reason: str | None = None,
    ) -> str:
        """Delete the fact from every store, vectors included (MemState's argument order)."""
        async with self.transaction(session_id, actor, reason) as tx:
            await tx.delete(fact_id, actor, reason)
        return fact_id

    async def promote_session(
        self,
        session_id: str,
        selector: Callable[[dict[str, Any]], bool] | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> list[str]:
        """Make the session's facts (those ``selector`` accepts) permanent: session cleared."""
        facts = await self.storage.query(None, {}, session_id)
        promoted: list[str] = []
        async with self.transaction(session_id, actor, reason) as tx:
            for fact in facts:
                as_json = as_dict(fact)
                if selector is not None and not selector(as_json):
                    continue
                await tx._put(
                    fact.id,
                    fact.type,
                    dict(fact.payload),
                    session_id=None,
                    source=fact.source,
                    actor=actor,
                    reason=reason or f"promoted from session {session_id}",
                    claim=tx._claim_of(fact.type, fact.payload),
                )
                promoted.append(fact.id)
        return promoted

    async def discard_session(
        self, session_id: str, actor: str | None = None, reason: str | None = None
    ) -> int:
        """Delete every fact of the session from every store, vectors included."""
        facts = await self.storage.query(None, {}, session_id)
        async with self.transaction(session_id, actor, reason) as tx:
            for fact in facts:
                await tx.delete(fact.id, actor, reason or f"session {session_id} discarded")
        return len(facts)

    async def rollback(
        self,
        steps: int = 1,
        session_id: str | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> list[str]:
        """Undo the last ``steps`` transactions (of ``session_id``, or of the whole store).

        The undo is itself one atomic transaction, recorded in history; nothing is erased.
        :returns: the ids of the facts restored or removed.
        :raises UsageError: ``steps`` is not a positive int (``rollback(steps, session_id)``).
        """
        if isinstance(steps, bool) or not isinstance(steps, int):
            hint = (
                f"; did you mean rollback(1, session_id={steps!r})?"
                if isinstance(steps, str)
                else ""
            )
            raise UsageError(
                f"rollback(steps, session_id): steps must be an int, got {steps!r}{hint}"
            )
        if steps <= 0:
            raise UsageError(f"rollback(): steps must be >= 1, got {steps}")
        entries = await self.storage.transactions(session_id, steps)
        if not entries:
            return []
        undone = tuple(e.txid for e in entries)
        # What they wrote, the version each fact goes back to (found directly, not by
        # reading its history) and the facts' heads, in one read.
        reads = await self.storage.undo_reads(undone)
        targets = reads.before
        tx = AsyncMemoryTransaction(
            self,
            session_id,
            actor,
            reason or f"rollback of {len(undone)} transaction(s)",
            kind="rollback",
            undoes=undone,
        )
        changed: list[str] = []
        async with tx:
            # The heads become the transaction's reads: the undo then expects the very
            # versions it was decided on.
            tx._know(reads.heads)
            for fact_id in sorted(reads.heads):
                target = targets.get(fact_id)
                current = await tx._current(fact_id)
                if target is not None and target.deleted:
                    target = None
                if current is not None:
                    tx._check_mutable(current)
                if target is None and current is not None:
                    await tx.delete(fact_id, actor, tx.reason)
                    changed.append(fact_id)
                elif target is not None and (
                    current is None
                    or (current.payload, current.session_id) != (target.payload, target.session_id)
                ):
                    await tx._put(
                        fact_id,
                        target.type,
                        dict(target.payload),
                        session_id=target.session_id,
                        source=target.source,
                        actor=actor,
                        reason=tx.reason,
                        claim=tx._claim_of(target.type, target.payload),
                    )
                    changed.append(fact_id)
        return changed

    # -- reads (committed data only) ----------------------------------------------------

    async def get(self, fact_id: str) -> dict[str, Any] | None:
        """The fact's committed state, or ``None``."""
        fact = await self.storage.get(fact_id)
        return None if fact is None else as_dict(fact)

    async def query(
        self,
        typename: str | None = None,
        filters: Mapping[str, Any] | None = None,
        session_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Committed facts by type, session and equality filters (``{"payload.role": "x"}``).

        :raises UsageError: a malformed filter key or a non-scalar value.
        """
        check_filters(filters)
        found = await self.storage.query(typename, filters or {}, session_id)
        return [as_dict(f) for f in found]

    async def history(self, fact_id: str) -> list[dict[str, Any]]:
        """Every committed version of the fact, oldest first (deletes included)."""
        return [as_dict(f) for f in await self.storage.history(fact_id)]

    async def search(
        self,
        query: str,
        k: int = 5,
        typename: str | None = None,
        filters: Mapping[str, Any] | None = None,
        session_id: str | None = None,
        *,
        limit: int | None = None,
        score_threshold: float | None = None,
    ) -> list[ScoredFact]:
        """Semantic search over the indexes; committed, current versions only (G3).

        Each hit is checked against the source of truth: a point is returned only when it
        embeds the fact's committed version (a staged point also needs the txid that
        committed it), so staged, aborted or stale points never surface, and no fact
        appears twice. That is also why an index's phase 2 may be deferred.
        """
        if not isinstance(query, str):
            raise UsageError(f"search(): query must be a str, got {type(query).__name__}")
        k = limit if limit is not None else k
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise UsageError(f"search(): k must be a positive int, got {k!r}")
        checked = check_filters(filters)
        hits: list[Hit] = []
        for index in self.indexes:
            where = _pushdown(index, typename, session_id, filters or {})
            vector = index.embedder.embed_query(query)
            hits += await index.search(vector, max(4 * k, 20), where)
        facts = await self.storage.get_many(sorted({hit.fact_id for hit in hits}))
        best: dict[str, float] = {}
        for hit in hits:  # only points of committed, current versions count (G3)
            fact = facts.get(hit.fact_id)
            if hit.is_current(fact) and hit.score > best.get(hit.fact_id, float("-inf")):
                best[hit.fact_id] = hit.score
        results = []
        for fact_id, score in sorted(best.items(), key=lambda item: -item[1]):
            fact = facts[fact_id]
            if typename is not None and fact.type != typename:
                continue
            if session_id is not None and fact.session_id != session_id:
                continue
            if not matches(fact, checked):
                continue
            if score_threshold is not None and score < score_threshold:
                continue
            results.append(ScoredFact(fact=as_dict(fact), score=score))
        return results[:k]

    # -- operations ---------------------------------------------------------------------

    async def recover(self) -> RecoveryReport:
        """Resolve every in-doubt transaction of these stores (one recovery pass)."""
        return await self.coordinator.recover()

    async def flush(self) -> None:
        """Finish the indexes' deferred phase-2 work now (``Policy.deferred_finish``): mark
        this process's committed points committed and remove the versions they replace.
        Searches do not need it; tools that read an index directly may."""
        await self.coordinator.flush()

    async def verify(self) -> VerifyReport:
        """Compare every mirror and index with the storage, fact by fact (this process's
        deferred index work is finished first)."""
        await self.coordinator.flush()
        facts = await self.storage.all_facts()
        drift = {}
        for mirror in self.mirrors:
            drift[mirror.name] = compare_copies(facts, await mirror.all_facts())
        for index in self.indexes:
            contents = await index.contents()
            drift[index.name] = compare(facts, contents, functools.partial(_held, index))
        staged = {s.name: await s.recover() for s in (self.storage, *self.mirrors)}
        return VerifyReport(len(facts), drift, staged)

    async def repair(self) -> VerifyReport:
        """Rebuild the mirrors and indexes from the storage where they differ, per fact.

        Recovery runs first (so nothing is left staged); then every missing or stale fact
        is written again at its committed version and every extra one removed, each as its
        own small commit on the derived store. The storage, the source of truth, is not
        changed.
        :returns: the drift that was repaired (run ``verify`` again to see it gone).
        """
        await self.recover()
        report = await self.verify()
        for mirror in self.mirrors:
            await self._repair_mirror(mirror, report.derived[mirror.name])
        for index in self.indexes:
            drift = report.derived[index.name]
            held = (await index.contents()).committed
            rebuild = [*drift.missing, *(fid for fid, _, _ in drift.stale)]
            facts = await self.storage.get_many(rebuild)
            for fact_id in rebuild:
                fact = facts.get(fact_id)
                text = None if fact is None else index.text_of(fact)
                if fact is None or text is None:
                    continue
                if held.get(fact_id, 0) > fact.version:  # a point newer than the truth
                    await self._apply(index, [DeleteFact(fact_id, held[fact_id])])
                vector = index.embedder.embed([text])[0]
                write = UpsertFact(fact, 0, embedding=tuple(vector))
                await self._apply(index, [write])
            for fact_id in drift.extra:
                await self._apply(index, [DeleteFact(fact_id, held[fact_id])])
        return report

    async def _repair_mirror(self, mirror: AsyncStorage, drift: Drift) -> None:
        rebuild = [*drift.missing, *(fid for fid, _, _ in drift.stale)]
        facts = await self.storage.get_many(rebuild)
        copies = await mirror.get_many([*rebuild, *drift.extra])
        for fact_id in rebuild:
            fact = facts.get(fact_id)
            copy = copies.get(fact_id)
            if fact is not None:
                expected = 0 if copy is None else copy.version
                await self._apply(mirror, [UpsertFact(fact, expected)])
        for fact_id in drift.extra:
            copy = copies.get(fact_id)
            if copy is not None:
                tombstone = replace(
                    copy, version=copy.version + 1, deleted=True, reason="repair: not in storage"
                )
                await self._apply(mirror, [DeleteFact(fact_id, copy.version, tombstone)])

    async def _apply(self, store: AsyncStorage | AsyncIndex, writes: list[Write]) -> None:
        """One small commit on one derived store (repair), outside the decision log."""
        txid = new_txid()
        if await store.prepare(txid, writes) is Vote.YES:
            await store.commit(txid)

    async def close(self) -> None:
        """Close the storage, the indexes and the log."""
        await self.coordinator.close()


def _whole(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser().absolute()


def _pushdown(
    index: AsyncIndex, typename: str | None, session_id: str | None, filters: Mapping[str, Any]
) -> dict[str, JSONValue]:
    """The equality conditions the index itself can apply (the rest are checked after)."""
    where: dict[str, JSONValue] = {}
    if typename is not None:
        where["type"] = typename
    if session_id is not None:
        where["session_id"] = session_id
    for key, value in filters.items():
        field = key.removeprefix("payload.")
        if (
            key.startswith("payload.")
            and field in index.metadata_fields
            and isinstance(value, str | int | bool)
        ):
            where[field] = value
    return where


def _storage(participant: object) -> AsyncStorage:
    if not isinstance(participant, AsyncStorage):
        raise ConfigurationError(f"{participant!r} cannot be the storage (the source of truth)")
    return participant


def _index(participant: object) -> AsyncIndex:
    if not isinstance(participant, AsyncIndex):
        raise ConfigurationError(f"{participant!r} is not a vector index")
    return participant


def _log(log: object) -> AsyncDecisionLog:
    return log  # type: ignore[return-value]  # open_decision_log's face follows ASYNC_API
