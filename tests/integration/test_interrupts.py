"""A KeyboardInterrupt (Ctrl-C) landing inside a SQLite write, at the worst moment; and
Ctrl-C held while a commit runs.

Python raises it between any two bytecodes, so a write transaction can be interrupted the
moment its ``BEGIN`` returns, before any handler is in place. The tests raise it exactly
there, from a profile hook on the C call's return (where the interpreter would deliver a
pending signal), and check the connection did not stay inside the transaction: holding
the file's write lock against every other process, refusing the next commit ("cannot
start a transaction within a transaction") and showing its rows to reads.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from coordinator import Decision, Fact, MemoryStore, Policy, new_txid
from coordinator._acompat import interrupts_held
from coordinator.abc import Vote
from coordinator.embeddings import HashingEmbedder
from coordinator.log import SQLiteDecisionLog
from coordinator.records import FactRecord, UpsertFact, Write
from participants.qdrant import QdrantIndex
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


def test_a_ctrl_c_during_a_commit_lands_after_it(tmp_path: Path) -> None:
    """Pressed while a store is in the middle of its part (here: as the index begins its
    prepare), a Ctrl-C is held until the commit's run of the protocol ends, then raised:
    the commit landed whole, in both stores. Cut inside the store's call instead, Qdrant's
    local mode left its arrays out of step with its ids."""
    mem = MemoryStore.open(tmp_path / "memory", embedder=HashingEmbedder(16))
    index = mem.indexes[0]
    prepare = index.prepare

    def pressed_during(txid: str, writes: Sequence[Write]) -> Vote:
        os.kill(os.getpid(), signal.SIGINT)
        return prepare(txid, writes)

    index.prepare = pressed_during  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        mem.commit(Fact(id="pressed", type="note", payload={"content": "landed whole"}))
    index.prepare = prepare  # type: ignore[method-assign]
    fact = mem.get("pressed")
    assert fact is not None and fact["payload"] == {"content": "landed whole"}
    assert [h.fact["id"] for h in mem.search("landed whole", k=1)] == ["pressed"]
    assert mem.verify().clean
    mem.commit(Fact(id="next", type="note", payload={"content": "and the next one"}))
    assert mem.verify().clean
    mem.close()


def test_held_interrupts_come_after_the_block_and_a_second_press_at_once() -> None:
    finished: list[str] = []
    with pytest.raises(KeyboardInterrupt), interrupts_held():
        os.kill(os.getpid(), signal.SIGINT)
        finished.append("the block")
    assert finished == ["the block"]
    with pytest.raises(KeyboardInterrupt), interrupts_held():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # pressed again: raised here
        finished.append("not reached")
    assert finished == ["the block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts_held():
            os.kill(os.getpid(), signal.SIGINT)
        finished.append("ignored, as the program asked")
    finally:
        signal.signal(signal.SIGINT, ignored)
    assert finished[-1] == "ignored, as the program asked"


def test_a_ctrl_c_during_a_deferred_batch_lands_after_it(tmp_path: Path) -> None:
    """The same for a deferred batch (``flush``): the index marks every queued point
    committed before the Ctrl-C is raised, so nothing is left pending for recovery."""
    mem = MemoryStore.open(
        tmp_path / "memory", embedder=HashingEmbedder(16), policy=Policy(deferred_finish=True)
    )
    ids = [mem.commit(Fact(type="note", payload={"content": f"queued {n}"})) for n in (1, 2)]
    index = mem.indexes[0]
    assert isinstance(index, QdrantIndex)
    assert len(index.contents().pending) == 2  # their points wait for the batch
    commit_many = index.commit_many

    def pressed_during(txids: Sequence[str]) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        commit_many(txids)

    index.commit_many = pressed_during  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        mem.flush()
    index.commit_many = commit_many  # type: ignore[method-assign]
    assert index.contents().pending == ()
    assert index.contents().committed == dict.fromkeys(ids, 1)
    mem.close()
