"""SQLite as the last resource: the decision log in the storage's own file, the COMMIT
record written in the same local transaction as the facts (one fsync, no PREPARE there).
Every test reads the SQLite file itself (a recoverer fencing the commit first:
``test_last_resource.py``, for Postgres and SQLite)."""

from __future__ import annotations

from pathlib import Path

import pytest
from qdrant_client import QdrantClient

from coordinator import Fact, MemoryStore, Policy
from coordinator.embeddings import HashingEmbedder
from coordinator.faults import last_resource_points
from coordinator.log import SQLiteDecisionLog
from participants.qdrant import QdrantIndex
from participants.sqlite import SQLiteStorage
from tests.support.crash import abandon
from tests.support.sqlite import rows

EMBEDDER = HashingEmbedder(16)


def index(tmp_path: Path) -> QdrantIndex:
    client = QdrantClient(path=str(tmp_path / "vectors"))
    return QdrantIndex(client, "notes", "content", embedder=EMBEDDER, owns_client=True)


class Crash(BaseException):
    """The agent dies here."""


def test_without_a_log_sqlite_commits_its_facts_and_the_decision_together(
    tmp_path: Path,
) -> None:
    facts = tmp_path / "facts.db"
    prepared_at_decision: list[list[tuple[object, ...]]] = []

    def look(point: str) -> None:
        if point == "before_decision":
            prepared_at_decision.append(rows(facts, "SELECT txid FROM lockstep_prepared"))

    mem = MemoryStore(SQLiteStorage(facts, name="facts"), [index(tmp_path)], fault_hook=look)
    assert mem.policy.last_resource == "facts"
    fid = mem.commit(Fact(type="note", payload={"content": "one write, one decision"}))
    assert prepared_at_decision == [[]]  # the storage never prepared
    assert rows(facts, "SELECT decision, participants FROM lockstep_decisions") == [
        ("commit", '["qdrant:notes", "facts"]')
    ]
    assert not Path(f"{facts}.decisions").exists()
    assert mem.indexes[0].contents().committed == {fid: 1}
    assert mem.verify().clean
    mem.close()


def test_a_crash_after_the_decision_is_finished_from_the_same_file(tmp_path: Path) -> None:
    facts = tmp_path / "facts.db"

    def die(point: str) -> None:
        if point == "after_decision":
            raise Crash

    mem = MemoryStore(SQLiteStorage(facts, name="facts"), [index(tmp_path)], fault_hook=die)
    with pytest.raises(Crash):
        mem.commit(Fact(id="kept", type="note", payload={"content": "decided, then died"}))
    abandon(mem)
    [(txid,)] = rows(facts, "SELECT txid FROM lockstep_decisions WHERE decision = 'commit'")

    again = MemoryStore(SQLiteStorage(facts, name="facts"), [index(tmp_path)])
    assert again.get("kept") is not None  # committed with the decision
    assert again.indexes[0].recover() == [txid]  # the index still holds it staged
    again.coordinator_with(redrive_after=0).recover()
    assert again.indexes[0].contents().committed == {"kept": 1}
    assert again.verify().clean
    again.close()


def test_a_log_file_beside_the_store_stays_in_use(tmp_path: Path) -> None:
    facts = tmp_path / "facts.db"
    SQLiteDecisionLog(f"{facts}.decisions").close()  # what an earlier version left
    mem = MemoryStore(SQLiteStorage(facts, name="facts"), [index(tmp_path)])
    assert mem.policy.last_resource is None
    mem.commit(Fact(type="note", payload={"content": "decided in the old file"}))
    assert len(rows(Path(f"{facts}.decisions"), "SELECT txid FROM lockstep_decisions")) == 1
    mem.close()


def test_the_embedded_default_keeps_its_decisions_in_facts_db(tmp_path: Path) -> None:
    mem = MemoryStore.open(tmp_path / "memory", embedder=EMBEDDER)
    mem.commit(Fact(type="note", payload={"content": "embedded"}))
    mem.close()
    assert not (tmp_path / "memory" / "decisions.db").exists()
    decided = rows(tmp_path / "memory" / "facts.db", "SELECT decision FROM lockstep_decisions")
    assert decided == [("commit",)]
    # A stray decisions.db does not move a store that keeps its own log.
    SQLiteDecisionLog(tmp_path / "memory" / "decisions.db").close()
    mem = MemoryStore.open(tmp_path / "memory", embedder=EMBEDDER)
    assert mem.policy.last_resource == "facts"
    mem.close()
    # A directory made by an earlier version goes on with its decisions.db.
    old = tmp_path / "old"
    old.mkdir()
    SQLiteDecisionLog(old / "decisions.db").close()
    mem = MemoryStore.open(old, embedder=EMBEDDER, policy=Policy())
    assert mem.policy.last_resource is None
    mem.commit(Fact(type="note", payload={"content": "old layout"}))
    mem.close()
    assert len(rows(old / "decisions.db", "SELECT txid FROM lockstep_decisions")) == 1


def test_a_last_resource_commit_passes_exactly_its_named_points(tmp_path: Path) -> None:
    seen: list[str] = []
    mem = MemoryStore(
        SQLiteStorage(tmp_path / "facts.db", name="facts"),
        [index(tmp_path)],
        fault_hook=seen.append,
    )
    mem.commit(Fact(type="note", payload={"content": "every point once"}))
    mem.close()
    assert seen == last_resource_points(["facts", "qdrant:notes"], "facts")
