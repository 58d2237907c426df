"""A KeyboardInterrupt (Ctrl-C) landing inside a SQLite write, at the worst moment.

Python raises it between any two bytecodes, so a write transaction can be interrupted the
moment its ``BEGIN`` returns, before any handler is in place. The tests raise it exactly
there, from a profile hook on the C call's return (where the interpreter would deliver a
pending signal), and check the connection did not stay inside the transaction: holding
the file's write lock against every other process, refusing the next commit ("cannot
start a transaction within a transaction") and showing its rows to reads.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from coordinator import Decision, new_txid
from coordinator.log import SQLiteDecisionLog
from coordinator.records import FactRecord, UpsertFact
from participants.sqlite import SQLiteStorage


@contextmanager
def interrupted_when_begun(conn: sqlite3.Connection) -> Iterator[list[bool]]:
    """Raise KeyboardInterrupt once, as the first ``execute`` that opens a transaction on
    ``conn`` returns (in this thread)."""
    fired: list[bool] = []

    def hook(frame: Any, event: str, arg: Any) -> None:
        executed = event == "c_return" and getattr(arg, "__name__", "") == "execute"
        if executed and not fired and conn.in_transaction:
            fired.append(True)
            raise KeyboardInterrupt

    sys.setprofile(hook)
    try:
        yield fired
    finally:
        sys.setprofile(None)


def note(fact_id: str, text: str) -> UpsertFact:
    return UpsertFact(FactRecord(fact_id, "note", {"content": text}, version=1), 0)


def test_a_commit_interrupted_as_it_begins_leaves_no_transaction_open(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "facts.db", name="facts", group_commit=False)
    with interrupted_when_begun(storage.store._conn) as fired, pytest.raises(KeyboardInterrupt):
        storage.commit_one_phase(new_txid(), [note("a", "interrupted")])
    assert fired == [True]
    assert storage.get("a") is None  # nothing of it committed, nor readable
    # Another process's store writes at once: the write lock was let go.
    other = SQLiteStorage(tmp_path / "facts.db", name="facts", busy_timeout=0.5)
    other.commit_one_phase(new_txid(), [note("b", "from the other store")])
    other.close()
    storage.commit_one_phase(new_txid(), [note("a", "after the interrupt")])
    record = storage.get("a")
    assert record is not None and record.payload == {"content": "after the interrupt"}
    assert storage.get("b") is not None
    storage.close()


def test_a_prepare_interrupted_as_it_begins_leaves_no_transaction_open(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "facts.db", name="facts")
    txid = new_txid()
    with interrupted_when_begun(storage.store._conn), pytest.raises(KeyboardInterrupt):
        storage.prepare(txid, [note("a", "interrupted")])
    assert storage.recover() == []  # nothing staged
    other = SQLiteStorage(tmp_path / "facts.db", name="facts", busy_timeout=0.5)
    assert other.prepare(new_txid(), [note("b", "from the other store")]).name == "YES"
    other.close()
    storage.close()


def test_a_decision_interrupted_as_it_begins_leaves_the_log_usable(tmp_path: Path) -> None:
    log = SQLiteDecisionLog(tmp_path / "log.db", group_commit=False)
    txid = new_txid()
    decide: Callable[[], Decision] = lambda: log.decide(txid, Decision.COMMIT, ["facts"])
    with interrupted_when_begun(log._conn), pytest.raises(KeyboardInterrupt):
        decide()
    other = SQLiteDecisionLog(tmp_path / "log.db", busy_timeout=0.5)
    assert other.decide(txid, Decision.ABORT, ["facts"]) is Decision.ABORT  # it was not recorded
    other.close()
    assert decide() is Decision.ABORT  # and this log reads the winner
    log.close()


def test_a_transaction_left_open_is_rolled_back_before_the_next_read_or_write(
    tmp_path: Path,
) -> None:
    """Should an interrupt still leave one open (between a ``with`` statement's enter and
    its block), the next read on the connection does not see its rows and the next write
    begins afresh."""
    storage = SQLiteStorage(tmp_path / "facts.db", name="facts", group_commit=False)
    storage.commit_one_phase(new_txid(), [note("a", "committed")])
    conn = storage.store._conn
    conn.execute("BEGIN IMMEDIATE")  # as an interrupted commit would leave it
    conn.execute("UPDATE lockstep_facts SET record = '{}' WHERE id = 'a'")
    record = storage.get("a")
    assert record is not None and record.payload == {"content": "committed"}
    assert not conn.in_transaction
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("DELETE FROM lockstep_facts WHERE id = 'a'")
    storage.commit_one_phase(new_txid(), [note("b", "next")])
    assert storage.get("a") is not None and storage.get("b") is not None
    storage.close()
