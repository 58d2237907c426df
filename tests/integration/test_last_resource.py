"""The last-resource option: the decision log in the Postgres storage's own database, the
COMMIT record riding in the Postgres transaction (no PREPARE there, no separate log write).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from qdrant_client import QdrantClient

from coordinator import (
    Fact,
    MemoryStore,
    Policy,
    PrepareTimeout,
    RecoveryReport,
    TransactionAborted,
    TransactionInDoubt,
    UsageError,
    VersionConflict,
    new_txid,
)
from coordinator.abc import Vote
from coordinator.embeddings import HashingEmbedder
from coordinator.faults import last_resource_points
from coordinator.records import FactRecord, TransactionMeta, UpsertFact, Write
from participants.postgres import PostgresDecisionLog, PostgresStorage
from participants.qdrant import QdrantIndex
from participants.redis import RedisStorage
from participants.sqlite import SQLiteStorage
from tests.support.crash import CrashAt, SimulatedCrash, abandon

LAST = Policy(last_resource="postgres", in_doubt_timeout=0.001, redrive_after=0)


def store(dsn: str, **kwargs: object) -> MemoryStore:
    index = QdrantIndex(QdrantClient(":memory:"), "notes", "content", embedder=HashingEmbedder(16))
    return MemoryStore(
        PostgresStorage(dsn),
        [index],
        log=PostgresDecisionLog(dsn),
        policy=LAST,
        **kwargs,  # type: ignore[arg-type]
    )


def prepared_here(dsn: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"
        ).fetchall()
    return [r[0] for r in rows]


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


WAITING_ON_A_LOCK = "wait_event_type = 'Lock'"
IN_A_TRANSACTION = "state LIKE 'idle in transaction%%'"


def other_sessions(dsn: str, where: str) -> list[int]:
    """The pids of this database's other sessions matching ``where``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            f"AND pid <> pg_backend_pid() AND {where}"
        ).fetchall()
    return [row[0] for row in rows]


def lock_waits(dsn: str) -> int:
    return len(other_sessions(dsn, WAITING_ON_A_LOCK))


def open_transactions(dsn: str) -> int:
    return len(other_sessions(dsn, IN_A_TRANSACTION))


def test_the_commit_record_rides_in_the_postgres_transaction(postgres_dsn: str) -> None:
    seen_prepared: list[list[str]] = []

    def look(point: str) -> None:
        if point == "before_decision":
            seen_prepared.append(prepared_here(postgres_dsn))

    mem = store(postgres_dsn, fault_hook=look)
    fid = mem.commit(Fact(type="note", payload={"content": "one write, one decision"}))
    assert seen_prepared == [[]]  # Postgres never prepared: it commits with the decision
    with psycopg.connect(postgres_dsn) as conn:
        rows = conn.execute("SELECT decision, participants FROM lockstep_decisions").fetchall()
    assert rows == [("commit", ["qdrant:notes", "postgres"])]
    assert mem.indexes[0].contents().committed == {fid: 1}
    assert mem.verify().clean
    mem.close()


@pytest.fixture(params=["postgres", "sqlite", "redis"])
def last_resource_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[..., MemoryStore]:
    """A store whose storage commits last with the decision: Postgres with its log in the
    same database, SQLite or Redis with no log given (each keeps its own beside its facts)."""
    prefix = f"t{uuid.uuid4().hex[:12]}:"

    def opener(**kwargs: Any) -> MemoryStore:
        if request.param == "postgres":
            return store(request.getfixturevalue("postgres_dsn"), **kwargs)
        client = QdrantClient(":memory:")
        vectors = QdrantIndex(client, "notes", "content", embedder=HashingEmbedder(16))
        if request.param == "redis":
            url = request.getfixturevalue("redis_server").url
            return MemoryStore(RedisStorage(url, prefix=prefix), [vectors], **kwargs)
        return MemoryStore(SQLiteStorage(tmp_path / "facts.db"), [vectors], **kwargs)

    return opener


def test_recovery_that_fences_first_makes_the_last_resource_abort(
    last_resource_store: Callable[..., MemoryStore],
) -> None:
    stores: list[MemoryStore] = []

    def recover_first(point: str) -> None:
        # SQLite and Redis commit after the index prepared; Postgres stages its transaction while
        # the index prepares: fence before that staging writes the COMMIT record.
        if point in ("before_decision", "before_stage:postgres"):
            wait_for(lambda: stores[0].indexes[0].recover() != [], "the index to prepare")
            # Another process's recoverer decides ABORT for this (old) transaction first.
            report = stores[0].coordinator_with(in_doubt_timeout=0.001).recover()
            assert len(report.fenced) == 1

    mem = last_resource_store(fault_hook=recover_first)
    assert mem.policy.last_resource == mem.storage.name
    stores.append(mem)
    with pytest.raises(TransactionAborted, match="recovery aborted"), mem.transaction() as tx:
        tx.txid = new_txid(now=1.0)  # already older than the recoverer's timeout
        tx.commit(Fact(id="x", type="note", payload={"content": "too slow"}))
    assert mem.get("x") is None
    assert mem.indexes[0].contents().committed == {} and mem.indexes[0].recover() == []
    mem.close()


