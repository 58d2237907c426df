"""A recoverer racing a coordinator that stalls around its decision (G1, G5).

The fault hook runs a recovery pass at the moment the coordinator stalls, so the race is
exact, not left to timing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator import Coordinator, Decision, Policy, RecoveryReport, TransactionAborted, new_txid
from coordinator.log import SQLiteDecisionLog
from participants.memory import InMemoryStorage
from participants.sqlite import SQLiteStorage
from tests.support.crash import fact, upsert

RECOVER_NOW = Policy(in_doubt_timeout=0.001, redrive_after=0)


class Race:
    def __init__(self, tmp_path: Path, stall_at: str) -> None:
        self.sqlite = SQLiteStorage(tmp_path / "facts.db", name="facts")
        self.mirror = InMemoryStorage("mirror")
        self.log = SQLiteDecisionLog(tmp_path / "log.db")
        self.stall_at = stall_at
        self.reports: list[RecoveryReport] = []
        self.coordinator = Coordinator([self.sqlite, self.mirror], self.log, fault_hook=self.stall)

    def stall(self, point: str) -> None:
        if point == self.stall_at:
            # Another process's recoverer runs while this coordinator is stalled here.
            other = Coordinator([self.sqlite, self.mirror], self.log, policy=RECOVER_NOW)
            self.reports.append(other.recover())

    def close(self) -> None:
        self.sqlite.close()
        self.log.close()


@pytest.fixture
def race(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Race]:
    """A race whose coordinator stalls at the point the test is parametrised with."""
    made = Race(tmp_path, request.param)
    yield made
    made.close()


@pytest.mark.parametrize("race", ["before_decision"], indirect=True)
def test_recovery_before_the_decision_fences_the_coordinator_out(race: Race) -> None:
    txid = new_txid(now=1.0)  # older than any in-doubt timeout
    with pytest.raises(TransactionAborted, match="recovery aborted this transaction"):
        race.coordinator.commit({"facts": [upsert("a", 1)], "mirror": [upsert("a", 1)]}, txid=txid)
    assert race.reports[0].fenced == (txid,)
    assert race.log.records([txid])[txid].decision is Decision.ABORT
    assert (race.sqlite.get("a"), race.mirror.get("a")) == (None, None)
    assert (race.sqlite.recover(), race.mirror.recover()) == ([], [])


@pytest.mark.parametrize("race", ["after_decision"], indirect=True)
def test_recovery_after_the_decision_helps_the_coordinator_finish(race: Race) -> None:
    txid = new_txid(now=1.0)
    outcome = race.coordinator.commit(
        {"facts": [upsert("a", 1)], "mirror": [upsert("a", 1)]}, txid=txid
    )
    assert outcome.complete
    assert set(race.reports[0].committed) == {("facts", txid), ("mirror", txid)}
    assert (race.sqlite.get("a"), race.mirror.get("a")) == (fact("a", 1), fact("a", 1))
    assert (race.sqlite.recover(), race.mirror.recover()) == ([], [])


@pytest.mark.parametrize("race", ["before_decision"], indirect=True)
def test_a_young_transaction_is_left_to_its_coordinator(race: Race) -> None:
    race.stall_at = "never"
    txid = new_txid()
    race.sqlite.prepare(txid, [upsert("a", 1)])
    patient = Coordinator([race.sqlite, race.mirror], race.log)  # default 30 s timeout
    report = patient.recover()
    assert report.waiting == (txid,) and not report.fenced
    assert race.log.records([txid]) == {}
    assert race.sqlite.recover() == [txid]
