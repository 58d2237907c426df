"""Postgres and Redis as storages through real failures: the server SIGKILLed while a
branch is prepared, a connection cut between the phases, several agent processes on the
same facts, and bad input (injection, oversize payloads, 2PC disabled, no server).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from qdrant_client import QdrantClient

from chaos.proxy import FaultProxy
from chaos.servers import PostgresServer, RedisServer, free_port
from coordinator import (
    ConfigurationError,
    Fact,
    MemoryStore,
    ParticipantError,
    Policy,
    TransactionInDoubt,
    UsageError,
    new_txid,
)
from coordinator.embeddings import HashingEmbedder
from coordinator.log import SQLiteDecisionLog
from participants.postgres import PostgresDecisionLog, PostgresStorage
from participants.qdrant import QdrantIndex
from participants.redis import RedisStorage
from tests.support.crash import upsert

RECOVER_NOW = Policy(in_doubt_timeout=0.001, redrive_after=0, finish_attempts=2, prepare_timeout=5)


@pytest.fixture(scope="module")
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A Postgres these tests may kill without disturbing the others."""
    server = PostgresServer(tmp_path_factory.mktemp("pg-crash"))
    server.start()
    try:
        yield server
    finally:
        server.destroy()


def index() -> QdrantIndex:
    return QdrantIndex(QdrantClient(":memory:"), "notes", "content", embedder=HashingEmbedder(16))


def ours_prepared(dsn: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"
        ).fetchall()
    return [r[0] for r in rows]


@pytest.mark.parametrize("kill_at", ["after_prepare:postgres", "after_decision"])
def test_postgres_killed_while_a_branch_is_prepared_then_recovered(
    own_postgres: PostgresServer, tmp_path: Path, kill_at: str
) -> None:
    dsn = own_postgres.create_database(f"crash_{kill_at.split(':')[0]}_{new_txid()[-8:]}")
    vectors = index()
    armed: list[bool] = []

    def kill(point: str) -> None:
        if armed and point == kill_at:
            armed.clear()
            own_postgres.kill()

    log = SQLiteDecisionLog(tmp_path / "log.db")
    mem = MemoryStore(PostgresStorage(dsn), [vectors], log=log, policy=RECOVER_NOW, fault_hook=kill)
    mem.commit(Fact(id="kept", type="note", payload={"content": "before"}))
    armed.append(True)
    try:
        mem.commit(Fact(id="crash", type="note", payload={"content": "during"}))
    except (TransactionInDoubt, ParticipantError):
        pass
    own_postgres.start()  # same data directory: the prepared branch is recovered by Postgres
    healed = MemoryStore(PostgresStorage(dsn), [vectors], log=log, policy=RECOVER_NOW)
    assert healed.recover().clean
    assert healed.verify().clean
    assert healed.get("kept") is not None  # G2: a returned commit survived the crash
    assert log.unended() == []  # every decision finished everywhere
    assert ours_prepared(dsn) == []
    healed.close()


@pytest.mark.parametrize("kill_at", ["after_prepare:redis", "before_commit:redis"])
def test_redis_killed_between_prepare_and_commit_then_recovered(
    tmp_path: Path, kill_at: str
) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        vectors = index()
        armed: list[bool] = []

        def kill(point: str) -> None:
            if armed and point == kill_at:
                armed.clear()
                server.kill()

        log = SQLiteDecisionLog(tmp_path / "log.db")
        mem = MemoryStore(
            RedisStorage(server.url, timeout=1),
            [vectors],
            log=log,
            policy=RECOVER_NOW,
            fault_hook=kill,
        )
        mem.commit(Fact(id="kept", type="note", payload={"content": "before"}))
        armed.append(True)
        outcome_known = True
        try:
            mem.commit(Fact(id="crash", type="note", payload={"content": "during"}))
        except ParticipantError:
            outcome_known = False
        server.start()  # appendfsync always: the staged branch survived the kill
        healed = MemoryStore(RedisStorage(server.url), [vectors], log=log, policy=RECOVER_NOW)
        assert healed.recover().clean
        assert healed.verify().clean
        assert healed.get("crash") is not None  # decided COMMIT in both cases: recovery finished it
        assert outcome_known
        healed.close()
    finally:
        server.kill()


