"""The recovery planner, driven with scripted participants and log (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field

from coordinator import ConfigurationError, Decision, DecisionRecord, Policy, new_txid
from coordinator._core.effects import (
    BranchesResolved,
    DecisionsPersisted,
    Effect,
    InDoubtListed,
    ListInDoubt,
    PersistDecisions,
    ReadRecords,
    RecordEnd,
    RecordsRead,
    Reply,
    ResolveBranches,
)
from coordinator._core.recovery import recovery_plan
from coordinator.outcomes import RecoveryReport

NOW = 2_000_000_000.0
POLICY = Policy(in_doubt_timeout=30.0, redrive_after=5.0)
OLD = new_txid(now=NOW - 60)
YOUNG = new_txid(now=NOW - 1)


@dataclass
class World:
    """What the participants and the log hold; the planner's effects act on it."""

    branches: dict[str, list[str]]
    records: dict[str, DecisionRecord] = field(default_factory=dict)
    listing_fails: set[str] = field(default_factory=set)
    resolve_fails: set[tuple[str, str]] = field(default_factory=set)
    recovery_loses_to: Decision | None = None
    effects: list[Effect] = field(default_factory=list)
    resolved: dict[tuple[str, str], Decision] = field(default_factory=dict)
    ended: set[str] = field(default_factory=set)

    def answer(self, effect: Effect) -> Reply:
        self.effects.append(effect)
        match effect:
            case ListInDoubt(names):
                return InDoubtListed(
                    NOW,
                    {
                        n: tuple(self.branches.get(n, []))
                        for n in names
                        if n not in self.listing_fails
                    },
                    {n: OSError("down") for n in names if n in self.listing_fails},
                )
            case ReadRecords(txids):
                return RecordsRead(
                    {t: self.records[t] for t in txids if t in self.records},
                    tuple(r for r in self.records.values() if not r.ended),
                )
            case PersistDecisions(decisions):
                for txid, decision, names in decisions:
                    won = self.recovery_loses_to or decision
                    self.records.setdefault(txid, DecisionRecord(txid, won, names, NOW))
                return DecisionsPersisted({t: self.records[t].decision for t, _, _ in decisions})
            case ResolveBranches(commit, abort):
                failed = {}
                for decision, plan in ((Decision.COMMIT, commit), (Decision.ABORT, abort)):
                    for name, txids in plan.items():
                        for txid in txids:
                            if (name, txid) in self.resolve_fails:
                                failed[(name, txid)] = OSError("down")
                            else:
                                self.resolved[(name, txid)] = decision
                return BranchesResolved(failed)
            case RecordEnd(txids):
                self.ended.update(txids)
                return None
        raise AssertionError(effect)


def recover(world: World, names: tuple[str, ...] = ("a", "b")) -> RecoveryReport:
    plan = recovery_plan(names, POLICY)
    reply: Reply = None
    try:
        while True:
            reply = world.answer(plan.send(reply))
    except StopIteration as stop:
        report: RecoveryReport = stop.value
        return report


def record(txid: str, decision: Decision, *names: str, age: float = 60.0) -> DecisionRecord:
    return DecisionRecord(txid, decision, names, NOW - age)


def decided_anything(world: World) -> bool:
    return any(isinstance(e, PersistDecisions) for e in world.effects)


def test_a_branch_with_a_commit_record_is_committed_and_ended() -> None:
    world = World({"a": [OLD], "b": [OLD]}, {OLD: record(OLD, Decision.COMMIT, "a", "b")})
    report = recover(world)
    assert world.resolved == {("a", OLD): Decision.COMMIT, ("b", OLD): Decision.COMMIT}
    assert set(report.committed) == {("a", OLD), ("b", OLD)}
    assert world.ended == {OLD} and report.clean


def test_a_branch_with_an_abort_record_is_aborted() -> None:
    world = World({"a": [YOUNG]}, {YOUNG: record(YOUNG, Decision.ABORT, "a")})
    report = recover(world)
    assert world.resolved == {("a", YOUNG): Decision.ABORT}
    assert report.aborted == (("a", YOUNG),)


def test_a_young_undecided_branch_is_left_alone() -> None:
    world = World({"a": [YOUNG]})
    report = recover(world)
    assert report.waiting == (YOUNG,)
    assert world.resolved == {} and not decided_anything(world)
    assert not report.clean


def test_an_old_undecided_branch_is_fenced_with_abort_before_being_aborted() -> None:
    world = World({"a": [OLD], "b": []})
    report = recover(world)
    decide = next(i for i, e in enumerate(world.effects) if isinstance(e, PersistDecisions))
    resolve = next(i for i, e in enumerate(world.effects) if isinstance(e, ResolveBranches))
    assert decide < resolve  # Rule 1: win the ABORT insert, then abort
    assert world.records[OLD].decision is Decision.ABORT
    assert world.resolved == {("a", OLD): Decision.ABORT}
    assert report.fenced == (OLD,) and world.ended == {OLD}


def test_a_coordinator_that_decided_first_wins_and_its_branch_commits() -> None:
    world = World({"a": [OLD]}, recovery_loses_to=Decision.COMMIT)
    report = recover(world)
    assert world.resolved == {("a", OLD): Decision.COMMIT}
    assert report.fenced == ()
    assert world.ended == set()  # the coordinator's own record is finished by its owner


def test_commit_records_without_end_are_redriven_once_old_enough() -> None:
    fresh = new_txid(now=NOW - 2)
    world = World(
        {"a": [], "b": []},
        {
            OLD: record(OLD, Decision.COMMIT, "a", "b", age=60),
            fresh: record(fresh, Decision.COMMIT, "a", age=1),
        },
    )
    recover(world)
    assert world.resolved == {("a", OLD): Decision.COMMIT, ("b", OLD): Decision.COMMIT}
    assert world.ended == {OLD}


def test_a_participant_that_cannot_list_is_reported_and_the_rest_proceed() -> None:
    world = World({"a": [OLD], "b": [OLD]}, {OLD: record(OLD, Decision.ABORT, "a", "b")})
    world.listing_fails.add("b")
    report = recover(world)
    assert "b" in report.failed
    assert ("a", OLD) in world.resolved


def test_a_branch_that_fails_to_resolve_is_reported_and_not_ended() -> None:
    world = World({"a": [OLD], "b": [OLD]}, {OLD: record(OLD, Decision.COMMIT, "a", "b")})
    world.resolve_fails.add(("b", OLD))
    report = recover(world)
    assert f"b:{OLD}" in report.failed
    assert report.committed == (("a", OLD),)
    assert world.ended == set()
    world.resolve_fails.clear()
    assert recover(world).clean and world.ended == {OLD}


def test_a_record_naming_an_unconfigured_participant_is_reported() -> None:
    world = World({"a": [OLD]}, {OLD: record(OLD, Decision.COMMIT, "a", "elsewhere")})
    report = recover(world)
    assert isinstance(report.failed[OLD], ConfigurationError)
    assert world.resolved == {("a", OLD): Decision.COMMIT}
    assert world.ended == set()


def test_recovery_is_idempotent() -> None:
    world = World({"a": [OLD]})
    recover(world)
    first = dict(world.resolved)
    world.branches = {"a": []}
    recover(world)
    assert world.resolved == first
    assert world.records[OLD].decision is Decision.ABORT
