"""Group commit of the SQLite storage's local commits (one-phase and last resource).

Each test holds the group committer's turn while transactions queue behind it, so the
batch the next turn commits is known exactly; assertions read the SQLite file itself.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from coordinator import (
    ConfigurationError,
    ParticipantError,
    TransactionAborted,
    VersionConflict,
    new_txid,
)
from coordinator.abc import Decision
from coordinator.log import SQLiteDecisionLog
from coordinator.plugins import open_participant
from coordinator.records import FactRecord, UpsertFact
from participants._sync.combine import WriteCombiner
from participants.sqlite import SQLiteStorage
from tests.integration.test_write_combining import queue_behind
from tests.support.sqlite import rows, sqlite_file
from tests.support.threads import within

T = TypeVar("T")


def upsert(fact_id: str, version: int, text: str) -> UpsertFact:
    return UpsertFact(FactRecord(fact_id, "note", {"content": text}, version), version - 1)


def committer_of(storage: SQLiteStorage) -> WriteCombiner[object]:
    combiner = storage.store.local_commits
    assert combiner is not None
    return combiner  # type: ignore[return-value]


def test_queued_commits_share_one_local_transaction(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "facts.db")
    committer = committer_of(storage)
    calls = committer.calls
    txids = [new_txid() for _ in range(4)]
    outcome = queue_behind(
        committer,
        {
            txid: functools.partial(storage.commit_one_phase, txid, [upsert(f"f{i}", 1, "x")])
            for i, txid in enumerate(txids)
        },
    )
    assert outcome == dict.fromkeys(txids)
    assert committer.calls == calls + 1, "four commits, one transaction"
    assert rows(tmp_path / "facts.db", "SELECT id, version FROM lockstep_facts ORDER BY id") == [
        (f"f{i}", 1) for i in range(4)
    ]
    assert sorted(
        t for (t,) in rows(tmp_path / "facts.db", "SELECT txid FROM lockstep_transactions")
    ) == sorted(txids)
    storage.close()


def test_a_refused_commit_fails_alone_and_its_batch_mates_land(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "facts.db")
    storage.commit_one_phase(new_txid(), [upsert("old", 1, "first version")])
    committer = committer_of(storage)
    calls = committer.calls
    first, stale, last = new_txid(), new_txid(), new_txid()
    outcome = queue_behind(
        committer,
        {
            first: functools.partial(storage.commit_one_phase, first, [upsert("a", 1, "a")]),
            # Expects version 0 of a fact at version 1: a version conflict.
            stale: functools.partial(storage.commit_one_phase, stale, [upsert("old", 1, "lost")]),
            last: functools.partial(storage.commit_one_phase, last, [upsert("c", 1, "c")]),
        },
    )
    assert outcome[first] is None and outcome[last] is None, outcome
    assert isinstance(outcome[stale], VersionConflict), outcome
    assert committer.calls == calls + 4, "the batch failed, then each committed on its own"
    facts = dict(
        rows(
            tmp_path / "facts.db",
            "SELECT id, json_extract(record, '$.payload.content') FROM lockstep_facts",
        )
    )
    assert facts == {"old": "first version", "a": "a", "c": "c"}
    storage.close()


def test_a_decision_fenced_by_recovery_fails_alone(tmp_path: Path) -> None:
    """Last resource: a txid recovery already decided ABORT for is refused; the others in
    its batch commit with their COMMIT records."""
    path = tmp_path / "facts.db"
    log = SQLiteDecisionLog(path)
    storage = SQLiteStorage(path, name="facts")
    fenced, kept = new_txid(), new_txid()
    assert log.decide(fenced, Decision.ABORT, ["index", "facts"]) is Decision.ABORT
    committer = committer_of(storage)
    outcome = queue_behind(
        committer,
        {
            txid: functools.partial(
                storage.commit_with_decision, txid, [upsert(txid, 1, "x")], ["index", "facts"]
            )
            for txid in (fenced, kept)
        },
    )
    assert isinstance(outcome[fenced], TransactionAborted), outcome
    assert outcome[kept] is None, outcome
    assert rows(path, "SELECT id FROM lockstep_facts") == [(kept,)]
    assert dict(rows(path, "SELECT txid, decision FROM lockstep_decisions")) == {
        fenced: "abort",
        kept: "commit",
    }
    storage.close()
    log.close()


def test_group_commit_can_be_turned_off(tmp_path: Path) -> None:
    alone = open_participant(f"sqlite:///{tmp_path / 'a.db'}?group_commit=0")
    assert isinstance(alone, SQLiteStorage) and alone.store.local_commits is None
    alone.commit_one_phase(new_txid(), [upsert("f", 1, "still commits")])
    assert rows(tmp_path / "a.db", "SELECT id FROM lockstep_facts") == [("f",)]
    alone.close()
    grouped = open_participant(f"sqlite:///{tmp_path / 'b.db'}")
    assert isinstance(grouped, SQLiteStorage) and grouped.store.local_commits is not None
    grouped.close()
    with pytest.raises(ConfigurationError, match="group_comit"):
        open_participant(f"sqlite:///{tmp_path / 'c.db'}?group_comit=0")


def read_beside_a_commit(storage: SQLiteStorage, read: Callable[[], T]) -> T:
    """``read()`` on another thread while this one holds the writing connection, as a
    commit does through its writes and fsync; fails if the read waits for it, and raises
    what the read raised."""
    with storage.store._lock:
        return within(5, read, "a read waited for the writing connection")


def test_reads_go_on_while_a_commit_holds_the_writing_connection(tmp_path: Path) -> None:
    """Reads of committed data that arrive while a commit holds the writing connection
    take a second one (WAL lets it run beside the commit), so they are not held up; and
    every commit that has returned is visible to it (G4), also after it has read before."""
    storage = SQLiteStorage(tmp_path / "facts.db")
    for version in (1, 2, 3):
        txid = new_txid()
        storage.commit_one_phase(txid, [upsert("a", version, f"v{version}")])
        fact = read_beside_a_commit(storage, lambda: storage.get("a"))
        assert fact == FactRecord("a", "note", {"content": f"v{version}"}, version)
        newest = read_beside_a_commit(storage, lambda: storage.transactions(None, 1))
        assert [t.txid for t in newest] == [txid]
    storage.close()


def test_an_in_memory_store_reads_its_own_database() -> None:
    """A second connection to ``:memory:`` would open another, empty database: there a
    read waits for the writing connection instead."""
    storage = SQLiteStorage(":memory:")
    storage.commit_one_phase(new_txid(), [upsert("a", 1, "kept")])
    got: list[FactRecord | None] = []
    with storage.store._lock:
        reader = threading.Thread(target=lambda: got.append(storage.get("a")))
        reader.start()
        reader.join(timeout=0.2)
        assert reader.is_alive(), "it waits for the commit"
    reader.join(timeout=5)
    assert got == [FactRecord("a", "note", {"content": "kept"}, 1)]
    storage.close()


def test_a_failed_read_names_the_store_and_releases_its_connection(tmp_path: Path) -> None:
    """A read SQLite refuses raises ParticipantError naming the file, on either
    connection, and leaves the connection free for the reads and commits after it."""
    path = tmp_path / "facts.db"
    storage = SQLiteStorage(path)
    storage.commit_one_phase(new_txid(), [upsert("a", 1, "kept")])
    with sqlite_file(path) as conn:
        conn.execute("ALTER TABLE lockstep_facts RENAME TO hidden")
    for read in (lambda: storage.get("a"), lambda: storage.query("note", {}, None)):
        with pytest.raises(
            ParticipantError, match=re.escape(f"SQLite store {path} failed: no such table")
        ):
            read()
        with pytest.raises(ParticipantError, match="no such table"):
            read_beside_a_commit(storage, read)
    with sqlite_file(path) as conn:
        conn.execute("ALTER TABLE hidden RENAME TO lockstep_facts")
    assert storage.get("a") == FactRecord("a", "note", {"content": "kept"}, 1)
    assert read_beside_a_commit(storage, lambda: storage.get("a")) is not None
    storage.commit_one_phase(new_txid(), [upsert("a", 2, "changed")])
    assert [f.payload for f in storage.query("note", {}, None)] == [{"content": "changed"}]
    storage.close()
