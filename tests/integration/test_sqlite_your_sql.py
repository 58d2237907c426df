"""Your own SQL in a SQLite storage's transaction (``tx.execute``): it commits with the
memory in one local transaction, or nothing of the transaction lands anywhere.

Assertions read the SQLite file itself (your table, Lockstep's tables, the schema) and
the Qdrant index's points.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import QdrantClient

from coordinator import (
    AsyncMemoryStore,
    Fact,
    MemoryStore,
    TransactionAborted,
    UsageError,
    VersionConflict,
    new_txid,
)
from coordinator.embeddings import HashingEmbedder
from coordinator.faults import last_resource_points
from coordinator.log import SQLiteDecisionLog
from coordinator.records import Execute, TransactionMeta
from participants.qdrant import QdrantIndex
from participants.sqlite import SQLiteStorage
from tests.integration.test_sqlite_group_commit import committer_of, upsert
from tests.integration.test_write_combining import queue_behind
from tests.support.crash import abandon
from tests.support.sqlite import rows

EMBEDDER = HashingEmbedder(16)
ORDERS = "CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL UNIQUE)"


class Crash(BaseException):
    """The agent dies here."""


def index(directory: Path) -> QdrantIndex:
    client = QdrantClient(path=str(directory / "vectors"))
    return QdrantIndex(client, "notes", "content", embedder=EMBEDDER, owns_client=True)


@pytest.fixture
def mem(tmp_path: Path) -> Iterator[MemoryStore]:
    """The embedded default (SQLite + Qdrant local, the storage as last resource), with
    an ``orders`` table holding ``"first"``."""
    store = MemoryStore.open(tmp_path / "memory", embedder=EMBEDDER)
    with store.transaction() as tx:
        tx.execute("facts", ORDERS)
        tx.execute("facts", "INSERT INTO orders (item) VALUES (?)", ["first"])
    yield store
    store.close()


def facts_db(mem: MemoryStore) -> Path:
    return Path(mem.storage.store.path)  # type: ignore[attr-defined]


def everything(mem: MemoryStore) -> tuple[object, ...]:
    """What every store holds: your table, the schema, Lockstep's facts, history,
    transaction log and decisions, and the index's points."""
    db = facts_db(mem)
    contents = mem.indexes[0].contents()
    return (
        rows(db, "SELECT id, item FROM orders ORDER BY id"),
        rows(db, "SELECT type, name, sql FROM sqlite_master ORDER BY name"),
        rows(db, "SELECT id, version, record FROM lockstep_facts ORDER BY id"),
        rows(db, "SELECT id, version, record FROM lockstep_fact_history ORDER BY id, version"),
        rows(db, "SELECT txid, kind FROM lockstep_transactions ORDER BY seq"),
        rows(db, "SELECT txid, decision FROM lockstep_decisions ORDER BY txid"),
        dict(contents.committed),
        contents.pending,
    )


def test_your_sql_commits_in_the_same_transaction_as_the_memory(mem: MemoryStore) -> None:
    with mem.transaction(session_id="s1") as tx:
        fid = tx.commit(Fact(type="note", payload={"content": "ordered a lamp"}))
        tx.execute("facts", "INSERT INTO orders (item) VALUES (:item)", {"item": "lamp"})
        # Reading Lockstep's tables is allowed (writing them is not).
        tx.execute(
            "facts",
            "INSERT INTO orders (item) SELECT 'facts: ' || count(*) FROM lockstep_facts",
        )
    db = facts_db(mem)
    assert rows(db, "SELECT item FROM orders ORDER BY id") == [
        ("first",),
        ("lamp",),
        ("facts: 1",),  # the statement ran after the memory's own writes
    ]
    assert mem.get(fid)["payload"] == {"content": "ordered a lamp"}  # type: ignore[index]
    assert mem.indexes[0].contents().committed == {fid: 1}
    [(txid,)] = rows(db, "SELECT txid FROM lockstep_transactions WHERE session_id = 's1'")
    assert rows(db, f"SELECT decision FROM lockstep_decisions WHERE txid = '{txid}'") == [
        ("commit",)
    ]
    assert mem.verify().clean


