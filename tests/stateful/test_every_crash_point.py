"""Exhaustive: a transaction over three participants, cut at every point in turn.

For each fault point the protocol reaches (and for each step of the recovery that follows),
the coordinator "dies" there; recovery runs; the three stores must agree with each other,
hold nothing staged, and hold the new version exactly when the log says COMMIT.
"""

from __future__ import annotations

import time
from contextlib import closing
from pathlib import Path

import pytest

from coordinator import Coordinator, Decision, Participant, Policy, new_txid
from coordinator.faults import commit_points, recovery_points
from coordinator.log import SQLiteDecisionLog
from participants.memory import InMemoryStorage, MemoryBackend
from participants.sqlite import SQLiteStorage
from tests.support.crash import CrashAt, SimulatedCrash, fact, upsert

SEQUENTIAL = Policy(concurrent_prepare=False)
RECOVER_NOW = Policy(in_doubt_timeout=0.001, redrive_after=0)


class World:
    """Three participants over durable backends, reopened after every 'crash'."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.a_backend, self.b_backend = MemoryBackend(), MemoryBackend()
        self.log = SQLiteDecisionLog(tmp_path / "log.db")
        self.facts: SQLiteStorage | None = None

    def coordinator(self, policy: Policy, hook: CrashAt | None = None) -> Coordinator:
        """The coordinator of a new process: the one before it is gone, its file closed."""
        self.close_facts()
        self.facts = SQLiteStorage(self.tmp / "facts.db", name="facts")
        participants: list[Participant] = [
            self.facts,
            InMemoryStorage("a", self.a_backend),
            InMemoryStorage("b", self.b_backend),
        ]
        return Coordinator(participants, self.log, policy=policy, fault_hook=hook or CrashAt(None))

    def seed(self) -> None:
        self.coordinator(SEQUENTIAL).commit({n: [upsert("x", 1, v=1)] for n in ("facts", "a", "b")})

    def update(self, hook: CrashAt) -> str:
        txid = new_txid(now=time.time() - 1)
        writes = [upsert("x", 2, v=2), upsert("y", 1, v=1)]
        try:
            self.coordinator(SEQUENTIAL, hook).commit(
                dict.fromkeys(("facts", "a", "b"), writes), txid=txid
            )
        except SimulatedCrash:
            pass
        return txid

    def contents(self) -> list[list[object]]:
        probe = self.coordinator(SEQUENTIAL)
        return [
            [p.get("x"), p.get("y")]  # type: ignore[attr-defined]
            for p in probe.participants.values()
        ]

    def staged(self) -> list[list[str]]:
        return [p.recover() for p in self.coordinator(SEQUENTIAL).participants.values()]

    def close_facts(self) -> None:
        if self.facts is not None:
            self.facts.close()
            self.facts = None

    def close(self) -> None:
        self.close_facts()
        self.log.close()


def reached_points(tmp_path: Path) -> list[str]:
    (tmp_path / "probe").mkdir()
    with closing(World(tmp_path / "probe")) as world:
        world.seed()
        probe = CrashAt(None)
        world.update(probe)
    return probe.seen


def assert_agreed(world: World, txid: str) -> None:
    contents = world.contents()
    assert contents[0] == contents[1] == contents[2], f"stores disagree: {contents}"
    assert world.staged() == [[], [], []]
    record = world.log.records([txid]).get(txid)
    if record is not None and record.decision is Decision.COMMIT:
        assert contents[0] == [fact("x", 2, v=2), fact("y", 1, v=1)]
    else:
        assert contents[0] == [fact("x", 1, v=1), None]


def test_the_protocol_reaches_every_named_point(tmp_path: Path) -> None:
    assert sorted(reached_points(tmp_path)) == sorted(commit_points(["facts", "a", "b"]))


def test_a_crash_at_every_point_then_recovery_leaves_all_three_agreeing(tmp_path: Path) -> None:
    points = reached_points(tmp_path)
    for i, point in enumerate(points):
        world_dir = tmp_path / f"crash-{i}"
        world_dir.mkdir()
        with closing(World(world_dir)) as world:
            world.seed()
            hook = CrashAt(point)
            txid = world.update(hook)
            assert hook.fired, point
            world.coordinator(RECOVER_NOW).recover()
            assert_agreed(world, txid)
            decided = world.log.records([txid]).get(txid)
            crashed_before_decision = points.index(point) < points.index("after_decision")
            if crashed_before_decision:
                assert decided is None or decided.decision is Decision.ABORT, point
            else:
                assert decided is not None and decided.decision is Decision.COMMIT, point


RECOVERY_POINTS = recovery_points(["facts", "a", "b"])


@pytest.mark.parametrize("commit_point", ["after_prepare:b", "after_commit:a"])
def test_a_crash_inside_recovery_is_finished_by_the_next_recovery(
    tmp_path: Path, commit_point: str
) -> None:
    for i, recovery_point in enumerate(RECOVERY_POINTS):
        world_dir = tmp_path / f"r-{i}"
        world_dir.mkdir()
        with closing(World(world_dir)) as world:
            world.seed()
            txid = world.update(CrashAt(commit_point))
            try:
                world.coordinator(RECOVER_NOW, CrashAt(recovery_point)).recover()
            except SimulatedCrash:
                pass
            world.coordinator(RECOVER_NOW).recover()
            assert_agreed(world, txid)
            again = world.coordinator(RECOVER_NOW).recover()
            assert again.clean and not again.committed and not again.aborted, recovery_point
