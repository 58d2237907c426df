"""The two-phase commit protocol as a generator of effects (presumed abort).

Rules (each serves a guarantee of docs/engine.md; tests check every one of them at every yield):

Rule 1. No participant is told to commit before the COMMIT decision is durable in the
        log. The COMMIT insert is the commit point.
Rule 2. Deciding is insert-if-absent and the first decision wins. A coordinator whose
        COMMIT insert finds ABORT (recovery fenced it) aborts and raises.
Rule 3. Presumed abort: aborting needs no log record. Any refusal, error or timeout in
        phase 1 aborts every participant, including the ones that voted yes.
Rule 4. After the COMMIT decision nothing undoes it. Phase 2 is retried within a bound;
        branches still unfinished are reported in the Outcome, never raised as an error.
Rule 5. The END record is written lazily, only once every branch acknowledged.
Rule 6. One participant with a one-phase capability commits in one local step and needs
        no log record; read-only participants leave after phase 1.
Rule 7. Last resource: when one participant holds the decision log in its own database,
        it commits its writes and the COMMIT record in one local transaction, which is the
        commit point, once every other participant voted yes. It may stage that
        transaction (written, left open) while the others prepare; a staged transaction
        is rolled back before the others are aborted. If the commit's fate is unknown
        (connection lost), nothing is aborted: the log will say.
Rule 8. Deferred finishing: phase 2 of the participants the caller names as deferrable
        (derived indexes whose readers check every hit against the source of truth) is
        not done inside the transaction. The other branches are finished first; then
        the deferred ones are queued for a batch, which records END (Rule 5 still holds).
"""

from __future__ import annotations

from collections.abc import Generator, Mapping

from coordinator._core.effects import (
    AbortAll,
    Backoff,
    CommitLastResource,
    CommitOnePhase,
    CommittedOnePhase,
    DecisionPersisted,
    DeferFinish,
    Effect,
    FinishAll,
    Finished,
    PersistDecision,
    PrepareAll,
    Prepared,
    RecordEnd,
    Reply,
    RollBackStaged,
)
from coordinator.abc import Decision, Vote
from coordinator.errors import (
    LockstepError,
    PrepareTimeout,
    TransactionAborted,
    TransactionInDoubt,
    UsageError,
    ValidationFailed,
    VersionConflict,
    VoteRejected,
)
from coordinator.outcomes import Outcome
from coordinator.policy import Policy

CommitProtocol = Generator[Effect, Reply, Outcome]


def commit_protocol(
    txid: str,
    participants: tuple[str, ...],
    policy: Policy,
    *,
    one_phase: bool = False,
    last_resource: str | None = None,
    stage_last: bool = False,
    deferred: tuple[str, ...] = (),
) -> CommitProtocol:
    """Run one transaction over ``participants`` (names, already validated).

    :param one_phase: the single participant supports one-phase commit and the policy
        allows it.
    :param last_resource: a participant (among ``participants``) to commit last together
        with the decision record (Rule 7).
    :param stage_last: stage the last resource's transaction while the others prepare.
    :param deferred: participants whose phase 2 may be queued for a batch (Rule 8).
    :returns: the :class:`Outcome` once the transaction committed.
    :raises TransactionAborted: (or a subclass) when nothing was committed.
    :raises TransactionInDoubt: when the log failed while recording the decision.
    """
    if not participants:
        return Outcome(txid, Decision.COMMIT, ())

    if one_phase and len(participants) == 1:
        reply = yield CommitOnePhase(txid, participants[0])
        assert isinstance(reply, CommittedOnePhase)
        if reply.error is not None:
            raise _one_phase_error(txid, participants[0], reply.error)
        return Outcome(txid, Decision.COMMIT, participants, one_phase=True)

    if last_resource is not None and last_resource in participants:
        return (
            yield from _with_last_resource(
                txid, participants, last_resource, policy, deferred, stage_last
            )
        )

    reply = yield PrepareAll(txid, participants)
    assert isinstance(reply, Prepared)
    refusals = {
        name: vote
        for name in participants
        if isinstance(vote := reply.votes.get(name, TimeoutError("no vote")), BaseException)
    }
    if refusals:
        # Rule 3: abort everywhere, also where the prepare may still land later
        # (a timed-out call); recovery removes a late arrival after the timeout.
        yield AbortAll(txid, participants)
        raise _refusal_error(txid, participants, refusals)

    voters = tuple(name for name in participants if reply.votes[name] is Vote.YES)
    read_only = tuple(name for name in participants if reply.votes[name] is Vote.READ_ONLY)
    if not voters:
        return Outcome(txid, Decision.COMMIT, participants, read_only=read_only)

    # Rule 1: the durable COMMIT record is the commit point.
    decided = yield PersistDecision(txid, Decision.COMMIT, voters)
    assert isinstance(decided, DecisionPersisted)
    if decided.error is not None:
        raise TransactionInDoubt(
            "the decision log failed while recording COMMIT; recovery will settle the transaction",
            txid=txid,
        ) from decided.error
    if decided.decision is not Decision.COMMIT:
        # Rule 2: recovery decided first (we were slower than the in-doubt timeout).
        yield AbortAll(txid, voters)
        raise TransactionAborted(
            "recovery aborted this transaction before its COMMIT was recorded "
            "(prepare took longer than the in-doubt timeout)",
            txid=txid,
        )

    return (yield from _finish(txid, participants, voters, read_only, policy, deferred))