# (statement, params, error, message)
REFUSED = [
    ("INSERT INTO orders (item) VALUES (?)", ["first"], TransactionAborted, "UNIQUE"),
    ("INSERT INTO no_such_table VALUES (1)", (), UsageError, "no such table"),
    ("INSERT INTO orders (item) VALUES (", (), UsageError, "incomplete input"),
    ("INSERT INTO orders (item) VALUES (?)", [["a list"]], UsageError, "binding parameter"),
    ("INSERT INTO orders (item) VALUES (?)", [], UsageError, "bindings supplied"),
    (
        "INSERT INTO orders (item) VALUES ('x'); DELETE FROM orders",
        (),
        UsageError,
        "one statement at a time",
    ),
    ("COMMIT", (), UsageError, "may not begin, commit or roll back"),
    ("ROLLBACK", (), UsageError, "may not begin, commit or roll back"),
    ("SAVEPOINT mine", (), UsageError, "may not use savepoints"),
    ("PRAGMA synchronous = OFF", (), UsageError, "may not run a PRAGMA"),
    ("ATTACH DATABASE ':memory:' AS other", (), UsageError, "may not attach"),
    ("DELETE FROM lockstep_facts", (), UsageError, "may not change Lockstep's lockstep_facts"),
    ("UPDATE lockstep_decisions SET decision = 'abort'", (), UsageError, "lockstep_decisions"),
    ("DROP TABLE lockstep_fact_history", (), UsageError, "lockstep_fact_history"),
    ("ALTER TABLE lockstep_facts ADD COLUMN mine TEXT", (), UsageError, "lockstep_facts"),
    ("CREATE INDEX lockstep_mine ON orders (item)", (), UsageError, "lockstep_mine"),
    ("CREATE TEMP TABLE lockstep_facts (id TEXT)", (), UsageError, "temp schema"),
    (
        "CREATE TRIGGER wipe AFTER INSERT ON orders BEGIN DELETE FROM lockstep_facts; END",
        (),
        UsageError,
        "may not create a trigger",
    ),
]


