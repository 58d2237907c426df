"""The coordinator's driver: runs the core's effects against real participants and a log.

This module is the source; ``coordinator/_sync/coordinator.py`` is generated from it by
``tools/gen_sync.py``. Edit this one.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Collection, Generator, Iterable, Mapping, Sequence
from typing import TypeVar, cast

from coordinator import telemetry
from coordinator._acompat import (
    AsyncEffectRunner,
    acurrent_runner,
    agather,
    ainterrupts_held,
    asleep,
)
from coordinator._core.effects import (
    AbortAll,
    Backoff,
    BranchesResolved,
    CommitLastResource,
    CommitOnePhase,
    CommittedOnePhase,
    DecisionPersisted,
    DecisionsPersisted,
    DeferFinish,
    Effect,
    FinishAll,
    Finished,
    InDoubtListed,
    ListInDoubt,
    PersistDecision,
    PersistDecisions,
    PrepareAll,
    Prepared,
    ReadRecords,
    RecordEnd,
    RecordsRead,
    Reply,
    ResolveBranches,
    RollBackStaged,
)
from coordinator._core.protocol import commit_protocol
from coordinator._core.recovery import recovery_plan
from coordinator._runs import Runs
from coordinator.abc import (
    AsyncDecisionLog,
    AsyncParticipant,
    AsyncStagedCommit,
    AsyncSupportsBatchResolve,
    AsyncSupportsLastResource,
    AsyncSupportsOnePhase,
    AsyncSupportsStagedLastResource,
    Decision,
    Vote,
)
from coordinator.errors import LockstepError, UsageError
from coordinator.faults import FaultHook, no_faults
from coordinator.ids import check_participant_name, check_txid, new_txid
from coordinator.outcomes import Outcome, RecoveryReport
from coordinator.policy import Policy
from coordinator.records import DeleteFact, Execute, TransactionMeta, UpsertFact, Write

logger = logging.getLogger("coordinator")

T = TypeVar("T")
_BATCH = 2000  # branches per batched resolve call (each: one local transaction, one scroll)
#: Seconds between the warnings of a close still waiting for others' runs (a transaction
#: block is the caller's code, and may take its time).
CLOSE_NOTICE = 10.0


class AsyncCoordinator:
    """Commits writes atomically across participants, and recovers in-doubt branches.

    :param participants: the stores, each with a unique stable ``name``.
    :param log: the decision log (shared by every process that commits to these stores).
    :param policy: timeouts, retry bounds and optimisation switches.
    :param fault_hook: called at every named fault point (see :mod:`coordinator.faults`).
    :raises UsageError: on duplicate or invalid participant names.
    """

    def __init__(
        self,
        participants: Sequence[AsyncParticipant],
        log: AsyncDecisionLog,
        *,
        policy: Policy | None = None,
        fault_hook: FaultHook = no_faults,
    ) -> None:
        by_name: dict[str, AsyncParticipant] = {}
        for participant in participants:
            name = check_participant_name(participant.name)
            if name in by_name:
                raise UsageError(f"two participants are named {name!r}; names must be unique")
            by_name[name] = participant
        self._participants = by_name
        # Capabilities, asked once (isinstance on a runtime-checkable Protocol is slow).
        self._one_phase = {n for n, p in by_name.items() if isinstance(p, AsyncSupportsOnePhase)}
        self._last_resources = {
            n for n, p in by_name.items() if isinstance(p, AsyncSupportsLastResource)
        }
        self._stageable = {
            n for n, p in by_name.items() if isinstance(p, AsyncSupportsStagedLastResource)
        }
        self._inside = {n for n, p in by_name.items() if getattr(p, "in_process", False)}
        self._log = log
        self._policy = policy or Policy()
        self._fault = fault_hook
        # Phase-2 work queued by DeferFinish: (txid, participants, record END after).
        self._deferred: list[tuple[str, tuple[str, ...], bool]] = []
        self._deferred_since = 0.0
        self._deferred_lock = threading.Lock()  # guards the queue; never held across I/O
        self._runs = Runs(acurrent_runner)

    @property
    def participants(self) -> Mapping[str, AsyncParticipant]:
        """The participants by name."""
        return dict(self._participants)

    @property
    def log(self) -> AsyncDecisionLog:
        return self._log

    @property
    def policy(self) -> Policy:
        return self._policy

    async def commit(
        self,
        writes: Mapping[str, Sequence[Write]],
        *,
        txid: str | None = None,
        deferrable: Collection[str] = (),
    ) -> Outcome:
        """Apply ``writes`` (by participant name) in every participant or in none.

        :param txid: the transaction id to use (a fresh UUIDv7 when omitted).
        :param deferrable: participants whose phase 2 may be queued and done in a batch
            (with ``policy.deferred_finish``): only derived stores whose readers check
            what they read against the source of truth, as the memory API's indexes.
        :returns: the :class:`Outcome`; ``outcome.unfinished`` lists branches that
            recovery will finish.
        :raises UsageError: unknown participant, malformed writes or txid; nothing staged.
        :raises TransactionAborted: nothing was committed (``VoteRejected``,
            ``PrepareTimeout``, ``VersionConflict``).
        :raises TransactionInDoubt: the log failed at the decision; recovery settles it.
        """
        txid = new_txid() if txid is None else check_txid(txid)
        branches = self._branches(writes)
        names = tuple(sorted(branches))
        one_phase = self._policy.one_phase and len(names) == 1 and names[0] in self._one_phase
        last = self._policy.last_resource
        if last is not None and last not in self._last_resources:
            raise UsageError(
                f"Policy.last_resource={last!r} names no participant able to commit with the "
                f"decision (configured: {sorted(self._participants)})"
            )
        deferred = (
            tuple(name for name in names if name in deferrable)
            if self._policy.deferred_finish
            else ()
        )
        protocol = commit_protocol(
            txid,
            names,
            self._policy,
            one_phase=one_phase,
            last_resource=last,
            # Staging the last resource beside the others' prepares only pays when they
            # run concurrently.
            stage_last=(
                self._policy.stage_last_resource
                and self._policy.concurrent_prepare
                and last in self._stageable
            ),
            deferred=deferred,
        )
        staged = _Staged()
        with telemetry.transaction_span(txid, names) as span:
            try:
                outcome = await self._drive(
                    protocol, functools.partial(self._run_commit_effect, branches, staged)
                )
            except LockstepError as err:
                span.set_attribute(telemetry.ATTR_OUTCOME, type(err).__name__)
                telemetry.count_abort(type(err).__name__)
                raise
            finally:
                left = staged.take()
                if left is not None:
                    # Only a crash inside the protocol leaves it open: end it as the
                    # server would end a dead client's (nothing was committed).
                    await left.rollback()
            span.set_attribute(
                telemetry.ATTR_OUTCOME, "committed" if outcome.complete else "unfinished"
            )
        if outcome.unfinished:
            logger.warning(
                "transaction %s committed; branches %s not finished yet (recovery will): %s",
                txid,
                ", ".join(outcome.unfinished),
                "; ".join(f"{k}: {v!r}" for k, v in outcome.errors.items()),
            )
        return outcome

    async def recover(self) -> RecoveryReport:
        """Resolve every in-doubt branch of the configured participants (one pass).

        Safe to run while transactions are committing, and from several processes at
        once. Branches with no decision younger than ``policy.in_doubt_timeout`` are left
        for a later pass (``report.waiting``).
        """
        await self.flush()
        names = tuple(sorted(self._participants))
        with telemetry.recovery_span() as span:
            report = await self._drive(
                recovery_plan(names, self._policy), self._run_recovery_effect
            )
            span.set_attribute("lockstep.recovery.committed", len(report.committed))
            span.set_attribute("lockstep.recovery.aborted", len(report.aborted))
        telemetry.count_recovered("commit", len(report.committed))
        telemetry.count_recovered("abort", len(report.aborted))
        return report

    async def flush(self) -> None:
        """Finish the phase-2 work queued by deferred commits (``Outcome.deferred``) the
        way recovery resolves committed branches (a batch per participant, one by one
        where a batch fails), and record END for those transactions.

        Branches that fail stay prepared under their COMMIT decision and go back in the
        queue for the next batch; recovery also finishes them.
        """
        with self._runs.one(), ainterrupts_held():  # a Ctrl-C lands after the batch
            await self._flush()

    async def _flush(self) -> None:
        with self._deferred_lock:
            queued, self._deferred = self._deferred, []
        if not queued:
            return
        by_name: dict[str, list[str]] = {}
        for txid, names, _ in queued:
            for name in names:
                by_name.setdefault(name, []).append(txid)
        with telemetry.phase_span("commit_deferred", queued[0][0]):
            commit = {name: tuple(txids) for name, txids in by_name.items()}
            failed = (await self._resolve(commit, {})).failed
        if failed:
            logger.warning(
                "deferred commit of %d branches failed (retried with the next batch; "
                "recovery also finishes them): %r",
                len(failed),
                next(iter(failed.values())),
            )
        retry = [
            (txid, left, end)
            for txid, names, end in queued
            if (left := tuple(n for n in names if (n, txid) in failed))
        ]
        if retry:
            with self._deferred_lock:
                if not self._deferred:
                    self._deferred_since = time.monotonic()
                self._deferred[:0] = retry
        done = {txid for txid, _, _ in retry}
        ended = [txid for txid, _, end in queued if end and txid not in done]
        if ended:
            self._fault("before_end")
            await self._record_end(ended)

    def running(self) -> contextlib.AbstractContextManager[None]:
        """The caller's block as one run of this coordinator's (a memory-API transaction,
        from its first read to its commit): ``close()`` waits for it to end.

        :raises UsageError: the coordinator is closing or closed.
        """
        return self._runs.one()

    async def close(self) -> None:
        """Refuse new commits, recovery passes and batches, let those other threads or
        tasks have in progress end (a commit is never cut in two by a close), finish the
        deferred work, then close every participant and the log."""
        self._runs.close()
        notice = time.monotonic() + CLOSE_NOTICE
        while under_way := self._runs.others():
            if time.monotonic() >= notice:
                logger.warning(
                    "close is waiting for %d commit(s) or transaction(s) under way in other "
                    "threads or tasks",
                    under_way,
                )
                notice += CLOSE_NOTICE
            await asleep(0.002)
        try:
            with ainterrupts_held():
                await self._flush()
        except Exception:
            logger.warning("could not finish deferred work at close", exc_info=True)
        for participant in self._participants.values():
            await participant.close()
        await self._log.close()

    # -- validation -----------------------------------------------------------------

    def _branches(self, writes: Mapping[str, Sequence[Write]]) -> dict[str, tuple[Write, ...]]:
        if not isinstance(writes, Mapping):
            raise UsageError(
                f"writes must map participant names to lists of writes, got {type(writes)}"
            )
        unknown = sorted(str(name) for name in writes if name not in self._participants)
        if unknown:
            raise UsageError(
                f"unknown participant(s) {unknown}; configured: {sorted(self._participants)}"
            )
        branches: dict[str, tuple[Write, ...]] = {}
        for name, items in writes.items():
            if isinstance(items, str | bytes) or not isinstance(items, Sequence):
                raise UsageError(f"writes[{name!r}] must be a list of writes, got {type(items)}")
            seen: set[str] = set()
            for i, write in enumerate(items):
                if not isinstance(write, UpsertFact | DeleteFact | TransactionMeta | Execute):
                    raise UsageError(
                        f"writes[{name!r}][{i}] is a {type(write).__name__}; expected "
                        "UpsertFact, DeleteFact, TransactionMeta or Execute"
                    )
                if isinstance(write, UpsertFact | DeleteFact):
                    if write.fact_id in seen:
                        raise UsageError(
                            f"writes[{name!r}] changes fact {write.fact_id!r} twice; "
                            "merge the changes into one write"
                        )
                    seen.add(write.fact_id)
            if items:
                branches[name] = tuple(items)
        return branches

    # -- effects -------------------------------------------------------------------------

    async def _drive(self, protocol: Generator[Effect, Reply, T], run: AsyncEffectRunner) -> T:
        reply: Reply = None
        try:
            # A Ctrl-C lands after the run, not inside a store's call; a close, after it too.
            with self._runs.one(), ainterrupts_held():
                while True:
                    effect = protocol.send(reply)
                    reply = await run(effect)
        except StopIteration as stop:
            result: T = stop.value
            return result

    async def _run_commit_effect(
        self, branches: Mapping[str, tuple[Write, ...]], staged: _Staged, effect: Effect
    ) -> Reply:
        match effect:
            case PrepareAll(txid, names, stage):
                calls = [functools.partial(self._prepare, txid, n, branches[n]) for n in names]
                if stage is not None:
                    calls.append(
                        functools.partial(
                            self._stage_last, txid, stage, branches[stage], (*names, stage), staged
                        )
                    )
                    names = (*names, stage)
                with telemetry.phase_span("prepare", txid):
                    votes = await agather(
                        calls,
                        timeout=self._policy.prepare_timeout,
                        concurrent=self._policy.concurrent_prepare,
                        inline=self._in_process(names),
                    )
                return Prepared(dict(zip(names, votes, strict=True)))
            case RollBackStaged():
                handle = staged.take()
                if handle is not None:
                    await handle.rollback()
                return None
            case CommitOnePhase(txid, name):
                with telemetry.phase_span("commit_one_phase", txid):
                    self._fault(f"before_one_phase:{name}")
                    try:
                        one = cast(AsyncSupportsOnePhase, self._participants[name])
                        await one.commit_one_phase(txid, branches[name])
                    except Exception as exc:
                        return CommittedOnePhase(exc)
                    self._fault(f"after_one_phase:{name}")
                return CommittedOnePhase()
            case CommitLastResource(txid, name, names):
                with telemetry.phase_span("commit_last_resource", txid):
                    self._fault("before_decision")
                    try:
                        handle = staged.take()
                        if handle is not None:
                            await handle.commit(names)
                        else:
                            last = cast(AsyncSupportsLastResource, self._participants[name])
                            await last.commit_with_decision(txid, branches[name], names)
                    except Exception as exc:
                        return CommittedOnePhase(exc)
                    self._fault("after_decision")
                return CommittedOnePhase()
            case PersistDecision(txid, decision, names):
                with telemetry.phase_span("decide", txid):
                    self._fault("before_decision")
                    try:
                        won = await self._log.decide(txid, decision, names)
                    except Exception as exc:
                        return DecisionPersisted(None, exc)
                    self._fault("after_decision")
                return DecisionPersisted(won)
            case FinishAll(txid, names) | AbortAll(txid, names):
                return await self._finish(effect, txid, names)
            case Backoff(seconds):
                await asleep(seconds)
                return None
            case RecordEnd(txids):
                self._fault("before_end")
                await self._record_end(txids)
                return None
            case DeferFinish(txid, names, end):
                if self._queue_deferred(txid, names, end):
                    await self.flush()
                return None
        raise AssertionError(f"the commit protocol yielded an unexpected effect: {effect!r}")

    def _queue_deferred(self, txid: str, names: tuple[str, ...], end: bool) -> bool:
        """Queue a deferred finish; True when the queue is due for its batch."""
        now = time.monotonic()
        with self._deferred_lock:
            if not self._deferred:
                self._deferred_since = now
            self._deferred.append((txid, names, end))
            return (
                len(self._deferred) >= self._policy.deferred_batch
                or now - self._deferred_since >= self._policy.deferred_max_age
            )

    async def _stage_last(
        self,
        txid: str,
        name: str,
        writes: Sequence[Write],
        names: tuple[str, ...],
        staged: _Staged,
    ) -> Vote:
        with telemetry.participant_span("stage", name):
            self._fault(f"before_stage:{name}")
            participant = cast(AsyncSupportsStagedLastResource, self._participants[name])
            handle = await participant.stage_with_decision(txid, writes, names)
        if not staged.put(handle):
            # The commit moved on without it (its prepare timeout): nothing may stay open.
            await handle.rollback()
            raise TimeoutError(f"{name} was staged after the transaction gave up on it")
        self._fault(f"after_stage:{name}")
        return Vote.YES

    async def _prepare(self, txid: str, name: str, writes: Sequence[Write]) -> Vote:
        with telemetry.participant_span("prepare", name):
            self._fault(f"before_prepare:{name}")
            vote = await self._participants[name].prepare(txid, writes)
            self._fault(f"after_prepare:{name}")
        if not isinstance(vote, Vote):
            raise UsageError(f"participant {name!r} returned {vote!r} from prepare, not a Vote")
        return vote

    def _in_process(self, names: Iterable[str]) -> bool:
        """Whether every participant named runs inside this process (``in_process``: no
        server to stop answering), so the sync twin may call them on its own thread."""
        return self._inside.issuperset(names)

    async def _finish(
        self, effect: FinishAll | AbortAll, txid: str, names: tuple[str, ...]
    ) -> Finished:
        phase = "commit" if isinstance(effect, FinishAll) else "abort"
        with telemetry.phase_span(phase, txid):
            results = await agather(
                [functools.partial(self._finish_one, phase, txid, n) for n in names],
                timeout=self._policy.prepare_timeout,
                concurrent=self._policy.concurrent_prepare,
                inline=self._in_process(names),
            )
        return Finished(
            {n: r for n, r in zip(names, results, strict=True) if isinstance(r, Exception)}
        )

    async def _finish_one(self, phase: str, txid: str, name: str) -> None:
        participant = self._participants[name]
        with telemetry.participant_span(phase, name):
            self._fault(f"before_{phase}:{name}")
            if phase == "commit":
                await participant.commit(txid)
            else:
                await participant.abort(txid)
            self._fault(f"after_{phase}:{name}")

    async def _record_end(self, txids: Sequence[str]) -> None:
        try:
            await self._log.end(txids)
        except Exception:
            # END is an optimisation: without it recovery re-drives an idempotent commit.
            logger.warning("could not record END for %s", txids, exc_info=True)

    async def _run_recovery_effect(self, effect: Effect) -> Reply:
        match effect:
            case ListInDoubt(names):
                # Read the clock before listing, so a branch prepared meanwhile looks
                # younger rather than older than it is.
                now = time.time()
                listed = await agather(
                    [self._participants[n].recover for n in names],
                    timeout=self._policy.prepare_timeout,
                    concurrent=self._policy.concurrent_prepare,
                    inline=self._in_process(names),
                )
                self._fault("recovery_after_list")
                return InDoubtListed(
                    now,
                    {
                        n: tuple(r)
                        for n, r in zip(names, listed, strict=True)
                        if isinstance(r, list)
                    },
                    {n: r for n, r in zip(names, listed, strict=True) if isinstance(r, Exception)},
                )
            case ReadRecords(txids):
                records = await self._log.records(txids)
                unended = await self._log.unended()
                return RecordsRead(records, tuple(unended))
            case PersistDecisions(decisions):
                won = await self._log.decide_many(decisions)
                self._fault("recovery_after_decide")
                return DecisionsPersisted(won)
            case ResolveBranches(commit, abort):
                return await self._resolve(commit, abort)
            case RecordEnd(txids):
                await self._record_end(txids)
                return None
        raise AssertionError(f"the recovery plan yielded an unexpected effect: {effect!r}")

    async def _resolve(
        self, commit: Mapping[str, tuple[str, ...]], abort: Mapping[str, tuple[str, ...]]
    ) -> BranchesResolved:
        commit = await self._resolve_batches(commit, Decision.COMMIT)
        abort = await self._resolve_batches(abort, Decision.ABORT)
        work = [(n, t, Decision.COMMIT) for n, ts in commit.items() for t in ts]
        work += [(n, t, Decision.ABORT) for n, ts in abort.items() for t in ts]
        failed: dict[tuple[str, str], BaseException] = {}
        step = self._policy.recovery_concurrency
        for start in range(0, len(work), step):
            chunk = work[start : start + step]
            results = await agather(
                [functools.partial(self._resolve_one, *item) for item in chunk],
                timeout=self._policy.prepare_timeout,
                inline=self._in_process(name for name, _, _ in chunk),
            )
            for (name, txid, _), result in zip(chunk, results, strict=True):
                if isinstance(result, Exception):
                    failed[(name, txid)] = result
        return BranchesResolved(failed)

    async def _resolve_batches(
        self, branches: Mapping[str, tuple[str, ...]], decision: Decision
    ) -> dict[str, tuple[str, ...]]:
        """Resolve the branches of participants that take batches, a chunk per call;
        returns what is left to resolve one by one (other participants, failed chunks)."""
        left: dict[str, tuple[str, ...]] = {}
        for name, txids in branches.items():
            if len(txids) < 2 or not isinstance(
                self._participants[name], AsyncSupportsBatchResolve
            ):
                left[name] = txids
                continue
            chunks = [txids[i : i + _BATCH] for i in range(0, len(txids), _BATCH)]
            for chunk in chunks:
                # A budget that grows with the chunk; a chunk that fails or runs out of it
                # is resolved branch by branch (every call is idempotent).
                (result,) = await agather(
                    [functools.partial(self._resolve_chunk, name, chunk, decision)],
                    timeout=self._policy.prepare_timeout + 0.01 * len(chunk),
                    inline=self._in_process([name]),
                )
                if isinstance(result, Exception):
                    logger.warning("batch %s on %s failed (%s); one by one", decision, name, result)
                    left[name] = (*left.get(name, ()), *chunk)
        return left

    async def _resolve_chunk(self, name: str, txids: Sequence[str], decision: Decision) -> None:
        participant = self._participants[name]
        assert isinstance(participant, AsyncSupportsBatchResolve)
        self._fault(f"recovery_before_resolve:{name}")
        if decision is Decision.COMMIT:
            await participant.commit_many(txids)
        else:
            await participant.abort_many(txids)
        self._fault(f"recovery_after_resolve:{name}")

    async def _resolve_one(self, name: str, txid: str, decision: Decision) -> None:
        participant = self._participants[name]
        self._fault(f"recovery_before_resolve:{name}")
        if decision is Decision.COMMIT:
            await participant.commit(txid)
        else:
            await participant.abort(txid)
        self._fault(f"recovery_after_resolve:{name}")


class _Staged:
    """One commit's staged last-resource transaction, handed from staging (possibly on
    another thread, possibly after the commit gave up waiting) to whoever ends it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handle: AsyncStagedCommit | None = None
        self._closed = False

    def put(self, handle: AsyncStagedCommit) -> bool:
        """Keep ``handle``; False if the commit has moved on (the caller must end it)."""
        with self._lock:
            if self._closed:
                return False
            self._handle = handle
            return True

    def take(self) -> AsyncStagedCommit | None:
        """The staged handle, if any, for the caller to end; later ``put``s are refused."""
        with self._lock:
            self._closed = True
            handle, self._handle = self._handle, None
            return handle
