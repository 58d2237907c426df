"""Operator commands on a real embedded store: verify, verify --repair, status, and the
recovery daemon (its lease, its passes, its graceful stop)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from chaos.servers import PostgresServer
from coordinator import Fact, MemoryStore, UpsertFact, new_txid
from coordinator.embeddings import HashingEmbedder


def lockstep(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"LOCKSTEP_PATH": str(tmp_path / "memory"), "LOCKSTEP_EMBEDDER": "hashing:32"}
    import os

    return subprocess.run(
        [sys.executable, "-m", "coordinator.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **env},
    )


def damaged_store(tmp_path: Path) -> list[str]:
    """A store whose index drifted behind Lockstep's back (someone edited it by hand)."""
    mem = MemoryStore.open(tmp_path / "memory", embedder=HashingEmbedder(32))
    ids = [mem.commit(Fact(type="note", payload={"content": f"note {i}"})) for i in range(4)]
    index = mem.indexes[0]
    # Out-of-band damage: one point deleted, one fact's point replaced by a stale version.
    from coordinator.records import DeleteFact

    txid = new_txid()
    index.prepare(txid, [DeleteFact(ids[0], 1)])
    index.commit(txid)
    stale = mem.storage.get(ids[1])
    mem.update(ids[1], {"payload": {"content": "newer"}})
    assert stale is not None
    txid = new_txid()
    index.prepare(txid, [DeleteFact(ids[1], 2)])
    index.commit(txid)
    vector = tuple(index.embedder.embed(["note 1"])[0])
    txid = new_txid()
    index.prepare(txid, [UpsertFact(stale, 0, embedding=vector)])
    index.commit(txid)
    mem.close()
    return ids


def test_verify_reports_drift_and_repair_removes_it(tmp_path: Path) -> None:
    ids = damaged_store(tmp_path)
    found = lockstep(tmp_path, "verify", "--json")
    assert found.returncode == 1, found.stderr
    report = json.loads(found.stdout)
    drift = report["derived"]["vectors"]
    assert drift["missing"] == [ids[0]] and [s[0] for s in drift["stale"]] == [ids[1]]
    repaired = lockstep(tmp_path, "verify", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "repaired 2 drifted" in repaired.stdout
    assert lockstep(tmp_path, "verify").returncode == 0
    mem = MemoryStore.open(tmp_path / "memory", embedder=HashingEmbedder(32))
    assert mem.indexes[0].contents().committed == {ids[0]: 1, ids[1]: 2, ids[2]: 1, ids[3]: 1}
    mem.close()


def test_status_shows_in_doubt_branches_and_their_age(tmp_path: Path) -> None:
    mem = MemoryStore.open(tmp_path / "memory", embedder=HashingEmbedder(32))
    txid = new_txid(now=time.time() - 7)
    from tests.support.crash import upsert

    mem.storage.prepare(txid, [upsert("left", 1)])
    mem.close()
    log = f"sqlite:///{tmp_path / 'memory' / 'facts.db'}"  # the embedded default's log
    facts = f"facts=sqlite:///{tmp_path / 'memory' / 'facts.db'}"
    result = lockstep(tmp_path, "status", "--store", facts, "--log", log, "--json")
    status = json.loads(result.stdout)
    assert status["in_doubt"] == {"facts": 1}
    assert status["oldest_pending_seconds"] >= 7


def test_the_daemon_holds_a_lease_recovers_and_stops_on_sigterm(tmp_path: Path) -> None:
    from participants.sqlite import SQLiteStorage
    from tests.support.crash import upsert

    store = SQLiteStorage(tmp_path / "facts.db", name="facts")
    old = new_txid(now=time.time() - 60)
    store.prepare(old, [upsert("stuck", 1)])
    args = [
        sys.executable,
        "-m",
        "coordinator.cli",
        "recover",
        "--watch",
        "--interval",
        "0.2",
        "--store",
        f"facts=sqlite:///{tmp_path / 'facts.db'}",
        "--log",
        f"sqlite:///{tmp_path / 'log.db'}",
        "--in-doubt-timeout",
        "30",
    ]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while store.recover() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert store.recover() == []  # G6: resolved without a human
        second = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
        assert second.returncode == 3 and "holds" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=60)
    assert first.returncode == 0
    assert "fenced 1" in out and "stopped after" in out


def _lease_holders(dsn: str) -> list[int]:
    import psycopg

    from participants.postgres._log import DAEMON_LEASE_KEY

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND objid = %s AND database = (SELECT oid FROM pg_database "
            "WHERE datname = current_database())",
            (DAEMON_LEASE_KEY,),
        ).fetchall()
    return [r[0] for r in rows]


def _wait_for(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_daemons_on_a_shared_postgres_log_take_turns_by_advisory_lock(
    postgres_server: PostgresServer,
) -> None:
    import psycopg

    from participants.postgres import PostgresStorage
    from tests.support.crash import upsert

    name = f"lease_{new_txid()[-8:]}"
    postgres_server.create_database(name)
    url = f"postgresql://postgres@127.0.0.1:{postgres_server.port}/{name}"
    store = PostgresStorage(url, name="facts")
    store.prepare(new_txid(now=time.time() - 60), [upsert("stuck", 1)])
    args = [sys.executable, "-m", "coordinator.cli", "recover", "--watch", "--interval", "0.2"]
    args += ["--store", f"facts={url}", "--log", url, "--in-doubt-timeout", "30"]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    third: subprocess.Popen[str] | None = None
    try:
        _wait_for(lambda: len(_lease_holders(url)) == 1, "the first daemon's lease")
        _wait_for(lambda: store.recover() == [], "the stuck branch to be resolved (G6)")
        second = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
        assert second.returncode == 3 and "lease" in second.stderr

        # The first daemon's lease connection dies: whichever daemon takes the lease next
        # works (the first, reconnecting, or a new one) and the other stands by or exits.
        (holder,) = _lease_holders(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (holder,))
        third = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for(
            lambda: len(holders := _lease_holders(url)) == 1 and holders[0] != holder,
            "a new lease holder",
        )
        store.prepare(new_txid(now=time.time() - 60), [upsert("stuck-again", 1)])
        _wait_for(lambda: store.recover() == [], "the second stuck branch to be resolved")
        started = time.monotonic()  # let the new daemon get going (or find the lease held)
        _wait_for(lambda: third.poll() is not None or time.monotonic() - started > 8, "")
    finally:
        for daemon_process in (first, third):
            if daemon_process is not None:
                daemon_process.send_signal(signal.SIGTERM)
        outputs = [p.communicate(timeout=60) for p in (first, third) if p is not None]
        store.close()
    assert first.returncode == 0 and third is not None and third.returncode in (0, 3)
    if third.returncode == 0:  # the new daemon won the lease: the first stood by
        assert "standing by" in outputs[0][1]
    assert _lease_holders(url) == []