def refused_beside_a_memory(
    mem: MemoryStore,
    snapshot: Callable[[MemoryStore], object],
    participant: str,
    good: str,
    bad: tuple[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    """A transaction changing a fact, adding one and running ``good`` then ``bad`` fails
    with ``error`` naming the second statement, and leaves every store as ``snapshot``
    saw it before."""
    mem.commit(Fact(id="kept", type="note", payload={"content": "before"}))
    before = snapshot(mem)
    with pytest.raises(error, match=message) as caught, mem.transaction() as tx:
        tx.update("kept", {"payload": {"content": "after"}})
        tx.commit(Fact(id="new", type="note", payload={"content": "never"}))
        tx.execute(participant, good)
        tx.execute(participant, *bad)
    assert "your SQL failed (statement 2 of 2" in str(caught.value)
    # A constraint of your table is not a conflict over a fact (Postgres used to say so).
    assert not isinstance(caught.value, VersionConflict)
    assert snapshot(mem) == before


@pytest.mark.parametrize(("sql", "params", "error", "message"), REFUSED)
def test_a_refused_statement_leaves_every_store_as_it_was(
    mem: MemoryStore, sql: str, params: Any, error: type[Exception], message: str
) -> None:
    good = "INSERT INTO orders (item) VALUES ('undone')"
    refused_beside_a_memory(mem, everything, "facts", good, (sql, params), error, message)
    # The connection is as it was: later transactions commit, with and without SQL.
    with mem.transaction() as tx:
        tx.commit(Fact(id="later", type="note", payload={"content": "still works"}))
        tx.execute("facts", "INSERT INTO orders (item) VALUES ('later')")
    assert rows(facts_db(mem), "SELECT item FROM orders ORDER BY id") == [
        ("first",),
        ("later",),
    ]
    assert mem.verify().clean


def test_a_refused_statement_fails_its_own_transaction_in_a_group_commit(
    tmp_path: Path,
) -> None:
    storage = SQLiteStorage(tmp_path / "facts.db")
    storage.commit_one_phase(new_txid(), [Execute(ORDERS), TransactionMeta()])
    committer = committer_of(storage)
    calls = committer.calls
    first, clash, last = new_txid(), new_txid(), new_txid()

    def commit(txid: str, fact_id: str, item: str) -> None:
        insert = Execute("INSERT INTO orders (item) VALUES (?)", [item])
        storage.commit_one_phase(txid, [upsert(fact_id, 1, item), insert])

    outcome = queue_behind(
        committer,
        {
            first: functools.partial(commit, first, "a", "lamp"),
            clash: functools.partial(commit, clash, "b", "lamp"),  # the same item
            last: functools.partial(commit, last, "c", "desk"),
        },
    )
    assert outcome[first] is None and outcome[last] is None, outcome
    assert isinstance(outcome[clash], TransactionAborted), outcome
    assert "UNIQUE constraint failed: orders.item" in str(outcome[clash])
    assert committer.calls == calls + 4, "the batch failed, then each committed on its own"
    db = tmp_path / "facts.db"
    assert rows(db, "SELECT item FROM orders ORDER BY item") == [("desk",), ("lamp",)]
    assert rows(db, "SELECT id FROM lockstep_facts ORDER BY id") == [("a",), ("c",)]
    storage.close()


def test_sql_is_refused_where_sqlite_would_have_to_prepare_it(tmp_path: Path) -> None:
    # With the decision log in another file, a transaction that also writes the index
    # prepares the storage in two phases: SQLite cannot hold a statement prepared.
    db = tmp_path / "facts.db"
    mem = MemoryStore(
        SQLiteStorage(db, name="facts"),
        [index(tmp_path)],
        log=SQLiteDecisionLog(tmp_path / "decisions.db"),
    )
    assert mem.policy.last_resource is None
    refused = pytest.raises(UsageError, match="cannot keep a statement's effects prepared")
    with refused, mem.transaction() as tx:
        tx.commit(Fact(id="f", type="note", payload={"content": "with an index write"}))
        tx.execute("facts", ORDERS)
    assert mem.get("f") is None
    assert mem.indexes[0].contents().committed == {}
    assert mem.indexes[0].contents().pending == ()
    assert mem.storage.recover() == []
    assert rows(db, "SELECT name FROM sqlite_master WHERE name = 'orders'") == []
    # Refused by the participant itself, with nothing staged.
    with pytest.raises(UsageError, match="only when it commits in one local transaction"):
        mem.storage.prepare(new_txid(), [Execute(ORDERS)])
    assert mem.storage.recover() == []
    # SQL alone writes the storage alone: a one-phase commit, where it runs.
    with mem.transaction() as tx:
        tx.execute("facts", ORDERS)
    assert rows(db, "SELECT name FROM sqlite_master WHERE name = 'orders'") == [("orders",)]
    mem.close()


@pytest.mark.parametrize("point", last_resource_points(["facts", "qdrant:notes"], "facts"))
def test_a_crash_at_any_point_keeps_your_row_and_the_memory_together(
    tmp_path: Path, point: str
) -> None:
    directory = tmp_path / "memory"
    with MemoryStore.open(directory, embedder=EMBEDDER) as setup, setup.transaction() as tx:
        tx.execute("facts", ORDERS)

    def die(at: str) -> None:
        if at == point:
            raise Crash

    mem = MemoryStore.open(directory, embedder=EMBEDDER, fault_hook=die)
    try:
        with mem.transaction() as tx:
            tx.commit(Fact(id="m", type="note", payload={"content": "ordered a lamp"}))
            tx.execute("facts", "INSERT INTO orders (item) VALUES ('lamp')")
    except Crash:
        pass
    abandon(mem)

    again = MemoryStore.open(directory, embedder=EMBEDDER)  # recovers first
    ordered = rows(facts_db(again), "SELECT item FROM orders") == [("lamp",)]
    remembered = again.get("m") is not None
    assert ordered == remembered, (point, ordered, remembered)
    assert again.indexes[0].contents().committed == ({"m": 1} if remembered else {})
    assert again.verify().clean
    again.close()


def test_the_async_store_runs_your_sql_too(tmp_path: Path) -> None:
    async def main() -> None:
        mem = await AsyncMemoryStore.open(tmp_path / "memory", embedder=EMBEDDER)
        async with mem.transaction() as tx:
            fid = await tx.commit(Fact(type="note", payload={"content": "async lamp"}))
            tx.execute("facts", ORDERS)
            tx.execute("facts", "INSERT INTO orders (item) VALUES (?)", ["lamp"])
        with pytest.raises(TransactionAborted, match="UNIQUE"):
            async with mem.transaction() as tx:
                await tx.commit(Fact(id="no", type="note", payload={"content": "lost"}))
                tx.execute("facts", "INSERT INTO orders (item) VALUES (?)", ["lamp"])
        assert await mem.get("no") is None
        assert (await mem.indexes[0].contents()).committed == {fid: 1}
        await mem.close()

    asyncio.run(main())
    assert rows(tmp_path / "memory" / "facts.db", "SELECT item FROM orders") == [("lamp",)]
