"""Recovery resolves many branches of one participant in one step (SQLite, Qdrant), with
the same outcome as one by one."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from qdrant_client import QdrantClient

from coordinator import Fact, FactRecord, MemoryStore, UpsertFact, new_txid
from coordinator.abc import Decision
from coordinator.embeddings import HashingEmbedder
from coordinator.log import SQLiteDecisionLog
from coordinator.records import DeleteFact
from participants.qdrant import QdrantIndex
from participants.sqlite import SQLiteStorage


@pytest.mark.parametrize("location", ["local", "memory"])
def test_batched_recovery_commits_and_aborts_like_one_by_one(tmp_path: Path, location: str) -> None:
    embedder = HashingEmbedder(16)
    client = (
        QdrantClient(path=str(tmp_path / "q")) if location == "local" else QdrantClient(":memory:")
    )
    index = QdrantIndex(client, "notes", "content", embedder=embedder, name="vectors")
    storage = SQLiteStorage(tmp_path / "facts.db", name="facts")
    log = SQLiteDecisionLog(tmp_path / "log.db")
    resolves: list[str] = []

    def count(point: str) -> None:
        if point.startswith("recovery_before_resolve"):
            resolves.append(point)

    mem = MemoryStore(storage, [index], log=log, fault_hook=count)
    ids = [mem.commit(Fact(type="note", payload={"content": f"note {n}"})) for n in range(10)]

    # A crash leaves ten transactions prepared everywhere; the even ones were decided.
    decided = []
    for n, fact_id in enumerate(ids):
        txid = new_txid(now=time.time() - 60)
        if n == 9:
            tombstone = FactRecord(fact_id, "note", {}, 2, txid=txid, deleted=True)
            writes: list[object] = [DeleteFact(fact_id, 1, tombstone)]
            storage.prepare(txid, writes)  # type: ignore[arg-type]
            index.prepare(txid, writes)  # type: ignore[arg-type]
        else:
            fact = FactRecord(fact_id, "note", {"content": f"revised {n}"}, 2, txid=txid)
            vector = tuple(embedder.embed([f"revised {n}"])[0])
            storage.prepare(txid, [UpsertFact(fact, 1)])
            index.prepare(txid, [UpsertFact(fact, 1, embedding=vector)])
        if n % 2 == 0 or n == 9:
            decided.append((txid, Decision.COMMIT, ("facts", "vectors")))
    log.decide_many(decided)

    report = mem.coordinator_with(in_doubt_timeout=0.001, redrive_after=0.0).recover()
    assert report.clean
    # One call per participant and outcome, not one per branch.
    assert sorted(resolves) == sorted(
        [f"recovery_before_resolve:{p}" for p in ("facts", "vectors") for _ in range(2)]
    )
    expected = {fid: 2 if n % 2 == 0 else 1 for n, fid in enumerate(ids) if n != 9}
    assert {f.id: f.version for f in storage.all_facts()} == expected
    assert index.contents().committed == expected
    assert storage.get(ids[0]).payload == {"content": "revised 0"}  # type: ignore[union-attr]
    assert storage.get(ids[1]).payload == {"content": "note 1"}  # type: ignore[union-attr]
    assert storage.recover() == [] and index.recover() == []
    assert mem.verify().clean
    # Resolving again is harmless (idempotent), and aborted branches stay fenced.
    storage.commit_many([t for t, _, _ in decided])
    index.commit_many([t for t, _, _ in decided])
    assert index.contents().committed == expected
    mem.close()
