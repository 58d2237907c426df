"""Your own SQL in a Postgres branch (``tx.execute``), as a prepared branch and as the
last resource: a statement that would end Lockstep's transaction is refused before it
runs, and a statement that fails leaves every store as it was, with an error that says
which statement and why.

Assertions read Postgres itself (your table, Lockstep's tables, prepared transactions,
the pooled connections' settings) and the index's points.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from coordinator import (
    Fact,
    MemoryStore,
    Policy,
    TransactionAborted,
    UsageError,
)
from participants.postgres._your_sql import leading_words, refusal
from tests.integration.test_last_resource import LAST, store
from tests.integration.test_sqlite_your_sql import refused_beside_a_memory

POLICIES = {"prepared branch": Policy(), "last resource": LAST}


def rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture(params=list(POLICIES))
def mem(request: pytest.FixtureRequest, postgres_dsn: str) -> Iterator[MemoryStore]:
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL)")
        conn.execute("INSERT INTO orders VALUES (1, 'open')")
    m = store(postgres_dsn)
    m.coordinator._policy = POLICIES[request.param]
    m.dsn = postgres_dsn  # type: ignore[attr-defined]
    yield m
    m.close()


def everything(mem: MemoryStore) -> tuple[object, ...]:
    dsn: str = mem.dsn  # type: ignore[attr-defined]
    contents = mem.indexes[0].contents()
    return (
        rows(dsn, "SELECT id, status FROM orders ORDER BY id"),
        rows(dsn, "SELECT id, version, record FROM lockstep_facts ORDER BY id"),
        rows(dsn, "SELECT txid, kind FROM lockstep_transactions ORDER BY txid"),
        rows(dsn, "SELECT txid, decision FROM lockstep_decisions ORDER BY txid"),
        rows(dsn, "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"),
        dict(contents.committed),
        contents.pending,
    )


# (statement, params, error, message)
REFUSED = [
    ("COMMIT", (), UsageError, "may not begin, commit or roll back"),
    ("rollback", (), UsageError, "may not begin, commit or roll back"),
    ("/* a note */ -- and another\n  BEGIN", (), UsageError, "may not begin, commit"),
    ("SAVEPOINT mine", (), UsageError, "may not begin, commit"),
    ("PREPARE TRANSACTION 'mine'", (), UsageError, "may not begin, commit"),
    ("SET search_path TO elsewhere", (), UsageError, "use SET LOCAL"),
    ("RESET ALL", (), UsageError, "session setting with RESET"),
    ("SELECT 1; COMMIT", (), UsageError, "multiple commands"),
    ("DO $$ BEGIN COMMIT; END $$", (), UsageError, "invalid transaction termination"),
    ("UPDATE no_such_table SET x = 1", (), UsageError, "does not exist"),
    ("UPDATE orders SET status = %s", {"status": "x"}, UsageError, "require a sequence"),
    ("UPDATE orders SET status = %s", [{"a": 1}], UsageError, "cannot adapt type 'dict'"),
    ("SELECT 1 / 0", (), UsageError, "division by zero"),
    ("INSERT INTO orders VALUES (1, 'again')", (), TransactionAborted, "orders_pkey"),
    ("UPDATE orders SET status = NULL", (), TransactionAborted, "not-null"),
]


@pytest.mark.parametrize(("sql", "params", "error", "message"), REFUSED)
def test_a_refused_statement_leaves_every_store_as_it_was(
    mem: MemoryStore, sql: str, params: Any, error: type[Exception], message: str
) -> None:
    good = "UPDATE orders SET status = 'undone'"
    refused_beside_a_memory(mem, everything, "postgres", good, (sql, params), error, message)
    # Every pooled connection still has Lockstep's settings, and later commits work.
    with mem.transaction() as tx:
        tx.commit(Fact(id="later", type="note", payload={"content": "still works"}))
        tx.execute("postgres", "UPDATE orders SET status = %s WHERE id = %s", ["paid", 1])
    assert rows(mem.dsn, "SELECT status FROM orders") == [("paid",)]  # type: ignore[attr-defined]
    assert set(mem.indexes[0].contents().committed) == {"kept", "later"}
    assert mem.verify().clean


def test_transaction_scoped_settings_and_deferred_constraints_run(mem: MemoryStore) -> None:
    with mem.transaction() as tx:
        tx.commit(Fact(id="f", type="note", payload={"content": "with local settings"}))
        tx.execute("postgres", "SET LOCAL statement_timeout = '5s'")
        tx.execute("postgres", "SET CONSTRAINTS ALL DEFERRED")
        tx.execute("postgres", "UPDATE orders SET status = 'paid'")
    assert rows(mem.dsn, "SELECT status FROM orders") == [("paid",)]  # type: ignore[attr-defined]
    assert mem.get("f") is not None
    assert mem.verify().clean


def test_leading_words_skip_comments_and_stop_at_quotes() -> None:
    assert leading_words("  /* a /* nested */ note */ commit -- x", 2) == ["COMMIT"]
    assert leading_words("-- only a comment", 2) == []
    assert leading_words("prepare transaction 'x'", 3) == ["PREPARE", "TRANSACTION"]
    assert leading_words("'COMMIT'", 2) == []
    assert refusal("PREPARE stmt AS SELECT 1") is None  # a prepared statement, not a branch
    assert refusal("end") is not None
    assert refusal("START TRANSACTION") is not None
    assert refusal("SET LOCAL lock_timeout = '1s'") is None
    assert refusal("SET SESSION lock_timeout = '1s'") is not None
    assert refusal("UPDATE orders SET status = 'commit'") is None