def test_a_recovery_racing_a_staged_last_resource_waits_and_obeys_its_commit(
    postgres_dsn: str,
) -> None:
    """Postgres staged its writes and the COMMIT record, uncommitted, when a recoverer
    finds the index's branch in doubt: the recoverer's ABORT waits on the record's row
    lock, then finds COMMIT and obeys it."""
    stores: list[MemoryStore] = []
    reports: list[RecoveryReport] = []
    racers: list[threading.Thread] = []

    def race(point: str) -> None:
        if point == "before_decision":  # staged, not yet committed
            recoverer = stores[0].coordinator_with(in_doubt_timeout=0.001)
            racers.append(threading.Thread(target=lambda: reports.append(recoverer.recover())))
            racers[0].start()
            wait_for(lambda: lock_waits(postgres_dsn) == 1, "the recoverer to wait on a lock")

    mem = store(postgres_dsn, fault_hook=race)
    stores.append(mem)
    with mem.transaction() as tx:
        tx.txid = new_txid(now=1.0)  # already older than the recoverer's timeout
        tx.commit(Fact(id="x", type="note", payload={"content": "staged, then committed"}))
    racers[0].join(30)
    assert len(reports) == 1 and reports[0].fenced == ()
    assert mem.get("x") is not None
    assert mem.indexes[0].contents().committed == {"x": 1} and mem.indexes[0].recover() == []
    with psycopg.connect(postgres_dsn) as conn:
        rows = conn.execute("SELECT txid, decision FROM lockstep_decisions").fetchall()
    assert rows == [(tx.txid, "commit")]
    assert mem.verify().clean
    mem.close()


def test_a_staged_commit_whose_connection_dies_is_in_doubt_and_the_log_decides(
    postgres_dsn: str,
) -> None:
    """The staged transaction's session is killed just before its COMMIT: the commit
    cannot tell whether it happened, so it raises TransactionInDoubt and aborts nothing;
    the log (no COMMIT record, the transaction died with its session) decides: abort."""

    def kill_the_staged_session(point: str) -> None:
        if point == "before_decision":
            [pid] = other_sessions(postgres_dsn, IN_A_TRANSACTION)
            with psycopg.connect(postgres_dsn, autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))

    mem = store(postgres_dsn, fault_hook=kill_the_staged_session)
    with pytest.raises(TransactionInDoubt), mem.transaction() as tx:
        tx.txid = new_txid(now=1.0)  # already older than the in-doubt timeout
        tx.commit(Fact(id="x", type="note", payload={"content": "fate unknown"}))
    assert mem.indexes[0].recover() == [tx.txid]  # nothing aborted by the coordinator
    report = mem.coordinator_with(in_doubt_timeout=0.001, redrive_after=0).recover()
    assert report.fenced == (tx.txid,)
    assert mem.get("x") is None and mem.indexes[0].recover() == []
    assert mem.indexes[0].contents().committed == {} and mem.verify().clean
    mem.close()


def test_a_staged_last_resource_that_is_refused_leaves_nothing_open(postgres_dsn: str) -> None:
    """A version conflict found while staging aborts the index's prepared branch and
    rolls the staged transaction back: no connection stays in a transaction."""
    mem = store(postgres_dsn)
    mem.commit(Fact(id="f", type="note", payload={"content": "first"}))
    # A writer that still believes "f" is new: Postgres finds version 1.
    stale = FactRecord("f", "note", {"content": "stale"}, 1)
    embedding = tuple(HashingEmbedder(16).embed(["stale"])[0])
    with pytest.raises(VersionConflict):
        mem.coordinator.commit(
            {
                "postgres": [UpsertFact(stale, 0)],
                "qdrant:notes": [UpsertFact(stale, 0, embedding=embedding)],
            }
        )
    assert mem.indexes[0].recover() == []  # the index's prepared branch was aborted
    assert open_transactions(postgres_dsn) == 0
    assert (mem.get("f") or {}).get("payload") == {"content": "first"}
    assert mem.indexes[0].contents().committed == {"f": 1}
    assert mem.verify().clean
    mem.close()


