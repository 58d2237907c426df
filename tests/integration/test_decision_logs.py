"""Decision logs (SQLite, Postgres, Redis, memory): decide-once, durable, shared by processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from coordinator import Decision, DecisionLogError, ParticipantError, UsageError, new_txid
from coordinator.abc import DecisionLog
from coordinator.log import MemoryDecisionLog, SQLiteDecisionLog
from participants.postgres import PostgresDecisionLog
from participants.redis import RedisDecisionLog
from participants.sqlite import SQLiteStorage
from tests.support.sqlite import descriptors_open_on, sqlite_file

LOGS = ["sqlite", "memory", "postgres", "redis"]


@pytest.fixture
def open_log(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[str], DecisionLog]]:
    """Opens a log of a kind; every log it opened is closed after the test."""
    opened: list[DecisionLog] = []

    def opener(kind: str) -> DecisionLog:
        log: DecisionLog
        if kind == "sqlite":
            log = SQLiteDecisionLog(tmp_path / "log.db")
        elif kind == "postgres":
            log = PostgresDecisionLog(request.getfixturevalue("postgres_dsn"))
        elif kind == "redis":
            url = request.getfixturevalue("redis_server").url
            log = RedisDecisionLog(url, prefix=f"{tmp_path.name}:")
        else:
            log = MemoryDecisionLog()
        opened.append(log)
        return log

    yield opener
    for log in opened:
        log.close()


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
def test_a_bad_decision_is_refused_and_nothing_is_recorded(
    kind: str, open_log: Callable[[str], DecisionLog]
) -> None:
    log = open_log(kind)
    good = new_txid()
    for bad in [(good, "maybe", ["a"]), (42, Decision.COMMIT, ["a"])]:
        with pytest.raises(UsageError, match="bad decision"):
            log.decide_many([(good, Decision.COMMIT, ["a"]), bad])  # type: ignore[list-item]
        with pytest.raises(UsageError, match="bad decision"):
            log.decide(*bad)  # type: ignore[arg-type]
    assert log.records([good]) == {}
    assert good not in {r.txid for r in log.unended()}  # the Postgres log is shared


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
    again.close()


def test_a_lost_lazy_end_only_leaves_the_record_unended(tmp_path: Path) -> None:
    log = SQLiteDecisionLog(tmp_path / "log.db")
    txid = new_txid()
    log.decide(txid, Decision.COMMIT, ["a"])
    log.end([txid])  # kept in memory; a crash now loses only the END
    crashed_view = SQLiteDecisionLog(tmp_path / "log.db")
    assert [r.txid for r in crashed_view.unended()] == [txid]
    assert crashed_view.records([txid])[txid].decision is Decision.COMMIT
    crashed_view.close()
    log.close()


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
    log.close()


def test_without_group_commit_every_decision_is_its_own_write(tmp_path: Path) -> None:
    log = SQLiteDecisionLog(tmp_path / "log.db", group_commit=False)
    for _ in range(5):
        log.decide(new_txid(), Decision.COMMIT, ["a"])
    assert log.flushes == 5
    log.close()


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
    with closing(SQLiteDecisionLog(path)) as log:
        stored = log.records(txids.split(","))
    assert ",".join(stored[t].decision.value for t in txids.split(",")) == answers[0]


def test_a_log_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    SQLiteDecisionLog(tmp_path / "log.db").close()
    with sqlite_file(tmp_path / "log.db") as conn:
        conn.execute("UPDATE lockstep_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(DecisionLogError, match="schema 99"):
        SQLiteDecisionLog(tmp_path / "log.db")


def test_a_file_that_is_not_a_database_is_a_log_error_and_let_go(tmp_path: Path) -> None:
    (tmp_path / "log.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DecisionLogError, match="cannot open"):
        SQLiteDecisionLog(tmp_path / "log.db")
    assert descriptors_open_on(tmp_path / "log.db") == []  # not held until collected
    with pytest.raises(ParticipantError, match="not a database"):
        SQLiteStorage(tmp_path / "log.db")
    assert descriptors_open_on(tmp_path / "log.db") == []


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


CRASH_AFTER_THE_STORAGE_COMMITS = """
import sys
from qdrant_client import QdrantClient
from coordinator import Fact, MemoryStore
from coordinator.embeddings import HashingEmbedder
from coordinator.faults import hook_from_environment
from participants.qdrant import QdrantIndex
from participants.redis import RedisStorage

