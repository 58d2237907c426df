"""Recovery resolves many branches of one participant in one step (SQLite, Qdrant), with
the same outcome as one by one; a batch that fails falls back to one by one, and a crash
in the middle of a batch is finished by the next pass (G5)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from qdrant_client import QdrantClient

from coordinator import Fact, FactRecord, MemoryStore, ParticipantError, UpsertFact, new_txid
from coordinator.abc import Decision
from coordinator.embeddings import HashingEmbedder
from coordinator.faults import FaultHook, no_faults
from coordinator.log import SQLiteDecisionLog
from coordinator.records import DeleteFact, Write
from participants.qdrant import QdrantIndex
from participants.sqlite import SQLiteStorage
from tests.support.crash import CrashAt, SimulatedCrash
from tests.support.sqlite import rows


class BatchRefusingStorage(SQLiteStorage):
    def commit_many(self, txids: Sequence[str]) -> None:
        raise ParticipantError("batch refused", participant=self.name)


@dataclass
class Crashed:
    """A store left by a crash: ten transactions prepared everywhere, the even ones (and
    the delete of the last fact) decided COMMIT."""

    mem: MemoryStore
    storage: SQLiteStorage
    index: QdrantIndex
    ids: list[str]
    decided: list[str]

    def recover(self) -> None:
        report = self.mem.coordinator_with(in_doubt_timeout=0.001, redrive_after=0.0).recover()
        assert report.clean

    def check_resolved(self) -> None:
        expected = {fid: 2 if n % 2 == 0 else 1 for n, fid in enumerate(self.ids) if n != 9}
        assert {f.id: f.version for f in self.storage.all_facts()} == expected
        assert self.index.contents().committed == expected
        assert self.storage.get(self.ids[0]).payload == {"content": "revised 0"}  # type: ignore[union-attr]
        assert self.storage.get(self.ids[1]).payload == {"content": "note 1"}  # type: ignore[union-attr]
        assert self.storage.recover() == [] and self.index.recover() == []
        assert self.mem.verify().clean


def crashed(
    tmp_path: Path,
    location: str = "local",
    storage_class: type[SQLiteStorage] = SQLiteStorage,
    hook: FaultHook = no_faults,
) -> Crashed:
    embedder = HashingEmbedder(16)
    client = (
        QdrantClient(path=str(tmp_path / "q")) if location == "local" else QdrantClient(":memory:")
    )
    index = QdrantIndex(client, "notes", "content", embedder=embedder, name="vectors")
    storage = storage_class(tmp_path / "facts.db", name="facts")
    log = SQLiteDecisionLog(tmp_path / "log.db")
    mem = MemoryStore(storage, [index], log=log, fault_hook=hook)
    ids = [mem.commit(Fact(type="note", payload={"content": f"note {n}"})) for n in range(10)]
    decided = []
    for n, fact_id in enumerate(ids):
        txid = new_txid(now=time.time() - 60)
        writes: list[Write]
        vector_writes: list[Write]
        if n == 9:
            tombstone = FactRecord(fact_id, "note", {}, 2, txid=txid, deleted=True)
            writes = vector_writes = [DeleteFact(fact_id, 1, tombstone)]
        else:
            fact = FactRecord(fact_id, "note", {"content": f"revised {n}"}, 2, txid=txid)
            vector = tuple(embedder.embed([f"revised {n}"])[0])
            writes = [UpsertFact(fact, 1)]
            vector_writes = [UpsertFact(fact, 1, embedding=vector)]
        storage.prepare(txid, writes)
        index.prepare(txid, vector_writes)
        if n % 2 == 0 or n == 9:
            decided.append(txid)
    log.decide_many([(t, Decision.COMMIT, ("facts", "vectors")) for t in decided])
    return Crashed(mem, storage, index, ids, decided)


@pytest.mark.parametrize("location", ["local", "memory"])
def test_batched_recovery_commits_and_aborts_like_one_by_one(tmp_path: Path, location: str) -> None:
    resolves: list[str] = []
    state = crashed(tmp_path, location, hook=lambda p: resolves.append(p))
    resolves.clear()
    state.recover()
    # One call per participant and outcome, not one per branch.
    assert sorted(p for p in resolves if p.startswith("recovery_before_resolve")) == sorted(
        [f"recovery_before_resolve:{p}" for p in ("facts", "vectors") for _ in range(2)]
    )
    state.check_resolved()
    # Resolving again is harmless (idempotent).
    state.storage.commit_many(state.decided)
    state.index.commit_many(state.decided)
    state.check_resolved()
    state.mem.close()


def test_a_failing_batch_is_resolved_one_by_one(tmp_path: Path) -> None:
    seen: list[str] = []
    state = crashed(tmp_path, storage_class=BatchRefusingStorage, hook=seen.append)
    seen.clear()
    state.recover()
    commits_one_by_one = [p for p in seen if p == "recovery_before_resolve:facts"]
    assert len(commits_one_by_one) == 1 + 1 + len(state.decided)  # abort batch, failed batch
    state.check_resolved()
    state.mem.close()


@pytest.mark.parametrize(
    "point", ["recovery_after_resolve:facts", "recovery_before_resolve:vectors"]
)
def test_a_crash_inside_a_batch_is_finished_by_the_next_pass(tmp_path: Path, point: str) -> None:
    crash = CrashAt(None)
    state = crashed(tmp_path, hook=crash)
    crash.point = point
    with pytest.raises(SimulatedCrash):
        state.recover()
    state.recover()
    state.check_resolved()
    state.mem.close()


def test_a_batch_releases_each_branchs_locks_through_an_index(tmp_path: Path) -> None:
    """Resolving n branches deletes their lock rows by txid n times: each delete must use
    an index, or a recovery of thousands of branches scans the lock tables thousands of
    times (asked of SQLite's own query planner, on the file the storage made)."""
    storage = SQLiteStorage(tmp_path / "facts.db")
    storage.prepare(new_txid(), [UpsertFact(FactRecord("a", "note", {"content": "x"}, 1), 0)])
    storage.close()
    for table in ("lockstep_locks", "lockstep_claim_locks", "lockstep_staged"):
        plan = rows(
            tmp_path / "facts.db", f"EXPLAIN QUERY PLAN DELETE FROM {table} WHERE txid = ?", ("t",)
        )
        assert any("USING" in str(row[-1]) and "INDEX" in str(row[-1]) for row in plan), plan
