"""The commit protocol, driven effect by effect with scripted replies (no I/O)."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st

from coordinator import (
    Decision,
    Policy,
    PrepareTimeout,
    TransactionAborted,
    TransactionInDoubt,
    UsageError,
    VersionConflict,
    Vote,
    VoteRejected,
)
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
from coordinator._core.protocol import commit_protocol
from coordinator.outcomes import Outcome

TXID = "01a1ff0000007000800000000000000a"
AS_VOTE: dict[str, Vote | BaseException] = {
    "yes": Vote.YES,
    "read_only": Vote.READ_ONLY,
    "no": RuntimeError("no"),
    "timeout": TimeoutError("late"),
}
"""What a scripted participant answers to a prepare, by name."""
POLICY = Policy(finish_attempts=3)


def run(
    participants: tuple[str, ...],
    answer: Callable[[Effect], Reply],
    *,
    one_phase: bool = False,
    policy: Policy = POLICY,
    deferred: tuple[str, ...] = (),
) -> tuple[list[Effect], Outcome | BaseException]:
    """Drive the protocol; return the effects it yielded and its outcome or error."""
    effects: list[Effect] = []
    protocol = commit_protocol(TXID, participants, policy, one_phase=one_phase, deferred=deferred)
    reply: Reply = None
    try:
        while True:
            effect = protocol.send(reply)
            effects.append(effect)
            reply = answer(effect)
    except StopIteration as stop:
        return effects, stop.value
    except Exception as exc:
        return effects, exc


def votes(**by_name: Vote | BaseException) -> Callable[[Effect], Reply]:
    """Reply with these votes, a COMMIT decision, and a clean phase 2."""

    def answer(effect: Effect) -> Reply:
        if isinstance(effect, PrepareAll):
            return Prepared(dict(by_name))
        if isinstance(effect, PersistDecision):
            return DecisionPersisted(effect.decision)
        if isinstance(effect, FinishAll | AbortAll):
            return Finished()
        return None

    return answer


def test_happy_path_prepares_decides_then_commits_then_ends() -> None:
    effects, outcome = run(("a", "b"), votes(a=Vote.YES, b=Vote.YES))
    assert effects == [
        PrepareAll(TXID, ("a", "b")),
        PersistDecision(TXID, Decision.COMMIT, ("a", "b")),
        FinishAll(TXID, ("a", "b")),
        RecordEnd((TXID,)),
    ]
    assert isinstance(outcome, Outcome)
    assert outcome.complete and outcome.participants == ("a", "b")


def test_a_no_vote_aborts_everyone_without_a_log_record() -> None:
    refusal = RuntimeError("disk full")
    effects, error = run(("a", "b"), votes(a=Vote.YES, b=refusal))
    assert effects == [PrepareAll(TXID, ("a", "b")), AbortAll(TXID, ("a", "b"))]
    assert isinstance(error, VoteRejected)
    assert error.participant == "b" and error.txid == TXID
    assert error.__cause__ is refusal


def test_a_version_conflict_is_raised_as_itself() -> None:
    conflict = VersionConflict("fact 'x' is at version 3", participant="a")
    _, error = run(("a", "b"), votes(a=conflict, b=RuntimeError("also failed")))
    assert isinstance(error, VersionConflict)
    assert error.txid == TXID and error.participant == "a"


def test_a_usage_error_from_a_participant_is_raised_as_itself() -> None:
    _, error = run(("a",), votes(a=UsageError("cannot run SQL")), policy=POLICY)
    assert isinstance(error, UsageError) and error.txid == TXID


def test_a_timeout_aborts_with_prepare_timeout() -> None:
    effects, error = run(("a", "b"), votes(a=Vote.YES, b=TimeoutError()))
    assert AbortAll(TXID, ("a", "b")) in effects
    assert isinstance(error, PrepareTimeout) and error.participant == "b"
    assert isinstance(error, TransactionAborted) and isinstance(error, TimeoutError)


def test_a_missing_vote_counts_as_a_timeout() -> None:
    _, error = run(("a", "b"), votes(a=Vote.YES))
    assert isinstance(error, PrepareTimeout) and error.participant == "b"


def test_read_only_participants_skip_the_decision_and_phase_two() -> None:
    effects, outcome = run(("a", "b"), votes(a=Vote.READ_ONLY, b=Vote.READ_ONLY))
    assert effects == [PrepareAll(TXID, ("a", "b"))]
    assert isinstance(outcome, Outcome) and outcome.read_only == ("a", "b")


def test_only_yes_voters_are_logged_and_finished() -> None:
    effects, outcome = run(("a", "b"), votes(a=Vote.READ_ONLY, b=Vote.YES))
    assert PersistDecision(TXID, Decision.COMMIT, ("b",)) in effects
    assert FinishAll(TXID, ("b",)) in effects
    assert isinstance(outcome, Outcome) and outcome.read_only == ("a",)


def test_losing_the_decision_to_recovery_aborts_and_raises() -> None:
    def answer(effect: Effect) -> Reply:
        if isinstance(effect, PersistDecision):
            return DecisionPersisted(Decision.ABORT)
        return votes(a=Vote.YES, b=Vote.YES)(effect)

    effects, error = run(("a", "b"), answer)
    assert effects[-1] == AbortAll(TXID, ("a", "b"))
    assert not any(isinstance(e, FinishAll) for e in effects)
    assert type(error) is TransactionAborted


def test_a_log_failure_at_the_decision_is_in_doubt_and_touches_nothing() -> None:
    failure = OSError("log unreachable")

    def answer(effect: Effect) -> Reply:
        if isinstance(effect, PersistDecision):
            return DecisionPersisted(None, failure)
        return votes(a=Vote.YES, b=Vote.YES)(effect)

    effects, error = run(("a", "b"), answer)
    # Neither commit nor abort: the record may have landed; recovery will know.
    assert not any(isinstance(e, FinishAll | AbortAll) for e in effects)
    assert isinstance(error, TransactionInDoubt) and error.__cause__ is failure


def test_phase_two_retries_with_backoff_until_every_branch_acknowledges() -> None:
    failures = {"b": 2}

    def answer(effect: Effect) -> Reply:
        if isinstance(effect, FinishAll):
            failed = {n: RuntimeError("flaky") for n in effect.participants if failures.get(n)}
            for n in failed:
                failures[n] -= 1
            return Finished(failed)
        return votes(a=Vote.YES, b=Vote.YES)(effect)

    effects, outcome = run(("a", "b"), answer)
    finishes = [e for e in effects if isinstance(e, FinishAll)]
    assert finishes == [
        FinishAll(TXID, ("a", "b")),
        FinishAll(TXID, ("b",)),
        FinishAll(TXID, ("b",)),
    ]
    assert [e for e in effects if isinstance(e, Backoff)] == [Backoff(0.02), Backoff(0.04)]
    assert isinstance(outcome, Outcome) and outcome.complete
    assert effects[-1] == RecordEnd((TXID,))


def test_a_branch_unfinished_at_the_bound_is_reported_not_raised() -> None:
    broken = RuntimeError("still down")

    def answer(effect: Effect) -> Reply:
        if isinstance(effect, FinishAll):
            return Finished({"b": broken} if "b" in effect.participants else {})
        return votes(a=Vote.YES, b=Vote.YES)(effect)

    effects, outcome = run(("a", "b"), answer)
    assert isinstance(outcome, Outcome)
    assert outcome.decision is Decision.COMMIT
    assert outcome.unfinished == ("b",) and outcome.errors == {"b": broken}
    assert sum(isinstance(e, FinishAll) for e in effects) == POLICY.finish_attempts
    assert not any(isinstance(e, RecordEnd | AbortAll) for e in effects)


def test_deferred_branches_are_queued_after_the_others_finished_and_end_waits() -> None:
    effects, outcome = run(
        ("facts", "index", "other"),
        votes(facts=Vote.YES, index=Vote.YES, other=Vote.READ_ONLY),
        deferred=("index", "other"),
    )
    assert effects[-2:] == [
        FinishAll(TXID, ("facts",)),
        DeferFinish(TXID, ("index",), end=True),  # a read-only branch has nothing to defer
    ]
    assert not any(isinstance(e, RecordEnd) for e in effects)  # Rule 5: the batch ends it
    assert isinstance(outcome, Outcome) and outcome.complete
    assert outcome.deferred == ("index",) and outcome.read_only == ("other",)


def test_a_deferred_batch_records_no_end_while_another_branch_is_unfinished() -> None:
    def answer(effect: Effect) -> Reply:
        if isinstance(effect, FinishAll):
            return Finished({"facts": RuntimeError("down")})
        return votes(facts=Vote.YES, index=Vote.YES)(effect)

    effects, outcome = run(("facts", "index"), answer, deferred=("index",))
    assert effects[-1] == DeferFinish(TXID, ("index",), end=False)
    assert isinstance(outcome, Outcome) and outcome.unfinished == ("facts",)


def test_only_deferred_voters_go_straight_to_the_queue() -> None:
    effects, _ = run(("index",), votes(index=Vote.YES), deferred=("index",))
    assert effects == [
        PrepareAll(TXID, ("index",)),
        PersistDecision(TXID, Decision.COMMIT, ("index",)),
        DeferFinish(TXID, ("index",), end=True),
    ]


def test_one_participant_commits_in_one_phase_without_the_log() -> None:
    effects, outcome = run(("a",), lambda e: CommittedOnePhase(), one_phase=True)
    assert effects == [CommitOnePhase(TXID, "a")]
    assert isinstance(outcome, Outcome) and outcome.one_phase


def test_a_failed_one_phase_commit_is_an_abort() -> None:
    cause = RuntimeError("constraint")
    _, error = run(("a",), lambda e: CommittedOnePhase(cause), one_phase=True)
    assert isinstance(error, VoteRejected) and error.__cause__ is cause
    doubt = TransactionInDoubt("connection cut during COMMIT")
    _, error = run(("a",), lambda e: CommittedOnePhase(doubt), one_phase=True)
    assert error is doubt


def test_no_participants_is_an_empty_commit() -> None:
    effects, outcome = run((), votes())
    assert effects == []
    assert isinstance(outcome, Outcome) and outcome.participants == ()


@given(
    st.dictionaries(
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["yes", "read_only", "no", "timeout"]),
        min_size=1,
    ),
    st.sampled_from([Decision.COMMIT, Decision.ABORT, None]),
    st.lists(st.booleans(), max_size=8),
    st.sets(st.sampled_from(["a", "b", "c"])),
)
def test_no_branch_is_committed_unless_commit_was_decided_first(
    script: dict[str, str],
    decision: Decision | None,
    finish_failures: list[bool],
    deferrable: set[str],
) -> None:
    names = tuple(sorted(script))
    failures = iter(finish_failures)

    def answer(effect: Effect) -> Reply:
        if isinstance(effect, PrepareAll):
            return Prepared({n: AS_VOTE[script[n]] for n in names})
        if isinstance(effect, PersistDecision):
            return DecisionPersisted(decision, None if decision else OSError("log down"))
        if isinstance(effect, FinishAll):
            return Finished(
                {n: RuntimeError() for n in effect.participants if next(failures, False)}
            )
        if isinstance(effect, AbortAll):
            return Finished()
        return None

    effects, result = run(names, answer, deferred=tuple(sorted(deferrable)))
    decided = [e for e in effects if isinstance(e, PersistDecision)]
    first_finish = next(
        (i for i, e in enumerate(effects) if isinstance(e, FinishAll | DeferFinish)), None
    )
    if first_finish is not None:
        # Rule 1: COMMIT is durable (and won) before any branch hears "commit".
        assert decided and effects.index(decided[0]) < first_finish
        assert decision is Decision.COMMIT
        assert not any(isinstance(e, AbortAll) for e in effects)  # Rule 4
        assert isinstance(result, Outcome)
    if any(script[n] in ("no", "timeout") for n in names):
        assert not decided and isinstance(result, TransactionAborted)
    if isinstance(result, Outcome):
        yes = {n for n in names if script[n] == "yes"}
        assert set(result.unfinished) <= yes - deferrable
        assert set(result.deferred) == yes & deferrable
        # Rule 8: the deferred are queued last; Rule 5: END only once all are done.
        queued = [e for e in effects if isinstance(e, DeferFinish)]
        if queued:
            assert effects[-1] == queued[0] and queued[0].end == (not result.unfinished)
        assert any(isinstance(e, RecordEnd) for e in effects) == (
            not result.unfinished and not queued and bool(yes)
        )


def test_the_last_resource_commits_with_the_decision_after_the_others_prepared() -> None:
    def answer(effect: Effect) -> Reply:
        if isinstance(effect, CommitLastResource):
            return CommittedOnePhase()
        return votes(a=Vote.YES, b=Vote.YES)(effect)

    effects, outcome = run_with_last(("a", "b", "pg"), "pg", answer)
    assert effects == [
        PrepareAll(TXID, ("a", "b")),
        CommitLastResource(TXID, "pg", ("a", "b", "pg")),
        FinishAll(TXID, ("a", "b")),
        RecordEnd((TXID,)),
    ]
    assert isinstance(outcome, Outcome) and outcome.complete
    assert not any(isinstance(e, PersistDecision) for e in effects)  # no separate log write


def test_a_refusal_before_the_last_resource_aborts_the_others_only() -> None:
    effects, error = run_with_last(("a", "pg"), "pg", votes(a=RuntimeError("no")))
    assert effects == [PrepareAll(TXID, ("a",)), AbortAll(TXID, ("a",))]
    assert isinstance(error, VoteRejected)


def test_a_refused_last_resource_aborts_the_prepared_others() -> None:
    def answer(effect: Effect) -> Reply:
        if isinstance(effect, CommitLastResource):
            return CommittedOnePhase(TransactionAborted("recovery decided first"))
        return votes(a=Vote.YES)(effect)

    effects, error = run_with_last(("a", "pg"), "pg", answer)
    assert effects[-1] == AbortAll(TXID, ("a",))
    assert isinstance(error, TransactionAborted)


def test_an_unknown_last_resource_outcome_is_in_doubt_and_aborts_nothing() -> None:
    doubt = TransactionInDoubt("connection lost during COMMIT")

    def answer(effect: Effect) -> Reply:
        if isinstance(effect, CommitLastResource):
            return CommittedOnePhase(doubt)
        return votes(a=Vote.YES)(effect)

    effects, error = run_with_last(("a", "pg"), "pg", answer)
    assert not any(isinstance(e, AbortAll | FinishAll) for e in effects)
    assert error is doubt


def test_a_staged_last_resource_is_prepared_beside_the_others_then_committed() -> None:
    def answer(effect: Effect) -> Reply:
        if isinstance(effect, CommitLastResource):
            return CommittedOnePhase()
        return votes(a=Vote.YES, b=Vote.READ_ONLY, pg=Vote.YES)(effect)

    effects, outcome = run_with_last(("a", "b", "pg"), "pg", answer, stage_last=True)
    assert effects == [
        PrepareAll(TXID, ("a", "b"), stage="pg"),
        CommitLastResource(TXID, "pg", ("a", "pg")),  # the read-only voter is left out
        FinishAll(TXID, ("a",)),
        RecordEnd((TXID,)),
    ]
    assert isinstance(outcome, Outcome) and outcome.complete


def test_a_refused_staging_rolls_back_then_aborts_the_others() -> None:
    effects, error = run_with_last(
        ("a", "pg"), "pg", votes(a=Vote.YES, pg=VersionConflict("stale")), stage_last=True
    )
    assert effects == [
        PrepareAll(TXID, ("a",), stage="pg"),
        RollBackStaged(TXID, "pg"),
        AbortAll(TXID, ("a",)),
    ]
    assert isinstance(error, VersionConflict)


def test_a_refusal_beside_a_staged_last_resource_rolls_it_back_first() -> None:
    effects, error = run_with_last(
        ("a", "pg"), "pg", votes(a=RuntimeError("no"), pg=Vote.YES), stage_last=True
    )
    assert effects[1:] == [RollBackStaged(TXID, "pg"), AbortAll(TXID, ("a",))]
    assert isinstance(error, VoteRejected)


def run_with_last(
    participants: tuple[str, ...],
    last: str,
    answer: Callable[[Effect], Reply],
    *,
    stage_last: bool = False,
) -> tuple[list[Effect], Outcome | BaseException]:
    effects: list[Effect] = []
    protocol = commit_protocol(
        TXID, participants, POLICY, last_resource=last, stage_last=stage_last
    )
    reply: Reply = None
    try:
        while True:
            effect = protocol.send(reply)
            effects.append(effect)
            reply = answer(effect)
    except StopIteration as stop:
        return effects, stop.value
    except Exception as exc:
        return effects, exc


@given(
    st.dictionaries(
        st.sampled_from(["a", "b"]),
        st.sampled_from(["yes", "read_only", "no", "timeout"]),
        min_size=1,
    ),
    st.sampled_from(["yes", "no", "timeout"]),
    st.sampled_from(["committed", "refused", "in doubt"]),
)
def test_a_staged_last_resource_commits_only_after_every_yes_and_is_never_left_open(
    script: dict[str, str], staging: str, last_commit: str
) -> None:
    """Rules 1, 3 and 7 with the last resource staged beside the others' prepares."""
    others = tuple(sorted(script))
    replies = {n: AS_VOTE[v] for n, v in script.items()} | {"pg": AS_VOTE[staging]}
    commit_error: BaseException | None = {
        "committed": None,
        "refused": TransactionAborted("recovery decided first"),
        "in doubt": TransactionInDoubt("connection lost during COMMIT"),
    }[last_commit]

    def answer(effect: Effect) -> Reply:
        if isinstance(effect, CommitLastResource):
            return CommittedOnePhase(commit_error)
        return votes(**replies)(effect)

    effects, result = run_with_last((*others, "pg"), "pg", answer, stage_last=True)
    assert effects[0] == PrepareAll(TXID, others, stage="pg")
    everyone_yes = all(not isinstance(v, BaseException) for v in replies.values())
    commits = [e for e in effects if isinstance(e, CommitLastResource)]
    if not everyone_yes:
        # Rule 3: the staged transaction is rolled back, then the others aborted.
        assert effects[1:] == [RollBackStaged(TXID, "pg"), AbortAll(TXID, others)]
        assert isinstance(result, TransactionAborted)
        return
    voters = tuple(n for n in others if replies[n] is Vote.YES)
    assert commits == [CommitLastResource(TXID, "pg", (*voters, "pg"))]
    assert not any(isinstance(e, RollBackStaged) for e in effects)  # it committed or tried
    finishes = [e for e in effects if isinstance(e, FinishAll)]
    if commit_error is None:
        assert isinstance(result, Outcome) and not any(isinstance(e, AbortAll) for e in effects)
        if voters:  # Rule 1: the others are told to commit only after the commit point
            assert effects.index(commits[0]) < effects.index(finishes[0])
    elif isinstance(commit_error, TransactionInDoubt):
        assert result is commit_error and not finishes
        assert not any(isinstance(e, AbortAll) for e in effects)  # the log will say
    else:
        assert isinstance(result, TransactionAborted) and not finishes
        assert effects[-1] == AbortAll(TXID, voters)