def test_a_staged_commit_record_names_only_the_participants_that_had_work(
    postgres_dsn: str,
) -> None:
    """The record is staged naming every participant; an index with nothing to stage
    votes read-only, and the record is corrected before COMMIT, so recovery never waits
    on that index."""
    mem = store(postgres_dsn)
    task = FactRecord("t", "task", {"content": "the index has nothing to do"}, 1)
    outcome = mem.coordinator.commit(
        {"postgres": [UpsertFact(task, 0)], "qdrant:notes": [TransactionMeta("s1")]}
    )
    assert outcome.read_only == ("qdrant:notes",)
    mem.commit(Fact(id="n", type="note", payload={"content": "for this index"}))
    with psycopg.connect(postgres_dsn) as conn:
        rows = conn.execute(
            "SELECT participants FROM lockstep_decisions ORDER BY decided_at"
        ).fetchall()
    assert rows == [(["postgres"],), (["qdrant:notes", "postgres"],)]
    assert mem.get("t") is not None and mem.indexes[0].contents().committed == {"n": 1}
    mem.close()


STAGED_POINTS = last_resource_points(["postgres", "qdrant:notes"], "postgres", staged=True)


@pytest.mark.parametrize("staged", [True, False])
def test_staging_the_last_resource_can_be_turned_off(postgres_dsn: str, staged: bool) -> None:
    seen: list[str] = []
    policy = replace(LAST, stage_last_resource=staged)
    mem = store(postgres_dsn, fault_hook=seen.append)
    mem.coordinator = mem.coordinator_with(stage_last_resource=staged)
    assert mem.coordinator.policy == policy
    mem.commit(Fact(id="x", type="note", payload={"content": "committed either way"}))
    expected = last_resource_points(["postgres", "qdrant:notes"], "postgres", staged=staged)
    assert sorted(seen) == sorted(expected)
    assert mem.indexes[0].contents().committed == {"x": 1} and mem.verify().clean
    mem.close()


@pytest.mark.parametrize("point", STAGED_POINTS)
def test_a_crash_at_any_point_of_a_staged_commit_is_settled_by_recovery(
    postgres_dsn: str, point: str
) -> None:
    """The coordinator 'dies' at ``point`` (the staged transaction then ends as a dead
    client's does: rolled back unless it committed); recovery must leave both stores
    agreeing with the decision log, nothing staged, no transaction open."""
    crash = CrashAt(point)
    mem = store(postgres_dsn, fault_hook=crash)
    with pytest.raises(SimulatedCrash), mem.transaction() as tx:
        tx.txid = new_txid(now=1.0)  # already older than the in-doubt timeout
        tx.commit(Fact(id="x", type="note", payload={"content": f"cut at {point}"}))
    assert crash.fired
    mem.coordinator_with(in_doubt_timeout=0.001, redrive_after=0).recover()
    with psycopg.connect(postgres_dsn) as conn:
        decided = conn.execute("SELECT decision FROM lockstep_decisions").fetchall()
    committed = STAGED_POINTS.index(point) >= STAGED_POINTS.index("after_decision")
    if committed:
        assert decided == [("commit",)]
    else:  # presumed abort: no record, or the ABORT recovery wrote to fence the index's branch
        assert decided in ([], [("abort",)])
    assert (mem.get("x") is not None) == committed
    assert mem.indexes[0].contents().committed == ({"x": 1} if committed else {})
    assert mem.indexes[0].recover() == [] and open_transactions(postgres_dsn) == 0
    assert mem.verify().clean
    mem.close()


def test_a_staging_that_outlives_the_prepare_timeout_is_rolled_back_when_it_lands(
    postgres_dsn: str,
) -> None:
    """The coordinator gives up on a slow staging at its timeout and aborts; the staging,
    still running on its worker thread, finds the transaction abandoned when it returns
    and rolls its open transaction back instead of leaving it holding locks."""

    def slow(point: str) -> None:
        if point == "before_stage:postgres":
            time.sleep(1.0)

    mem = store(postgres_dsn, fault_hook=slow)
    mem.coordinator = mem.coordinator_with(prepare_timeout=0.3)
    with pytest.raises(PrepareTimeout):
        mem.commit(Fact(id="late", type="note", payload={"content": "staged too late"}))
    time.sleep(1.0)  # the staging lands meanwhile
    wait_for(lambda: open_transactions(postgres_dsn) == 0, "the late staging to roll back")
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM lockstep_decisions").fetchone() == (0,)
    assert mem.get("late") is None and mem.indexes[0].recover() == []
    assert mem.indexes[0].contents().committed == {}
    mem.close()