def test_a_connection_cut_between_the_phases_completes_after_recovery(
    postgres_server: PostgresServer, postgres_dsn: str, tmp_path: Path
) -> None:
    proxy = FaultProxy(postgres_server.port)
    proxied = postgres_dsn.replace(f"port={postgres_server.port}", f"port={proxy.port}")
    vectors = index()
    cut_once: list[bool] = []

    def cut(point: str) -> None:
        if point == "after_decision" and not cut_once:
            cut_once.append(True)
            proxy.cut()
            proxy.blackhole()  # new connections hang until their timeout

    log = SQLiteDecisionLog(tmp_path / "log.db")
    storage = PostgresStorage(proxied, connect_timeout=1)
    mem = MemoryStore(storage, [vectors], log=log, policy=RECOVER_NOW, fault_hook=cut)
    try:
        mem.commit(Fact(id="a", type="note", payload={"content": "cut"}))
    except ParticipantError:
        pass
    proxy.heal()
    healed = MemoryStore(PostgresStorage(postgres_dsn), [vectors], log=log, policy=RECOVER_NOW)
    assert healed.recover().clean
    assert healed.verify().clean
    assert healed.get("a") is not None and ours_prepared(postgres_dsn) == []
    proxy.close()
    healed.close()


def end_other_sessions(dsn: str) -> int:
    """Terminate this database's other sessions (the pools' idle connections) and wait
    until they are gone; returns how many there were."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


def test_pooled_sessions_the_server_ended_are_replaced_before_use(postgres_dsn: str) -> None:
    """The pool hands out no connection whose session the server has ended: the read and
    the commit after it run on fresh connections, with no error."""
    mem = MemoryStore(PostgresStorage(postgres_dsn), [index()])
    mem.commit(Fact(id="a", type="note", payload={"content": "before"}))
    assert mem.get("a") is not None
    assert end_other_sessions(postgres_dsn) >= 1
    assert mem.get("a") == mem.history("a")[-1]
    mem.commit(Fact(id="b", type="note", payload={"content": "after"}))
    assert [f["id"] for f in mem.query("note")] == ["a", "b"]
    assert mem.verify().clean
    mem.close()


def test_a_storage_outlives_a_postgres_restart(own_postgres: PostgresServer) -> None:
    dsn = own_postgres.create_database(f"restart_{new_txid()[-8:]}")
    mem = MemoryStore(PostgresStorage(dsn), [index()])
    mem.commit(Fact(id="a", type="note", payload={"content": "before"}))
    own_postgres.kill()
    own_postgres.start()
    assert mem.get("a") is not None
    mem.update("a", {"payload": {"content": "after"}})
    after = mem.get("a")
    assert after is not None and after["payload"] == {"content": "after"}
    assert mem.verify().clean
    mem.close()


def test_a_read_hands_its_connection_back_transactional(postgres_dsn: str) -> None:
    """Reads run in autocommit (one round trip); the connection must not stay so, or a
    later commit's statements would each commit alone."""
    storage = PostgresStorage(postgres_dsn, max_connections=1)
    mem = MemoryStore(storage, [index()])
    mem.commit(Fact(id="a", type="note", payload={"content": "x"}))
    assert mem.get("a") is not None and mem.get("missing") is None
    with storage._pool.connection() as conn:  # the pool's only connection
        assert conn.autocommit is False
    mem.close()


def test_a_read_that_gets_no_connection_in_time_is_a_participant_error(
    postgres_dsn: str,
) -> None:
    storage = PostgresStorage(postgres_dsn, connect_timeout=1, max_connections=1)
    assert storage.get("a") is None  # the pool is open
    held = storage._pool.connection()  # holds its only connection
    with held, pytest.raises(ParticipantError, match="Postgres read failed"):
        storage.get("a")
    assert storage.get("a") is None  # the connection came back: reads work again
    storage.close()


AGENT = r"""
import sys, time
from pathlib import Path
from pydantic import BaseModel
from coordinator import Constraint, ConflictError, Fact, MemoryStore
from coordinator.plugins import open_decision_log, open_participant

class Pref(BaseModel):
    content: str
    role: str

storage_url, log_url, me, d = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
mem = MemoryStore(open_participant(storage_url, name="store"), log=open_decision_log(log_url))
mem.register_schema("pref", Pref, constraint=Constraint(singleton_key="role"))
(d / f"ready-{me}").touch()
while not (d / "go").exists():
    time.sleep(0.001)
def increment():
    # Read-modify-write inside one transaction: the write expects the version read.
    with mem.transaction() as tx:
        current = tx.get("counter")
        if current is None:
            tx.commit(Fact(id="counter", type="counter", payload={"n": 1}))
        else:
            tx.update("counter", {"payload": {"n": current["payload"]["n"] + 1}})

for step in (increment, lambda: mem.commit_model(Pref(content=me, role=f"role-{done % 3}"))):
    done = 0
    while done < 15:
        try:
            step()
            done += 1
        except ConflictError:
            pass
"""


