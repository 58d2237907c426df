"""A rollback finds the writes it may undo through an index of the transaction log, not by
walking the log from its newest end: in a long log, a session that last wrote long ago
would otherwise cost a walk past every later transaction (0.1 ms per thousand on SQLite,
a round trip each on Redis). Stores written by an earlier release, without that index,
get it when they are opened; until then rollbacks still find the right writes."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import psycopg
import pytest
import redis

from chaos.servers import RedisServer
from coordinator import Fact, MemoryStore, TransactionMeta, new_txid
from coordinator.abc import Storage
from participants.postgres import PostgresStorage
from participants.postgres import _schema as SQL
from participants.redis import RedisStorage
from participants.sqlite import SQLiteStorage
from participants.sqlite._store import SELECT_UNDOABLE, SELECT_UNDOABLE_IN_SESSION
from tests.support.crash import upsert
from tests.support.sqlite import sqlite_file

UNDO_INDEXES = ("lockstep_transactions_undoable", "lockstep_transactions_undoable_session")


def write_two_sessions(storage: Storage) -> tuple[str, list[str]]:
    """``quiet`` writes a fact and revises it; ``busy`` then commits 30 facts and rolls
    the last back. Returns the quiet fact's id and the busy session's facts."""
    mem = MemoryStore(storage)
    quiet = mem.commit(Fact(type="note", payload={"content": "v1"}), "quiet")
    mem.update(quiet, {"payload": {"content": "v2"}})
    busy = [mem.commit(Fact(type="note", payload={"content": f"b{i}"}), "busy") for i in range(30)]
    assert mem.rollback(1, "busy") == [busy[-1]]
    mem.close()
    return quiet, busy


def rollbacks_undo_the_right_writes(storage: Storage, quiet: str, busy: list[str]) -> None:
    mem = MemoryStore(storage)
    assert mem.rollback(1, "quiet") == [quiet]
    assert mem.get(quiet)["payload"] == {"content": "v1"}  # type: ignore[index]
    assert mem.rollback(1, "busy") == [busy[-2]]
    # Store-wide: the newest write not rolled back (rollbacks themselves are not undone).
    assert mem.rollback(1) == [busy[-3]]
    assert [f["id"] for f in mem.query(session_id="busy")] == busy[:-3]
    mem.close()


def test_sqlite_gets_the_index_on_open_and_rollbacks_use_it(tmp_path: Path) -> None:
    path = tmp_path / "facts.db"
    quiet, busy = write_two_sessions(SQLiteStorage(path))
    with sqlite_file(path) as conn:  # the file as an earlier release left it
        for name in UNDO_INDEXES:
            conn.execute(f"DROP INDEX {name}")
    storage = SQLiteStorage(path)
    with sqlite_file(path) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert set(UNDO_INDEXES) <= names
        # The very statements transactions() runs, planned on the index: no walk of the log.
        plans = [
            " ".join(str(r[3]) for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
            for sql, params in [(SELECT_UNDOABLE_IN_SESSION, ("quiet", 1)), (SELECT_UNDOABLE, (1,))]
        ]
    assert "USING INDEX lockstep_transactions_undoable_session" in plans[0]
    assert "USING INDEX lockstep_transactions_undoable" in plans[1]
    rollbacks_undo_the_right_writes(storage, quiet, busy)


def test_postgres_gets_the_index_on_open_unless_a_prepared_branch_holds_the_log(
    postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    quiet, busy = write_two_sessions(PostgresStorage(postgres_dsn))

    def present() -> list[bool]:
        with psycopg.connect(postgres_dsn) as conn:
            return [
                conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]  # type: ignore[index]
                for name in UNDO_INDEXES
            ]

    holder = PostgresStorage(postgres_dsn)
    assert holder.recover() == []  # opened before the indexes go
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:  # as an earlier release left it
        for name in UNDO_INDEXES:
            conn.execute(f"DROP INDEX {name}")
    held = new_txid()
    holder.prepare(held, [upsert("held", 1)])  # in doubt: holds lockstep_transactions
    with caplog.at_level(logging.WARNING, logger="participants.postgres"):
        late = PostgresStorage(postgres_dsn)
        newest = late.transactions("busy", 2)  # opens, waits 2 s at most, goes on
    assert present() == [False, False]
    assert "rollback indexes were not created (prepared branches hold" in caplog.text
    assert len(newest) == 2 and all(t.session_id == "busy" for t in newest)
    late.close()
    holder.abort(held)
    holder.close()
    storage = PostgresStorage(postgres_dsn)
    storage.transactions(None, 1)
    assert present() == [True, True]
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute("SET enable_seqscan = off")  # a tiny table: ask whether it can be used
        plan = " ".join(
            r[0]
            for r in conn.execute(
                f"EXPLAIN {SQL.SELECT_UNDOABLE_IN_SESSION}", ("quiet", 1)
            ).fetchall()
        )
    assert "lockstep_transactions_undoable_session" in plan
    rollbacks_undo_the_right_writes(storage, quiet, busy)


def test_redis_builds_its_sets_from_a_log_written_without_them(redis_server: RedisServer) -> None:
    prefix = f"t{uuid.uuid4().hex[:12]}:"

    def open_redis() -> RedisStorage:
        return RedisStorage(redis_server.url, prefix=prefix)

    quiet, busy = write_two_sessions(open_redis())
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    undo_keys = client.keys(f"{prefix}undo:*")
    assert client.get(f"{prefix}undo:seq") == client.get(f"{prefix}seq")
    client.delete(*undo_keys)  # as an earlier release left the store
    rollbacks_undo_the_right_writes(open_redis(), quiet, busy)
    assert client.get(f"{prefix}undo:seq") == client.get(f"{prefix}seq")
    # Live writes: quiet's first (its update was undone), busy's 27 of 30.
    assert client.zcard(f"{prefix}undo:s:quiet") == 1
    assert client.zcard(f"{prefix}undo:s:busy") == 27
    assert client.zcard(f"{prefix}undo:all") == 28
    client.close()


def test_postgres_opens_for_a_role_that_may_not_create_the_indexes(
    postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An application role that writes the tables but does not own them cannot add the
    indexes to an earlier release's database: the open warns and goes on."""
    quiet, busy = write_two_sessions(PostgresStorage(postgres_dsn))
    role = f"app{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        for name in UNDO_INDEXES:
            conn.execute(f"DROP INDEX {name}")
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"
        )
        conn.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}")
    app_dsn = postgres_dsn.replace("user=postgres", f"user={role}")
    with caplog.at_level(logging.WARNING, logger="participants.postgres"):
        storage = PostgresStorage(app_dsn)
        rollbacks_undo_the_right_writes(storage, quiet, busy)
    assert "rollback indexes were not created (must be owner" in caplog.text


