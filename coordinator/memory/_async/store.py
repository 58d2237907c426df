"""The agent-facing memory API on the engine (source of the generated sync twin).

Every write, rollback and session operation is one atomic transaction across the storage
(the source of truth) and every index: it lands everywhere or nowhere.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
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
    indexed_text,
)
from coordinator.errors import ConfigurationError, UsageError
from coordinator.faults import FaultHook, no_faults
from coordinator.filters import check_filters, matches
from coordinator.ids import new_txid
from coordinator.log import AsyncMemoryDecisionLog
from coordinator.memory._async.transaction import (
    AsyncMemoryTransaction,
    embed,
    embed_query,
    index_holds,
)
from coordinator.memory._embedded import engine_for
from coordinator.memory._model import (
    Constraint,
    Fact,
    SchemaRegistry,
    ScoredFact,
    as_dict,
    check_text,
)
from coordinator.memory._verify import Drift, VerifyReport, compare, compare_copies
from coordinator.outcomes import RecoveryReport
from coordinator.plugins import open_decision_log, open_participant
from coordinator.policy import Policy
from coordinator.records import DeleteFact, FactRecord, JSONValue, UpsertFact, Write
from coordinator.settings import DEFAULT_PATH, ENGINES, FACTS_FILE, LockstepSettings

logger = logging.getLogger("coordinator")

MOST_CANDIDATES = 10_000
"""The furthest ``search`` looks in one index for facts that pass its filters."""


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
        self._closed = False  # refusing new work (a close has begun)
        self._shut = False  # the stores are closed
        self._pid = os.getpid()  # the process whose connections, locks and threads these are
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
        index: str | None = None,
    ) -> AsyncMemoryStore:
        """The embedded default in directory ``path``: SQLite facts with the decision log in
        the same file (the storage commits last, with the decision), a Qdrant vector index
        in the process, the offline semantic embedder. Recovery runs first.

        ``index`` picks the vector engine: ``"qdrant+local"`` (Qdrant's local mode, the
        default) or ``"qdrant+edge"`` (Qdrant Edge, the ``qdrant-edge`` extra: faster
        searches, points kept on disk rather than in the process). A directory keeps the
        engine it was made with: without ``index`` the one it holds is used, and naming
        the other is refused (see :mod:`coordinator.memory._embedded`).

        Both engines lock their files to one process, so no other coordinator can be
        half-way through a commit on these files: every in-doubt branch left by an earlier
        process is resolved at once, without waiting out the in-doubt timeout.
        """
        directory = await ablocking(_whole, path)  # the URLs below name it from the root
        engine = await ablocking(engine_for, directory, index)
        await ablocking(directory.mkdir, parents=True, exist_ok=True)
        # The index first: it locks its files to one client, so a second process stops
        # here, before it has opened anything else.
        vectors = _index(
            open_participant(
                f"{engine}:///{directory / ENGINES[engine]}?collection=memories",
                name="vectors",
                asynchronous=ASYNC_API,
                embedder=embedder,
            )
        )
        try:
            if engine == "qdrant+edge":
                # Edge takes its lock when it first loads the collection's shard (local
                # mode's client took it above): load it now, making it if new.
                await vectors.recover()
            storage = _storage(
                open_participant(
                    f"sqlite:///{directory / FACTS_FILE}", name="facts", asynchronous=ASYNC_API
                )
            )
        except BaseException:
            await vectors.close()
            raise
        # Without a log the storage keeps its decisions in facts.db and commits last with
        # them; a decisions.db left by an earlier version (facts.db holding no log of its
        # own) stays in use.
        log = None
        beside = directory / "decisions.db"
        has_own_log = getattr(storage, "has_decision_table", lambda: False)
        if await ablocking(beside.exists) and not await ablocking(has_own_log):
            log = _log(open_decision_log(f"sqlite:///{beside}", asynchronous=ASYNC_API))
        store = cls(storage, [vectors], log=log, policy=policy, fault_hook=fault_hook)
        return await _recovered(
            store, store.coordinator_with(in_doubt_timeout=0.001, redrive_after=0.0)
        )

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
                settings.path or DEFAULT_PATH,
                embedder=embedder,
                policy=settings.policy(),
                index=settings.embedded_index,
            )
        if settings.path is not None:
            raise ConfigurationError(
                f"settings name both `path` ({settings.path}, the embedded default's "
                "directory) and `storage`, which would leave `path` unused; name one of them"
            )
        if settings.embedded_index is not None:
            raise ConfigurationError(
                "settings name a storage and embedded_index, which picks the embedded "
                "default's engine (with `path`); name a storage's indexes by URL in `indexes`"
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
        return await _recovered(store, store.coordinator)

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
        self.check_open()
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
        """Make the session's facts (those ``selector`` accepts) permanent: session cleared.

        :raises UsageError: ``session_id`` is not a non-empty str (``None`` would name every
            fact in the store).
        """
        self.check_open()
        check_text("promote_session(): session_id", session_id, required=True)
        with self.coordinator.running():  # a close waits for the read as for the commit
            facts = await self.storage.query(None, {}, session_id)
            promoted: list[str] = []
            # Not self.transaction(): begun before a close, this one is under way.
            async with AsyncMemoryTransaction(self, session_id, actor, reason) as tx:
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
        """Delete every fact of the session from every store, vectors included.

        :raises UsageError: ``session_id`` is not a non-empty str (``None`` would name every
            fact in the store).
        """
        self.check_open()
        check_text("discard_session(): session_id", session_id, required=True)
        with self.coordinator.running():  # a close waits for the read as for the commit
            facts = await self.storage.query(None, {}, session_id)
            # Not self.transaction(): begun before a close, this one is under way.
            async with AsyncMemoryTransaction(self, session_id, actor, reason) as tx:
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
        check_text("rollback(): session_id", session_id)
        self.check_open()
        with self.coordinator.running():  # a close waits for the reads as for the commit
            return await self._rollback(steps, session_id, actor, reason)

    async def _rollback(
        self, steps: int, session_id: str | None, actor: str | None, reason: str | None
    ) -> list[str]:
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
        check_text("get(): fact_id", fact_id, required=True)
        self.check_open()
        try:
            fact = await self.storage.get(fact_id)
        except Exception as exc:
            self._read_failed("get()", exc)
            raise
        return None if fact is None else as_dict(fact)

    async def get_many(self, fact_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The committed state of those of ``fact_ids`` that exist, by id (one read)."""
        ids = list(dict.fromkeys(fact_ids))
        for fact_id in ids:
            check_text("get_many(): fact_id", fact_id, required=True)
        self.check_open()
        try:
            found = await self.storage.get_many(ids)
        except Exception as exc:
            self._read_failed("get_many()", exc)
            raise
        return {fact_id: as_dict(found[fact_id]) for fact_id in ids if fact_id in found}

    async def query(
        self,
        typename: str | None = None,
        filters: Mapping[str, Any] | None = None,
        session_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Committed facts by type, session and equality filters (``{"payload.role": "x"}``).

        :raises UsageError: a malformed filter key or a non-scalar value.
        """
        check_text("query(): typename", typename)
        check_text("query(): session_id", session_id)
        check_filters(filters)
        self.check_open()
        try:
            found = await self.storage.query(typename, filters or {}, session_id)
        except Exception as exc:
            self._read_failed("query()", exc)
            raise
        return [as_dict(f) for f in found]

    async def history(self, fact_id: str) -> list[dict[str, Any]]:
        """Every committed version of the fact, oldest first (deletes included)."""
        check_text("history(): fact_id", fact_id, required=True)
        self.check_open()
        try:
            found = await self.storage.history(fact_id)
        except Exception as exc:
            self._read_failed("history()", exc)
            raise
        return [as_dict(f) for f in found]

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

        Filters go to the index where it holds the field (``metadata_fields``); the others
        are checked on the facts. When the nearest points do not give ``k`` facts that pass,
        search looks further, up to :data:`MOST_CANDIDATES` points an index.
        """
        if not isinstance(query, str):
            raise UsageError(f"search(): query must be a str, got {type(query).__name__}")
        check_text("search(): query", query)  # a model would fail on a lone surrogate
        if limit is not None and k not in (5, limit):  # 5: k's default, so k was not given
            raise UsageError(f"search(): k={k!r} and limit={limit!r} disagree; limit is k's alias")
        k = limit if limit is not None else k
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise UsageError(f"search(): k must be a positive int, got {k!r}")
        if score_threshold is not None and (
            isinstance(score_threshold, bool)
            or not isinstance(score_threshold, int | float)
            or not math.isfinite(score_threshold)
        ):
            raise UsageError(
                "search(): score_threshold must be a finite number (a similarity, higher is "
                f"closer) or None, got {score_threshold!r}"
            )
        checked = check_filters(filters)
        self.check_open()
        try:
            return await self._search(
                query, k, typename, filters or {}, checked, session_id, score_threshold
            )
        except Exception as exc:
            self._read_failed("search()", exc)
            raise

    async def _search(
        self,
        query: str,
        k: int,
        typename: str | None,
        filters: Mapping[str, Any],
        checked: dict[tuple[str, ...], JSONValue],
        session_id: str | None,
        score_threshold: float | None,
    ) -> list[ScoredFact]:
        """:meth:`search` once its arguments are checked."""
        # Indexes sharing an embedder (the default one is shared) share the query's vector.
        vectors: dict[int, list[float]] = {}
        for index in self.indexes:
            if id(index.embedder) not in vectors:
                vectors[id(index.embedder)] = await embed_query(index.embedder, query)
        looks = [
            (
                index,
                vectors[id(index.embedder)],
                _pushdown(index, typename, session_id, filters),
            )
            for index in self.indexes
        ]
        # The nearest points may all be stale versions or fail a filter the index could not
        # apply: look further (four times as far each time) until k facts are found, every
        # fact the filters match is, or the indexes have nothing nearer to give.
        want = max(4 * k, 20)
        matching: int | None = None
        facts: dict[str, FactRecord | None] = {}  # read once, whatever the rounds
        while True:
            hits: list[Hit] = []
            further = False
            for index, vector, where in looks:
                found = await index.search(vector, want, where)
                hits += found
                further |= len(found) >= want and (
                    score_threshold is None or found[-1].score >= score_threshold
                )
            unread = sorted({hit.fact_id for hit in hits} - facts.keys())
            found_facts = await self.storage.get_many(unread)
            facts.update({fact_id: found_facts.get(fact_id) for fact_id in unread})
            results = _ranked(hits, facts, typename, session_id, checked, score_threshold)
            if len(results) >= k or not further or want >= MOST_CANDIDATES:
                return results[:k]
            if matching is None:
                matching = len(await self.storage.query(typename, filters, session_id))
            if len(results) >= matching:
                return results
            want *= 4

    # -- operations ---------------------------------------------------------------------

    async def recover(self) -> RecoveryReport:
        """Resolve every in-doubt transaction of these stores (one recovery pass)."""
        self.check_open()
        return await self.coordinator.recover()

    async def flush(self) -> None:
        """Finish the indexes' deferred phase-2 work now (``Policy.deferred_finish``): mark
        this process's committed points committed and remove the versions they replace.
        Searches do not need it; tools that read an index directly may."""
        self.check_open()
        await self.coordinator.flush()

    async def verify(self) -> VerifyReport:
        """Compare every mirror and index with the storage, fact by fact (this process's
        deferred index work is finished first). A close waits for it."""
        self.check_open()
        with self.coordinator.running():
            return await self._verify()

    async def _verify(self) -> VerifyReport:
        await self.coordinator.flush()
        facts = await self.storage.all_facts()
        drift = {}
        for mirror in self.mirrors:
            drift[mirror.name] = compare_copies(facts, await mirror.all_facts())
        for index in self.indexes:
            contents = await index.contents()
            holds = functools.partial(index_holds, index)
            drift[index.name] = compare(facts, contents, holds, index.metadata_fields)
        staged = {s.name: await s.recover() for s in (self.storage, *self.mirrors)}
        return VerifyReport(len(facts), drift, staged)

    async def repair(self) -> VerifyReport:
        """Rebuild the mirrors and indexes from the storage where they differ, per fact.

        Recovery runs first (so nothing is left staged); then every missing or stale fact
        is written again at its committed version and every extra one removed, each as its
        own small commit on the derived store. The storage, the source of truth, is not
        changed.
        :returns: the drift that was repaired (run ``verify`` again to see it gone).
        A close waits for it.
        """
        self.check_open()
        with self.coordinator.running():
            return await self._repair()

    async def _repair(self) -> VerifyReport:
        await self.coordinator.recover()
        report = await self._verify()
        for mirror in self.mirrors:
            await self._repair_mirror(mirror, report.derived[mirror.name])
        for index in self.indexes:
            drift = report.derived[index.name]
            held = (await index.contents()).committed
            rebuild = [*drift.missing, *(fid for fid, _, _ in drift.stale)]
            facts = await self.storage.get_many(rebuild)
            for fact_id in rebuild:
                fact = facts.get(fact_id)
                text = None if fact is None else indexed_text(index, fact)
                if fact is None or text is None:
                    continue
                if held.get(fact_id, 0) >= fact.version:
                    # A point newer than the truth, or at its version but written with
                    # other metadata fields: removed first, then written again.
                    await self._apply(index, [DeleteFact(fact_id, held[fact_id])])
                [vector] = await embed(index.embedder, [text])
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
        """Close the storage, the indexes and the log (once; closing again does nothing).
        The store cannot be used afterwards: open it again. Commits other threads or
        tasks have under way finish first; those not yet started are refused.

        In a process forked from the one that opened it, only this object is closed: the
        connections and locks are the parent's, and closing them here would end them for
        the parent too (a Postgres client says goodbye to the server, a Qdrant local-mode
        client unlocks the directory the parent holds)."""
        if self._closed:
            return
        self._closed = True
        if os.getpid() == self._pid:
            await self.coordinator.close()
        self._shut = True

    def check_open(self, *, under_way: bool = False) -> None:
        """:raises UsageError: the store was closed, or this is a process forked from the
        one that opened it (a ``multiprocessing`` worker, say), which cannot share its
        connections, file locks and worker threads. With ``under_way`` (a transaction
        begun before a close, which waits for it), only once the stores are closed."""
        if self._closed and (not under_way or self._shut):
            raise UsageError("this memory store is closed; open the stores again to use them")
        if os.getpid() != self._pid:
            raise UsageError(
                f"this memory store was opened in process {self._pid}, and process "
                f"{os.getpid()} is a fork of it: its connections, file locks and threads "
                "cannot be shared with a child; open the stores again in this process"
            )

    def _read_failed(self, what: str, exc: Exception) -> None:
        """A lone read failed: if a close (from another thread or task) shut the stores
        under it, say so instead of passing on the store's own complaint ("Cannot operate
        on a closed database"). A lone read does not hold a close up as a transaction does:
        that would cost every read (4 µs on a 22 µs ``get``)."""
        if self._closed:
            raise UsageError(
                f"{what}: this memory store was closed while the read ran; open the stores "
                "again to use them"
            ) from exc

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def _recovered(store: AsyncMemoryStore, coordinator: AsyncCoordinator) -> AsyncMemoryStore:
    """``store`` after the recovery pass ``coordinator`` runs on opening it; closed, with
    the error raised, when one of its stores cannot work as configured (an index's
    collection name or dimension, found as the pass lists its branches): better at once
    than as every commit's refusal. What else the pass could not settle (a store out of
    reach, a decision naming a store no longer configured) is logged; a later pass
    retries it."""
    try:
        report = await coordinator.recover()
        for participant in store.participants:
            error = report.failed.get(participant.name)
            if isinstance(error, ConfigurationError):
                raise error
        if report.failed:
            logger.warning(
                "recovery on open left %d unsettled: %s",
                len(report.failed),
                "; ".join(f"{key}: {error}" for key, error in sorted(report.failed.items())),
            )
    except BaseException:
        await store.close()
        raise
    return store


def _whole(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser().absolute()


def _ranked(
    hits: list[Hit],
    facts: Mapping[str, FactRecord | None],
    typename: str | None,
    session_id: str | None,
    checked: Mapping[tuple[str, ...], JSONValue],
    score_threshold: float | None,
) -> list[ScoredFact]:
    """The facts ``hits`` embed in their committed, current versions (G3) that pass the
    filters, best first, each once."""
    best: dict[str, float] = {}
    for hit in hits:  # only points of committed, current versions count (G3)
        fact = facts.get(hit.fact_id)
        if hit.is_current(fact) and hit.score > best.get(hit.fact_id, float("-inf")):
            best[hit.fact_id] = hit.score
    results = []
    for fact_id, score in sorted(best.items(), key=lambda item: -item[1]):
        fact = facts[fact_id]
        assert fact is not None  # is_current
        if typename is not None and fact.type != typename:
            continue
        if session_id is not None and fact.session_id != session_id:
            continue
        if not matches(fact, checked):
            continue
        if score_threshold is not None and score < score_threshold:
            continue
        results.append(ScoredFact(fact=as_dict(fact), score=score))
    return results


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
            and value is not None  # a scalar: check_filters saw to it
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
