"""Hypothesis drives the engine through random transactions, faults, crashes and recoveries.

Three participants (a SQLite file and two in-process stores, one of them flaky) share a
SQLite decision log. The model is the set of facts every store must hold.

Invariants (the guarantees of docs/engine.md):

* G1 all or none: whenever no outcome is pending, every store holds exactly the model and
  nothing is staged anywhere.
* G2 a returned commit is never lost: an ``Outcome`` goes into the model at once, and the
  stores must match the model after any later crash and recovery.
* G5 recovery is idempotent and converges: a second pass right after a first finds nothing
  to do; a recovery cut at any fault point is completed by the next one; two recoverers
  may run at once.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from coordinator import (
    Coordinator,
    DeleteFact,
    FactRecord,
    Outcome,
    Policy,
    PrepareTimeout,
    RecoveryReport,
    TransactionAborted,
    TransactionInDoubt,
    UpsertFact,
    Write,
    new_txid,
)
from coordinator.abc import Decision
from coordinator.faults import commit_points, recovery_points
from coordinator.log import SQLiteDecisionLog
from participants.memory import InMemoryStorage
from participants.sqlite import SQLiteStorage
from tests.support._sync.flaky import FailingLog, Flaky, Script
from tests.support.crash import CrashAt, SimulatedCrash

FACT_IDS = ["f0", "f1", "f2", "f3"]
PARTICIPANTS = ("facts", "index", "mirror")
COMMIT_POINTS = commit_points(PARTICIPANTS)
RECOVERY_POINTS = recovery_points(PARTICIPANTS)
FAULTS = ["none", "vote_no", "slow_prepare", "commit_transient", "commit_stuck", "log_down"]
POLICY = Policy(prepare_timeout=0.05, finish_attempts=2, finish_backoff=0.0)
RECOVER_NOW = Policy(in_doubt_timeout=0.001, redrive_after=0.0)
SCRATCH = "/dev/shm" if Path("/dev/shm").is_dir() else None


def stale_txid() -> str:
    """A txid already older than the recoverers' timeout, so every pass may fence it."""
    return new_txid(now=time.time() - 1)