def _finish(
    txid: str,
    participants: tuple[str, ...],
    voters: tuple[str, ...],
    read_only: tuple[str, ...],
    policy: Policy,
    deferrable: tuple[str, ...],
) -> CommitProtocol:
    """Phase 2 after a COMMIT decision: retried within the bound, never undone (Rule 4);
    deferrable branches are queued once the others are done (Rule 8)."""
    deferred = tuple(name for name in voters if name in deferrable)
    unfinished: tuple[str, ...] = tuple(name for name in voters if name not in deferred)
    errors: Mapping[str, BaseException] = {}
    for attempt in range(1, policy.finish_attempts + 1):
        if not unfinished:
            break
        finished = yield FinishAll(txid, unfinished)
        assert isinstance(finished, Finished)
        errors = finished.failed
        unfinished = tuple(name for name in unfinished if name in errors)
        if not unfinished:
            break
        if attempt < policy.finish_attempts:
            yield Backoff(policy.backoff(attempt))

    if deferred:
        yield DeferFinish(txid, deferred, end=not unfinished)
    elif not unfinished:
        yield RecordEnd((txid,))  # Rule 5
    return Outcome(
        txid,
        Decision.COMMIT,
        participants,
        unfinished=unfinished,
        read_only=read_only,
        errors=dict(errors),
        deferred=deferred,
    )


def _with_last_resource(
    txid: str,
    participants: tuple[str, ...],
    last: str,
    policy: Policy,
    deferred: tuple[str, ...],
    staged: bool,
) -> CommitProtocol:
    others = tuple(name for name in participants if name != last)
    reply = yield PrepareAll(txid, others, stage=last if staged else None)
    assert isinstance(reply, Prepared)
    voting = (*others, last) if staged else others
    refusals = {
        name: vote
        for name in voting
        if isinstance(vote := reply.votes.get(name, TimeoutError("no vote")), BaseException)
    }
    if refusals:
        if staged:
            yield RollBackStaged(txid, last)
        yield AbortAll(txid, others)  # the last resource holds nothing durable
        raise _refusal_error(txid, voting, refusals)
    voters = tuple(name for name in others if reply.votes[name] is Vote.YES)
    read_only = tuple(name for name in others if reply.votes[name] is Vote.READ_ONLY)
    committed = yield CommitLastResource(txid, last, (*voters, last))
    assert isinstance(committed, CommittedOnePhase)
    if committed.error is not None:
        if not isinstance(committed.error, TransactionInDoubt):
            yield AbortAll(txid, voters)
        raise _one_phase_error(txid, last, committed.error)
    return (yield from _finish(txid, participants, voters, read_only, policy, deferred))


def _refusal_error(
    txid: str, participants: tuple[str, ...], refusals: Mapping[str, BaseException]
) -> LockstepError:
    """The error to raise after an abort in phase 1: the most telling refusal wins."""
    for name in participants:
        err = refusals.get(name)
        if isinstance(err, VersionConflict):
            return err if err.txid else _with_txid(err, txid, name)
    for name in participants:
        err = refusals.get(name)
        if isinstance(err, UsageError | ValidationFailed):
            # A programming mistake, not a refusal: raise it as itself.
            if err.txid is None:
                err.txid = txid
            return err
    for name in participants:
        err = refusals.get(name)
        if err is not None and not isinstance(err, TimeoutError):
            rejected = VoteRejected(
                f"participant {name!r} refused to prepare: {_reason(err)}",
                txid=txid,
                participant=name,
            )
            rejected.__cause__ = err
            return rejected
    # Only timeouts (and missing votes, counted as timeouts) are left.
    late = next(name for name in participants if name in refusals)
    return PrepareTimeout(
        f"participant {late!r} did not vote within the prepare timeout", txid=txid, participant=late
    )


def _with_txid(err: LockstepError, txid: str, participant: str) -> VersionConflict:
    conflict = VersionConflict(err.message, txid=txid, participant=err.participant or participant)
    conflict.__cause__ = err
    return conflict


def _one_phase_error(txid: str, participant: str, err: BaseException) -> LockstepError:
    if isinstance(err, TransactionInDoubt | TransactionAborted | UsageError | ValidationFailed):
        return err
    rejected = VoteRejected(
        f"participant {participant!r} refused the one-phase commit: {_reason(err)}",
        txid=txid,
        participant=participant,
    )
    rejected.__cause__ = err
    return rejected


def _reason(err: BaseException) -> str:
    return err.message if isinstance(err, LockstepError) else f"{type(err).__name__}: {err}"