@pytest.mark.anyio
async def test_an_index_timing_out_beside_an_async_staging_rolls_it_back(
    postgres_dsn: str,
) -> None:
    import anyio
    from qdrant_client import AsyncQdrantClient

    from coordinator import AsyncMemoryStore
    from participants.postgres import AsyncPostgresDecisionLog, AsyncPostgresStorage
    from participants.qdrant import AsyncQdrantIndex

    class SlowIndex(AsyncQdrantIndex):
        async def prepare(self, txid: str, writes: Sequence[Write]) -> Vote:
            await anyio.sleep(1.0)
            return await super().prepare(txid, writes)

    index = SlowIndex(
        AsyncQdrantClient(":memory:"), "notes", "content", embedder=HashingEmbedder(16)
    )
    mem = AsyncMemoryStore(
        AsyncPostgresStorage(postgres_dsn),
        [index],
        log=AsyncPostgresDecisionLog(postgres_dsn),
        policy=replace(LAST, prepare_timeout=0.3),
    )
    with pytest.raises(PrepareTimeout):
        await mem.commit(Fact(id="slow", type="note", payload={"content": "index too slow"}))
    assert open_transactions(postgres_dsn) == 0  # rolled back before the commit raised
    assert await mem.get("slow") is None and await index.recover() == []
    await mem.close()


def test_last_resource_must_name_a_capable_participant(postgres_dsn: str) -> None:
    mem = store(postgres_dsn)
    mem.coordinator._policy = Policy(last_resource="qdrant:notes")  # not a SQL store
    with pytest.raises(UsageError, match="last_resource"):
        mem.commit(Fact(type="note", payload={"content": "x"}))
    mem.close()


def test_your_own_sql_commits_in_the_same_transaction_as_the_memory(postgres_dsn: str) -> None:
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, status text)")
        conn.execute("INSERT INTO orders VALUES (1, 'open')")
    mem = store(postgres_dsn)
    for n, policy in enumerate((Policy(), LAST)):  # prepared branch, then last resource
        mem.coordinator._policy = policy
        with mem.transaction() as tx:
            tx.commit(Fact(id=f"m{n}", type="note", payload={"content": "paid"}))
            tx.execute("postgres", "UPDATE orders SET status = %s WHERE id = %s", (f"paid {n}", 1))
        with psycopg.connect(postgres_dsn) as conn:
            assert conn.execute("SELECT status FROM orders").fetchone() == (f"paid {n}",)
        # A failing statement aborts the memory too: nothing of the transaction lands.
        with pytest.raises(UsageError, match="your SQL failed"), mem.transaction() as tx:
            tx.commit(Fact(id=f"x{n}", type="note", payload={"content": "lost"}))
            tx.execute("postgres", "UPDATE no_such_table SET x = 1")
        assert mem.get(f"x{n}") is None
    assert set(mem.indexes[0].contents().committed) == {"m0", "m1"}
    assert mem.verify().clean
    mem.close()


def test_without_a_log_postgres_keeps_decisions_in_its_database_and_commits_last(
    postgres_dsn: str, tmp_path: Path
) -> None:
    def index() -> QdrantIndex:
        client = QdrantClient(path=str(tmp_path / "vectors"))
        return QdrantIndex(
            client, "notes", "content", embedder=HashingEmbedder(16), owns_client=True
        )

    class Crash(BaseException):
        """The agent dies after the decision, before the index heard of it."""

    def die(point: str) -> None:
        if point == "after_decision":
            raise Crash

    mem = MemoryStore(PostgresStorage(postgres_dsn), [index()], fault_hook=die)
    assert isinstance(mem.log, PostgresDecisionLog)
    assert mem.policy.last_resource == "postgres"
    with pytest.raises(Crash):
        mem.commit(Fact(id="kept", type="note", payload={"content": "decided, then died"}))
    abandon(mem)
    assert prepared_here(postgres_dsn) == []  # Postgres committed with the decision

    # A new process with the same configuration finds the decision in Postgres.
    with psycopg.connect(postgres_dsn) as conn:
        [(txid, decision)] = conn.execute("SELECT txid, decision FROM lockstep_decisions")
    assert decision == "commit"
    again = MemoryStore(PostgresStorage(postgres_dsn), [index()], policy=Policy(redrive_after=0))
    assert ("qdrant:notes", txid) in again.recover().committed
    assert again.indexes[0].contents().committed == {"kept": 1}
    assert again.verify().clean
    again.close()
