"""Decision logs (SQLite, Postgres, memory): decide-once, durable, shared by processes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from coordinator import Decision, DecisionLogError, new_txid
from coordinator.abc import DecisionLog
from coordinator.log import MemoryDecisionLog, SQLiteDecisionLog
from participants.postgres import PostgresDecisionLog

LOGS = ["sqlite", "memory", "postgres"]


@pytest.fixture
def open_log(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], DecisionLog]:
    def opener(kind: str) -> DecisionLog:
        if kind == "sqlite":
            return SQLiteDecisionLog(tmp_path / "log.db")
        if kind == "postgres":
            return PostgresDecisionLog(request.getfixturevalue("postgres_dsn"))
        return MemoryDecisionLog()

    return opener


@pytest.mark.parametrize("kind", LOGS)
def test_the_first_decision_wins_and_every_caller_learns_it(
    kind: str, open_log: Callable[[str], DecisionLog]
) -> None:
    log = open_log(kind)
    txid = new_txid()
    assert log.decide(txid, Decision.ABORT, ["a"]) is Decision.ABORT
    assert log.decide(txid, Decision.COMMIT, ["a", "b"]) is Decision.ABORT
    record = log.records([txid])[txid]
    assert (record.decision, record.participants, record.ended) == (Decision.ABORT, ("a",), False)


@pytest.mark.parametrize("kind", LOGS)
def test_decide_many_returns_each_winner(kind: str, open_log: Callable[[str], DecisionLog]) -> None:
    log = open_log(kind)
    old, new = new_txid(), new_txid()
    log.decide(old, Decision.COMMIT, ["a"])
    won = log.decide_many([(old, Decision.ABORT, ["a"]), (new, Decision.ABORT, ["b"])])
    assert won == {old: Decision.COMMIT, new: Decision.ABORT}


@pytest.mark.parametrize("kind", LOGS)
def test_end_removes_a_record_from_the_unended_list(
    kind: str, open_log: Callable[[str], DecisionLog]
) -> None:
    log = open_log(kind)
    done, open_ = new_txid(), new_txid()
    log.decide(done, Decision.COMMIT, ["a"])
    log.decide(open_, Decision.COMMIT, ["a"])
    log.end([done])
    assert [r.txid for r in log.unended()] == [open_]
    assert log.records([done])[done].ended


def test_decisions_survive_reopening_and_lazy_ends_flush_on_close(tmp_path: Path) -> None:
    log = SQLiteDecisionLog(tmp_path / "log.db")
    txid = new_txid()
    log.decide(txid, Decision.COMMIT, ["a", "b"])
    log.end([txid])
    log.close()
    again = SQLiteDecisionLog(tmp_path / "log.db")
    assert again.records([txid])[txid].participants == ("a", "b")
    assert again.unended() == []


def test_a_lost_lazy_end_only_leaves_the_record_unended(tmp_path: Path) -> None:
    log = SQLiteDecisionLog(tmp_path / "log.db")
    txid = new_txid()
    log.decide(txid, Decision.COMMIT, ["a"])
    log.end([txid])  # kept in memory; a crash now loses only the END
    crashed_view = SQLiteDecisionLog(tmp_path / "log.db")
    assert [r.txid for r in crashed_view.unended()] == [txid]
    assert crashed_view.records([txid])[txid].decision is Decision.COMMIT


def test_concurrent_decisions_share_forced_writes(tmp_path: Path) -> None:
    log = SQLiteDecisionLog(tmp_path / "log.db")
    txids = [new_txid() for _ in range(200)]
    start = threading.Barrier(20)

    def worker(chunk: list[str]) -> None:
        start.wait()
        for txid in chunk:
            assert log.decide(txid, Decision.COMMIT, ["a"]) is Decision.COMMIT

    threads = [threading.Thread(target=worker, args=(txids[i::20],)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(log.records(txids)) == set(txids)
    assert log.flushes < len(txids)  # group commit: several decisions per fsync


def test_without_group_commit_every_decision_is_its_own_write(tmp_path: Path) -> None:
    log = SQLiteDecisionLog(tmp_path / "log.db", group_commit=False)
    for _ in range(5):
        log.decide(new_txid(), Decision.COMMIT, ["a"])
    assert log.flushes == 5


_RACER = """
import sys
from coordinator import Decision
from coordinator.log import SQLiteDecisionLog
log = SQLiteDecisionLog(sys.argv[1])
mine = Decision(sys.argv[2])
txids = sys.argv[3].split(",")
won = log.decide_many([(t, mine, [sys.argv[2]]) for t in txids])
print(",".join(won[t].value for t in txids))
"""


def test_processes_racing_on_one_file_agree_on_every_decision(tmp_path: Path) -> None:
    path = str(tmp_path / "log.db")
    SQLiteDecisionLog(path).close()
    txids = ",".join(new_txid() for _ in range(50))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, path, decision, txids],
            stdout=subprocess.PIPE,
            text=True,
        )
        for decision in ("commit", "abort", "commit", "abort")
    ]
    answers = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(answers)) == 1, "processes saw different winners"
    stored = SQLiteDecisionLog(path).records(txids.split(","))
    assert ",".join(stored[t].decision.value for t in txids.split(",")) == answers[0]


def test_a_log_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    SQLiteDecisionLog(tmp_path / "log.db").close()
    with sqlite3.connect(tmp_path / "log.db") as conn:
        conn.execute("UPDATE lockstep_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(DecisionLogError, match="schema 99"):
        SQLiteDecisionLog(tmp_path / "log.db")


def test_a_file_that_is_not_a_database_is_a_log_error(tmp_path: Path) -> None:
    (tmp_path / "log.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DecisionLogError, match="cannot open"):
        SQLiteDecisionLog(tmp_path / "log.db")


def test_a_closed_log_raises_a_log_error(tmp_path: Path) -> None:
    log = SQLiteDecisionLog(tmp_path / "log.db")
    log.close()
    log.close()  # idempotent
    with pytest.raises(DecisionLogError, match="closed"):
        log.decide(new_txid(), Decision.COMMIT, ["a"])


def test_threads_racing_on_the_postgres_log_agree_on_every_decision(postgres_dsn: str) -> None:
    txids = [new_txid() for _ in range(50)]
    answers: list[list[Decision]] = []

    def racer(decision: Decision) -> None:
        log = PostgresDecisionLog(postgres_dsn)
        won = log.decide_many([(t, decision, [decision.value]) for t in txids])
        answers.append([won[t] for t in txids])
        log.close()

    threads = [
        threading.Thread(target=racer, args=(d,))
        for d in (Decision.COMMIT, Decision.ABORT, Decision.COMMIT, Decision.ABORT)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 4 and all(a == answers[0] for a in answers)


@pytest.mark.parametrize(("query", "grouped"), [("", True), ("?group_commit=0", False)])
def test_a_sqlite_log_url_can_turn_group_commit_off(
    tmp_path: Path, query: str, grouped: bool
) -> None:
    from coordinator.plugins import open_decision_log

    log = open_decision_log(f"sqlite:///{tmp_path / 'log.db'}{query}")
    assert isinstance(log, SQLiteDecisionLog) and log.group_commit is grouped
    writers = [
        threading.Thread(target=log.decide, args=(new_txid(), Decision.COMMIT, ("a",)))
        for _ in range(8)
    ]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    assert len(log.unended()) == 8
    assert Path(log.path).samefile(tmp_path / "log.db")  # the query is not part of the path
    if not grouped:
        assert log.flushes == 8  # one forced write per decision
    log.close()


def test_a_redis_storage_without_a_log_says_its_decisions_die_with_the_process(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis keeps no decision log of its own: without ``log=``, a crash after a decision
    leaves recovery nothing to finish the other stores by, and the operator is told."""
    from coordinator import MemoryStore
    from participants.redis import RedisStorage

    url = request.getfixturevalue("redis_server").url
    with caplog.at_level("WARNING", logger="participants.redis"):
        quiet = MemoryStore(
            RedisStorage(url, name="facts", prefix=f"{tmp_path.name}a:"),
            log=SQLiteDecisionLog(tmp_path / "log.db"),
        )
        assert caplog.records == []
        told = MemoryStore(RedisStorage(url, name="facts", prefix=f"{tmp_path.name}b:"))
    assert ["decisions live in this process only" in r.getMessage() for r in caplog.records] == [
        True
    ]
    quiet.close()
    told.close()