def test_redis_sets_catch_up_with_commits_an_earlier_release_made(
    redis_server: RedisServer,
) -> None:
    """A process still running an earlier release's commit script logs its transactions
    (and marks what a rollback undid) without keeping the sets: the next read of them
    takes those commits from the log first, so a write it rolled back is not offered for
    undoing again and its own writes are."""
    prefix = f"t{uuid.uuid4().hex[:12]}:"
    storage = RedisStorage(redis_server.url, prefix=prefix)
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)

    def commit(fact_id: str) -> str:
        txid = new_txid()
        storage.prepare(txid, [upsert(fact_id, 1), TransactionMeta(session_id="s")])
        storage.commit(txid)
        return txid

    def earlier_release_commit(kind: str, undoes: tuple[str, ...] = ()) -> str:
        txid = new_txid()
        for undone in undoes:
            client.hset(f"{prefix}tx:{undone}", "rolled_back_by", txid)
        seq = client.incr(f"{prefix}seq")
        entry: dict[str, str | int] = {"seq": seq, "session_id": "s", "kind": kind}
        entry |= {"undoes": json.dumps(undoes), "committed_at": 1, "written": ""}
        client.hset(f"{prefix}tx:{txid}", mapping=entry)  # type: ignore[arg-type]
        client.zadd(f"{prefix}txlog", {txid: seq})
        return txid

    a, b = commit("a"), commit("b")
    assert client.get(f"{prefix}undo:seq") == "2"
    c = earlier_release_commit("write")
    earlier_release_commit("rollback", (b,))
    d = commit("d")
    assert client.get(f"{prefix}undo:seq") == "2", "the sets miss commits 3 and 4"
    assert [t.txid for t in storage.transactions("s", 10)] == [d, c, a]
    assert [t.txid for t in storage.transactions(None, 10)] == [d, c, a]
    assert client.get(f"{prefix}undo:seq") == "5"
    e = commit("e")
    assert client.get(f"{prefix}undo:seq") == "6"
    assert [t.txid for t in storage.transactions("s", 2)] == [e, d]
    storage.close()
    client.close()


def test_postgres_undo_reads_seek_each_fact_whatever_plan_serves_them(postgres_dsn: str) -> None:
    """psycopg prepares a statement from its fifth run, and Postgres may then serve it with
    a generic plan, made without the txids and here before autovacuum has analysed the
    grown table: the version a fact goes back to must still be found on the primary key,
    not by hashing the whole history (a join did that)."""
    storage = PostgresStorage(postgres_dsn)
    storage.transactions(None, 1)  # the schema
    history = [("f", n, new_txid()) for n in range(1, 5001)]  # one fact, a long history
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO lockstep_fact_history VALUES (%s, %s, false, %s, %s)",
                [
                    (i, v, t, json.dumps({"id": i, "type": "note", "payload": {}, "version": v}))
                    for i, v, t in history
                ],
            )
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute("PREPARE undo(text[]) AS " + SQL.SELECT_UNDO_READS.replace("%s", "$1"))
        txid = history[1234][2]  # version 1235
        plan = "\n".join(
            r[0] for r in conn.execute(f"EXPLAIN EXECUTE undo(ARRAY['{txid}'])").fetchall()
        )
    assert "Seq Scan on lockstep_fact_history" not in plan, plan
    reads = storage.undo_reads([txid])
    assert reads.before["f"].version == 1234 and reads.heads == {"f": (None, 5000)}
    storage.close()