@pytest.mark.parametrize("backend", ["postgres", "redis"])
def test_agent_processes_on_the_same_facts_lose_no_update(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if backend == "postgres":
        storage_url = "postgresql://" + _url_of(request.getfixturevalue("postgres_dsn"))
        log_url = storage_url
    else:
        storage_url = request.getfixturevalue("redis_server").url.replace("/0", "/3")
        log_url = f"sqlite:///{tmp_path / 'log.db'}"
        import redis

        redis.Redis.from_url(storage_url).flushdb()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", AGENT, storage_url, log_url, f"p{i}", str(tmp_path)]
        )
        for i in range(3)
    ]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready-*"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()
    assert all(p.wait(timeout=240) == 0 for p in procs)
    from coordinator.plugins import open_participant

    mem = MemoryStore(open_participant(storage_url, name="store"))  # type: ignore[arg-type]
    counter = mem.get("counter")
    # Each agent did 15 rounds: one counter increment (or the insert) and one singleton.
    assert counter is not None and counter["payload"]["n"] == 45 and counter["version"] == 45
    prefs = mem.query(typename="pref")
    assert sorted(f["payload"]["role"] for f in prefs) == ["role-0", "role-1", "role-2"]
    assert sum(f["version"] for f in prefs) == 45
    mem.close()


def _url_of(dsn: str) -> str:
    parts = dict(item.split("=", 1) for item in dsn.split())
    return f"{parts['user']}@{parts['host']}:{parts['port']}/{parts['dbname']}"


def test_injection_in_filter_values_is_just_a_value(
    postgres_dsn: str, redis_server: RedisServer
) -> None:
    for storage in (PostgresStorage(postgres_dsn), RedisStorage(redis_server.url, prefix="inj:")):
        mem = MemoryStore(storage)
        mem.commit(Fact(id="a", type="note", payload={"role": "x"}))
        assert mem.query(filters={"payload.role": "x' OR '1'='1"}) == []
        assert mem.query(filters={"payload.role": "x\"}}') OR true --"}) == []
        with pytest.raises(UsageError, match="malformed"):
            mem.query(filters={"payload.role') OR true --": "x"})
        assert [f["id"] for f in mem.query(filters={"payload.role": "x"})] == ["a"]
        mem.close()


def test_an_oversize_payload_is_refused_before_anything_is_staged(postgres_dsn: str) -> None:
    storage = PostgresStorage(postgres_dsn)
    mem = MemoryStore(storage)
    with pytest.raises(UsageError, match="the limit is"):
        mem.commit(Fact(type="note", payload={"content": "x" * (2 << 20)}))
    assert storage.all_facts() == [] and storage.recover() == []
    mem.close()


def test_postgres_without_prepared_transactions_gets_a_clear_error(tmp_path: Path) -> None:
    server = PostgresServer(tmp_path, max_prepared_transactions=0)
    server.start()
    try:
        storage = PostgresStorage(server.dsn)
        with pytest.raises(ConfigurationError, match="max_prepared_transactions"):
            storage.prepare(new_txid(), [upsert("a", 1)])
        storage.close()
    finally:
        server.destroy()


def test_unreachable_servers_give_typed_errors_within_their_timeout() -> None:
    port = free_port()  # nothing listens here
    started = time.monotonic()
    with pytest.raises(ParticipantError, match="cannot reach Postgres within 1"):
        PostgresStorage(f"host=127.0.0.1 port={port} user=postgres", connect_timeout=1).recover()
    with pytest.raises(ParticipantError, match="Redis"):
        RedisStorage(f"redis://127.0.0.1:{port}/0", timeout=1).recover()
    from coordinator import DecisionLogError

    with pytest.raises(DecisionLogError, match="cannot reach"):
        PostgresDecisionLog(f"host=127.0.0.1 port={port} user=postgres", connect_timeout=1)
    assert time.monotonic() - started < 30  # bounded by the timeouts, not by retries