url, prefix, vectors = sys.argv[1:]
mem = MemoryStore(
    RedisStorage(url, name="facts", prefix=prefix),
    [QdrantIndex(QdrantClient(path=vectors), "memories", embedder=HashingEmbedder(16))],
    fault_hook=hook_from_environment(),
)
mem.commit(Fact(id="kept", type="note", payload={"content": "decided"}))
"""


def test_a_redis_storage_keeps_its_decisions_in_redis_so_recovery_finishes_a_commit(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Killed after Redis committed (with the decision: it commits last) and before the
    index did: recovery, in another process, reads the COMMIT decision from Redis and
    finishes the index. Before, a Redis storage without log= kept its decisions in the
    process, so recovery found none, aborted the index's branch and left the fact in
    Redis alone."""
    from qdrant_client import QdrantClient

    from coordinator import MemoryStore, Policy
    from coordinator.embeddings import HashingEmbedder
    from participants.qdrant import QdrantIndex
    from participants.redis import RedisDecisionLog, RedisStorage

    url = request.getfixturevalue("redis_server").url
    prefix, vectors = f"{tmp_path.name}:", str(tmp_path / "vectors")
    child = subprocess.run(
        [sys.executable, "-c", CRASH_AFTER_THE_STORAGE_COMMITS, url, prefix, vectors],
        env={**os.environ, "LOCKSTEP_KILL_AT": "after_decision"},
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -9, child.stderr
    (decided,) = RedisDecisionLog(url, prefix=prefix).unended()
    assert decided.decision is Decision.COMMIT
    client = QdrantClient(path=vectors)
    mem = MemoryStore(
        RedisStorage(url, name="facts", prefix=prefix),
        [QdrantIndex(client, "memories", embedder=HashingEmbedder(16))],
        policy=Policy(in_doubt_timeout=0.001, redrive_after=0.0),
    )
    report = mem.recover()
    assert ("qdrant:memories", decided.txid) in report.committed
    assert mem.get("kept")["payload"] == {"content": "decided"}  # type: ignore[index]
    assert mem.indexes[0].contents().committed == {"kept": 1}
    assert mem.verify().clean
    mem.close()
    client.close()


def test_a_redis_log_url_names_the_log_a_storage_keeps(request: pytest.FixtureRequest) -> None:
    from coordinator.plugins import open_decision_log
    from participants.redis import RedisStorage

    url = request.getfixturevalue("redis_server").url
    txid = new_txid()
    storage = RedisStorage(url, name="facts", prefix="shared:")
    storage.default_decision_log().decide(txid, Decision.COMMIT, ["facts"])
    log = open_decision_log(f"{url}?prefix=shared:", asynchronous=False)
    assert isinstance(log, RedisDecisionLog)
    assert log.records([txid])[txid].decision is Decision.COMMIT
    assert open_decision_log(f"{url}?prefix=other:", asynchronous=False).records([txid]) == {}


def test_one_recovery_daemon_holds_a_redis_logs_lease(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = request.getfixturevalue("redis_server").url
    first, second = (RedisDecisionLog(url, prefix=f"{tmp_path.name}:") for _ in range(2))
    with first.lease() as held:
        with second.lease() as waiting:
            assert held.held and not waiting.held
            assert held.check() and not waiting.check()  # a check renews, never steals
        with second.lease() as other:
            assert not other.held
    with second.lease() as taken:  # released when the first daemon's block ended
        assert taken.held


def test_sqlite_files_named_relatively_stay_the_files_opened_after_a_change_of_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SQLite log or storage opened from a relative path keeps meaning that file: the
    daemon's lease beside the log, and the storage telling which log its file holds, used
    to resolve the name again in whatever directory the program had moved to."""
    from participants.sqlite import SQLiteStorage

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    log = SQLiteDecisionLog("agent.db")
    storage = SQLiteStorage("agent.db", name="facts")
    txid = new_txid()
    assert log.decide(txid, Decision.COMMIT, ["facts"]) is Decision.COMMIT
    monkeypatch.chdir(tmp_path / "elsewhere")
    with log.lease() as lease:
        assert lease.held
        assert (tmp_path / "agent.db.lease").is_file()
    # The file holds the decisions, so any other log URL is answered with this file's.
    assert storage.decision_log_for("memory://") == f"sqlite:///{tmp_path / 'agent.db'}"
    assert storage.decision_log_for(f"sqlite:///{tmp_path / 'agent.db'}") is None
    assert list((tmp_path / "elsewhere").iterdir()) == []
    storage.close()
    log.close()


def test_a_sqlite_file_in_a_missing_directory_is_refused_naming_the_directory(
    tmp_path: Path,
) -> None:
    """SQLite creates a file but not its directory, and says only "unable to open
    database file"; the log and the storage say which directory is missing."""
    missing = tmp_path / "no" / "such"
    said = f"its directory {re.escape(str(missing))} does not exist"
    with pytest.raises(DecisionLogError, match=said):
        SQLiteDecisionLog(missing / "decisions.db")
    with pytest.raises(ParticipantError, match=said):
        SQLiteStorage(missing / "facts.db")
    assert not (tmp_path / "no").exists()