class EngineMachine(RuleBasedStateMachine):
    @initialize()
    def open_stores(self) -> None:
        self.dir = Path(tempfile.mkdtemp(dir=SCRATCH))
        self.sqlite = SQLiteStorage(self.dir / "facts.db", name="facts")
        self.index = InMemoryStorage("index")
        self.mirror = InMemoryStorage("mirror")
        self.script = Script()
        self.flaky = Flaky(self.mirror, self.script)
        self.log = FailingLog(SQLiteDecisionLog(self.dir / "log.db"))
        self.model: dict[str, FactRecord] = {}
        self.unknown: dict[str, list[Write]] = {}  # txid -> writes whose outcome we missed
        self.dirty = False  # stores may differ from the model until recovery runs
        self.counter = 0

    def teardown(self) -> None:
        if hasattr(self, "dir"):
            self.sqlite.close()
            self.log.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def coordinator(self, policy: Policy = POLICY, **kwargs: object) -> Coordinator:
        return Coordinator([self.sqlite, self.index, self.flaky], self.log, policy=policy, **kwargs)  # type: ignore[arg-type]

    def writes_for(self, ops: list[tuple[str, bool]], txid: str) -> list[Write]:
        writes: list[Write] = []
        for fact_id, delete in dict(ops).items():
            current = self.model.get(fact_id)
            version = 0 if current is None else current.version
            if delete and current is not None:
                writes.append(DeleteFact(fact_id, version))
            else:
                self.counter += 1
                record = FactRecord(fact_id, "note", {"n": self.counter}, version + 1, txid=txid)
                writes.append(UpsertFact(record, version))
        return writes

    def apply(self, writes: list[Write]) -> None:
        for write in writes:
            if isinstance(write, UpsertFact):
                self.model[write.fact_id] = write.fact
            elif isinstance(write, DeleteFact):
                self.model.pop(write.fact_id, None)

    def commit(self, writes: list[Write], txid: str, coordinator: Coordinator) -> None:
        """Run one transaction and fold what the caller learned into the model."""
        try:
            outcome = coordinator.commit(dict.fromkeys(PARTICIPANTS, writes), txid=txid)
        except PrepareTimeout:
            time.sleep(0.1)  # the abandoned prepare lands now; recovery must remove it
            self.dirty = True
        except TransactionAborted:
            pass
        except (TransactionInDoubt, SimulatedCrash):
            self.unknown[txid] = writes
            self.dirty = True
        else:
            assert isinstance(outcome, Outcome)
            self.apply(writes)  # G2: from here on, this commit must never be lost
            self.dirty = self.dirty or bool(outcome.unfinished)

    @rule(
        ops=st.lists(st.tuples(st.sampled_from(FACT_IDS), st.booleans()), min_size=1, max_size=3),
        fault=st.sampled_from(FAULTS),
    )
    def write(self, ops: list[tuple[str, bool]], fault: str) -> None:
        txid = stale_txid()
        writes = self.writes_for(ops, txid)
        self.script.vote_no = fault == "vote_no"
        self.script.prepare_delay = 0.08 if fault == "slow_prepare" else 0.0
        self.script.commit_failures = 1 if fault == "commit_transient" else 0
        self.script.commit_always_fails |= fault == "commit_stuck"
        self.log.failing = fault == "log_down"
        try:
            self.commit(writes, txid, self.coordinator())
        finally:
            self.script.vote_no = False
            self.script.prepare_delay = 0.0
            self.log.failing = False

    @rule(
        ops=st.lists(st.tuples(st.sampled_from(FACT_IDS), st.booleans()), min_size=1, max_size=3),
        point=st.sampled_from(COMMIT_POINTS),
    )
    def crash_mid_commit(self, ops: list[tuple[str, bool]], point: str) -> None:
        txid = stale_txid()
        writes = self.writes_for(ops, txid)
        # Prepares run one after the other here so that a "crash" stops all of them, as a
        # real one would (a thread of a concurrent prepare would otherwise carry on).
        sequential = Policy(prepare_timeout=5.0, concurrent_prepare=False, finish_attempts=1)
        self.commit(writes, txid, self.coordinator(sequential, fault_hook=CrashAt(point)))

    @rule(fact_id=st.sampled_from(FACT_IDS))
    def stale_write_is_refused(self, fact_id: str) -> None:
        if self.dirty:
            return  # the model may lag the stores until recovery tells what committed
        current = self.model.get(fact_id)
        # One version behind the model (or, for a fact that does not exist, a made-up one).
        stale = current.version - 1 if current is not None else 5
        record = FactRecord(fact_id, "note", {"stale": True}, stale + 1)
        try:
            self.coordinator().commit(dict.fromkeys(PARTICIPANTS, (UpsertFact(record, stale),)))
        except PrepareTimeout:
            # A store slower than the 50 ms prepare timeout (a loaded machine), not the
            # refusal: as in commit(), a prepare may land after the abort; recovery removes it.
            time.sleep(0.1)
            self.dirty = True
            return
        except TransactionAborted:
            return
        raise AssertionError("a write on a stale version committed (lost update)")

    @rule(after_decision=st.booleans())
    def recovery_races_a_slow_coordinator(self, after_decision: bool) -> None:
        """A recoverer runs while the coordinator stalls just before (or after) deciding."""
        txid = stale_txid()
        writes = self.writes_for([(FACT_IDS[self.counter % 4], False)], txid)
        reports: list[RecoveryReport] = []

        def stall(point: str) -> None:
            if point == ("after_decision" if after_decision else "before_decision"):
                reports.append(self.coordinator(RECOVER_NOW).recover())

        before = dict(self.model)
        self.commit(writes, txid, self.coordinator(POLICY, fault_hook=stall))
        if reports and not after_decision:
            assert txid in reports[0].fenced, "recovery must fence an undecided stale branch"
            assert self.model == before, "a fenced coordinator must not commit"

    def heal(self) -> None:
        self.script.commit_always_fails = False
        self.script.commit_failures = 0

    @rule(concurrent=st.booleans())
    def recover(self, concurrent: bool) -> None:
        self.heal()
        if concurrent:
            reports: list[RecoveryReport] = []
            threads = [
                threading.Thread(
                    target=lambda: reports.append(self.coordinator(RECOVER_NOW).recover())
                )
                for _ in range(2)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert len(reports) == 2
        else:
            self.coordinator(RECOVER_NOW).recover()
        # G5: a second pass right after finds nothing left to do.
        again = self.coordinator(RECOVER_NOW).recover()
        assert again.clean, again
        assert not again.committed and not again.aborted and not again.fenced, again
        self.settle_unknown()

    @rule(point=st.sampled_from(RECOVERY_POINTS))
    def crash_mid_recovery(self, point: str) -> None:
        self.heal()
        try:
            report = self.coordinator(RECOVER_NOW, fault_hook=CrashAt(point)).recover()
        except SimulatedCrash:
            return  # the next recovery must finish the job
        assert report.clean, report  # healed stores and no crash: one pass settles all
        self.settle_unknown()

    def settle_unknown(self) -> None:
        """After a full recovery the log knows every outcome the caller missed."""
        records = self.log.records(list(self.unknown))
        for txid, writes in self.unknown.items():
            record = records.get(txid)
            if record is not None and record.decision is Decision.COMMIT:
                self.apply(writes)
        self.unknown.clear()
        self.dirty = False

    @invariant()
    def every_store_equals_the_model_when_nothing_is_pending(self) -> None:
        if not hasattr(self, "dir") or self.dirty:
            return
        expected = sorted(self.model.values(), key=lambda f: f.id)
        for store in (self.sqlite, self.index, self.mirror):
            assert store.all_facts() == expected, f"{store.name} drifted from the model"
            assert store.recover() == [], f"{store.name} holds a staged branch"


TestEngineMachine = EngineMachine.TestCase
