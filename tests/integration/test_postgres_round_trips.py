"""What a commit on Postgres waits for: round trips, counted on the wire.

The Postgres storage sends a branch's statements in pipelines (one round trip for the
locks and versions, one for all the writes) and the decision log each of its writes in
one. Waiting for every statement again would change no result and cost a round trip a
statement (a one-phase insert went from 10 to 5, one with an index and the log in the
same database from 15 to 6), so these tests count the server's ReadyForQuery messages
through the loopback proxy, and read the stores to see that each change landed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from qdrant_client import QdrantClient

from chaos.proxy import FaultProxy
from chaos.servers import PostgresServer
from coordinator import DecisionLogError, Fact, MemoryStore, TransactionAborted, new_txid
from coordinator.abc import Decision
from coordinator.embeddings import HashingEmbedder
from coordinator.log import SQLiteDecisionLog
from coordinator.records import FactRecord, TransactionMeta, UpsertFact
from participants.postgres import PostgresDecisionLog, PostgresStorage
from participants.qdrant import QdrantIndex
from tests.support.pgwire import PLAIN, ReadyCounter


@pytest.fixture
def wire(postgres_server: PostgresServer, postgres_dsn: str) -> Iterator[tuple[str, ReadyCounter]]:
    """A DSN of the test's database through a proxy that counts round trips."""
    counter = ReadyCounter()
    proxy = FaultProxy(postgres_server.port, tap=counter)
    proxied = postgres_dsn.replace(f"port={postgres_server.port}", f"port={proxy.port}")
    try:
        yield f"{proxied} {PLAIN}", counter
    finally:
        proxy.close()


def notes_index() -> QdrantIndex:
    return QdrantIndex(QdrantClient(":memory:"), "notes", "content", embedder=HashingEmbedder(16))


def ended(dsn: str) -> dict[str, bool]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT txid, ended FROM lockstep_decisions").fetchall()
    return dict(rows)


# Each change: a read of the fact's head, BEGIN, the two pipelines, COMMIT; with an index,
# one more for the END record; with the log elsewhere, PREPARE and COMMIT PREPARED instead
# of COMMIT (on a connection of the branch's own, whose start-up is not counted).
LAYOUTS = {"one phase": 5, "last resource": 6, "two phases": 6}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_commit_waits_for_a_few_round_trips_whatever_it_writes(
    wire: tuple[str, ReadyCounter], postgres_dsn: str, tmp_path: Path, layout: str
) -> None:
    dsn, counter = wire
    indexes = [] if layout == "one phase" else [notes_index()]
    log = SQLiteDecisionLog(tmp_path / "log.db") if layout == "two phases" else None
    mem = MemoryStore(PostgresStorage(dsn), indexes, log=log)
    try:
        mem.commit(Fact(type="note", payload={"content": "the schema is made"}))
        counter.reset()
        fact_id = mem.commit(Fact(type="note", payload={"content": "tea"}), session_id="s")
        inserted = counter.reset()
        mem.update(fact_id, {"payload": {"content": "green tea"}})
        updated = counter.reset()
        assert (mem.get(fact_id) or {})["payload"] == {"content": "green tea"}
        counter.reset()
        mem.delete("s", fact_id)
        deleted = counter.reset()
        assert (inserted, updated, deleted) == (LAYOUTS[layout],) * 3
        assert mem.get(fact_id) is None
        assert [f["version"] for f in mem.history(fact_id)] == [1, 2, 3]
        assert mem.verify().clean
        if layout == "last resource":  # every decision in the storage's own database, ended
            decisions = ended(postgres_dsn)
            assert len(decisions) == 4 and all(decisions.values())
    finally:
        mem.close()


def test_the_decision_log_writes_and_reads_in_one_round_trip_each(
    wire: tuple[str, ReadyCounter], postgres_dsn: str
) -> None:
    dsn, counter = wire
    log = PostgresDecisionLog(dsn)
    try:
        first, second = new_txid(), new_txid()
        counter.reset()
        assert log.decide(first, Decision.COMMIT, ["a", "b"]) is Decision.COMMIT
        assert counter.reset() == 1
        # A second decision for the same txid loses to the first, and learns it.
        assert log.decide(first, Decision.ABORT, ["a", "b"]) is Decision.COMMIT
        assert log.decide_many([(second, Decision.ABORT, ["a"])]) == {second: Decision.ABORT}
        counter.reset()
        log.end([first])
        assert counter.reset() == 1
        assert [r.txid for r in log.unended()] == [second]
        assert log.records([first])[first].ended
        assert counter.reset() == 2
        assert ended(postgres_dsn) == {first: True, second: False}
    finally:
        log.close()


def psycopg_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What psycopg and its pool logged: what they ignored or mended behind our back."""
    return [r.getMessage() for r in caplog.records if r.name.startswith("psycopg")]


def test_a_failed_log_write_leaves_its_connection_ready_for_the_next(
    postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    log = PostgresDecisionLog(postgres_dsn, max_connections=1)  # one connection, reused
    try:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE lockstep_decisions RENAME TO elsewhere")
            with caplog.at_level(logging.WARNING):
                with pytest.raises(DecisionLogError, match="lockstep_decisions"):
                    log.decide(new_txid(), Decision.COMMIT, ["a"])
                with pytest.raises(DecisionLogError, match="lockstep_decisions"):
                    log.end([new_txid()])
            conn.execute("ALTER TABLE elsewhere RENAME TO lockstep_decisions")
        # Nothing was left for psycopg or its pool to mend or to ignore.
        assert psycopg_warnings(caplog) == []
        txid = new_txid()
        assert log.decide(txid, Decision.COMMIT, ["a"]) is Decision.COMMIT
        log.end([txid])
        assert ended(postgres_dsn) == {txid: True}
    finally:
        log.close()


def test_a_refused_branch_is_refused_quietly_and_its_connection_serves_again(
    postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    storage = PostgresStorage(postgres_dsn, max_connections=1)
    fact = FactRecord(id="a", type="note", payload={"content": "tea"}, version=1)
    meta = TransactionMeta(session_id=None, kind="write")
    try:
        fenced = new_txid()
        storage.abort(fenced)  # an abort that arrives first fences the txid
        with caplog.at_level(logging.WARNING):
            for _ in range(3):
                with pytest.raises(TransactionAborted, match="already aborted"):
                    storage.commit_one_phase(fenced, [UpsertFact(fact, 0), meta])
        # psycopg logs what it ignores when a pipeline ends in error; nothing was ignored.
        assert psycopg_warnings(caplog) == []
        storage.commit_one_phase(new_txid(), [UpsertFact(fact, 0), meta])
        assert storage.get("a") == fact
    finally:
        storage.close()
