"""The ``lockstep`` command line: the demo and one-shot recovery, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from coordinator import new_txid
from coordinator.log import SQLiteDecisionLog
from participants.sqlite import SQLiteStorage
from tests.support.crash import abandon, upsert


def lockstep(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coordinator.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), **(env or {})},
    )


def died_after_the_decision(directory: Path) -> None:
    """An embedded store in ``directory`` whose agent died right after deciding to commit
    fact "kept" (embedder ``hashing:16``): the decision is in facts.db, the index's half is
    left prepared."""
    from coordinator import Fact, MemoryStore
    from coordinator.embeddings import HashingEmbedder

    class Crash(BaseException):
        pass

    def die(point: str) -> None:
        if point == "after_decision":
            raise Crash

    mem = MemoryStore.open(directory, embedder=HashingEmbedder(16), fault_hook=die)
    try:
        mem.commit(Fact(id="kept", type="note", payload={"content": "decided"}))
    except Crash:
        pass
    abandon(mem)


def test_the_demo_kills_every_writer_and_lockstep_leaves_no_drift() -> None:
    result = lockstep("demo", "--runs", "3", "--writes", "15", "--json")
    assert result.returncode == 0, result.stderr
    unsynchronised, locked = json.loads(result.stdout)
    assert locked["approach"].startswith("Lockstep")
    assert locked["runs"] == locked["kills"] == 3
    assert unsynchronised["runs"] == unsynchronised["kills"] == 3
    assert locked["drifted_facts"] == 0 and locked["left_staged"] == 0
    assert locked["facts"] == locked["vectors"]
    assert "run 3/3 done" in result.stderr


def test_recover_resolves_an_abandoned_branch(tmp_path: Path) -> None:
    store = SQLiteStorage(tmp_path / "facts.db", name="facts")
    txid = new_txid(now=1.0)  # abandoned long ago
    store.prepare(txid, [upsert("a", 1)])
    SQLiteDecisionLog(tmp_path / "log.db").close()
    result = lockstep(
        "recover",
        "--store",
        f"facts=sqlite:///{tmp_path / 'facts.db'}",
        "--log",
        f"sqlite:///{tmp_path / 'log.db'}",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["fenced"] == [txid]
    assert store.recover() == [] and store.get("a") is None
    store.close()


def test_an_unknown_store_scheme_is_a_clear_error(tmp_path: Path) -> None:
    result = lockstep("recover", "--store", "x=nosuch:///db", "--log", "memory://")
    assert result.returncode == 2
    assert "no participant backend for nosuch://" in result.stderr
    assert "sqlite" in result.stderr


def test_recover_refuses_a_log_that_would_abort_committed_work(tmp_path: Path) -> None:
    """An embedded-default directory whose agent died after a decision: the decision is in
    facts.db. Recovery pointed at a missing or a foreign log would presume abort and undo
    the index's half of a committed transaction; it refuses and changes nothing."""
    from coordinator import MemoryStore
    from coordinator.embeddings import HashingEmbedder

    directory = tmp_path / "memory"
    died_after_the_decision(directory)
    stores = [
        "--store",
        f"facts=sqlite:///{directory / 'facts.db'}",
        "--store",
        f"vectors=qdrant+local:///{directory / 'vectors'}?collection=memories&embedder=hashing:16",
        "--in-doubt-timeout",
        "0.001",
        "--json",
    ]
    missing = lockstep("recover", *stores, "--log", f"sqlite:///{directory / 'decisions.db'}")
    assert missing.returncode != 0 and "keeps its decisions in its own log" in missing.stderr
    assert not (directory / "decisions.db").exists()  # refused before any log was opened
    SQLiteDecisionLog(tmp_path / "other.db").close()
    foreign = lockstep("recover", *stores, "--log", f"sqlite:///{tmp_path / 'other.db'}")
    assert foreign.returncode != 0 and "keeps its decisions in its own log" in foreign.stderr
    right = lockstep("recover", *stores, "--log", f"sqlite:///{directory / 'facts.db'}")
    assert right.returncode == 0, right.stderr
    assert "vectors" in [b[0] for b in json.loads(right.stdout)["committed"]]
    again = MemoryStore.open(directory, embedder=HashingEmbedder(16))
    assert again.indexes[0].contents().committed == {"kept": 1}
    assert again.verify().clean
    again.close()


def test_a_command_run_where_no_store_is_says_so_and_creates_none(tmp_path: Path) -> None:
    """Before, it created an empty embedded store there and reported it clean."""
    for command in ("verify", "status", "recover"):
        result = lockstep(command, cwd=tmp_path)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert f"no store at {tmp_path}/lockstep-memory/facts.db" in result.stderr
    config = tmp_path / "lockstep.toml"
    config.write_text('storage = "sqlite:///agent.db"\n')
    result = lockstep("--config", str(config), "verify", cwd=tmp_path)
    assert result.returncode == 2
    assert f"no store at {tmp_path}/agent.db (the settings' `storage` names it)" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lockstep.toml"]

    # Where the store is, the same commands run.
    from coordinator import Fact, MemoryStore
    from coordinator.embeddings import HashingEmbedder

    with MemoryStore.open(tmp_path / "lockstep-memory", embedder=HashingEmbedder(16)) as mem:
        mem.commit(Fact(type="note", payload={"content": "here"}))
    config.write_text('embedder = "hashing:16"\n')  # read from the working directory
    result = lockstep("verify", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["facts"] == 1


def test_path_names_the_embedded_store_a_program_opened(tmp_path: Path) -> None:
    """``MemoryStore.open("agent-memory/")`` in a program, then the commands on that
    directory from anywhere: before, only a settings file or ``LOCKSTEP_PATH`` could name
    it."""

    directory = tmp_path / "agent-memory"
    died_after_the_decision(directory)
    hashing = {"LOCKSTEP_EMBEDDER": "hashing:16"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    # Each command opens the directory's store, and an open recovers it: the first finishes
    # the commit, the next find nothing in doubt.
    recovered = lockstep("recover", "--path", str(directory), "--json", cwd=elsewhere, env=hashing)
    assert recovered.returncode == 0, recovered.stderr
    assert json.loads(recovered.stdout)["failed"] == {}
    status = lockstep("status", "--path", str(directory), "--json", env=hashing)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["in_doubt"] == {"facts": 0, "vectors": 0}
    verified = lockstep("verify", "--path", str(directory), "--json", env=hashing)
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["facts"] == 1

    missing = lockstep("verify", "--path", str(tmp_path / "nowhere"), env=hashing)
    assert missing.returncode == 2
    assert f"no store at {tmp_path}/nowhere/facts.db (--path names it)" in missing.stderr
    assert not (tmp_path / "nowhere").exists()
    with_store = lockstep(
        "recover", "--path", str(directory), "--store", "a=sqlite:///a.db", "--log", "memory://"
    )
    assert with_store.returncode == 2 and "--store names stores by URL" in with_store.stderr
    storage = {**hashing, "LOCKSTEP_STORAGE": f"sqlite:///{tmp_path / 'agent.db'}"}
    with_settings = lockstep("verify", "--path", str(directory), env=storage)
    assert with_settings.returncode == 2
    assert "but the settings name a `storage`" in with_settings.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent-memory", "elsewhere"]


def test_recover_refuses_another_log_for_a_redis_store_that_keeps_its_own(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """With another log, recovery would find no decision and abort the decided commit."""
    from coordinator import Decision
    from participants.redis import RedisStorage

    url = request.getfixturevalue("redis_server").url
    prefix = f"{tmp_path.name}:"
    store = RedisStorage(url, name="facts", prefix=prefix)
    txid = new_txid(now=1.0)  # a crash long ago left it prepared, decided COMMIT
    store.prepare(txid, [upsert("a", 1)])
    store.default_decision_log().decide(txid, Decision.COMMIT, ["facts"])
    stores = ["--store", f"facts={url}?prefix={prefix}", "--json"]
    foreign = lockstep("recover", *stores, "--log", f"sqlite:///{tmp_path / 'other.db'}")
    assert foreign.returncode != 0
    assert f"pass --log {url}?prefix={prefix} " in foreign.stderr
    assert not (tmp_path / "other.db").exists() and store.get("a") is None
    assert url.endswith("/0")  # the same server and database, spelt without the default
    same = url.removesuffix("/0")
    right = lockstep("recover", *stores, "--log", f"{same}?prefix={prefix}")
    assert right.returncode == 0, right.stderr
    assert json.loads(right.stdout)["committed"] == [["facts", txid]]
    assert store.get("a") is not None and store.recover() == []
    store.close()


@pytest.mark.anyio
async def test_the_async_storages_name_their_own_log_alike(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The CLI asks the synchronous stores; through the async faces the question is a
    coroutine on SQLite as on Redis (it reads the store), with the same answers."""
    from coordinator import Decision
    from participants.redis import AsyncRedisStorage
    from participants.sqlite import AsyncSQLiteStorage

    path = tmp_path / "facts.db"
    with closing(SQLiteDecisionLog(path)) as log:
        log.decide(new_txid(), Decision.COMMIT, ["facts"])
    other = f"sqlite:///{tmp_path / 'other.db'}"
    sqlite_store = AsyncSQLiteStorage(path, name="facts")
    assert await sqlite_store.decision_log_for(other) == f"sqlite:///{path}"
    assert await sqlite_store.decision_log_for(f"sqlite:///{path}") is None

    url = request.getfixturevalue("redis_server").url
    prefix = f"{tmp_path.name}:"
    redis_store = AsyncRedisStorage(url, name="facts", prefix=prefix)
    await redis_store.default_decision_log().decide(new_txid(), Decision.COMMIT, ["facts"])
    own = f"{url}?prefix={prefix}"
    assert await redis_store.decision_log_for(own) is None
    assert await redis_store.decision_log_for(own.replace("/0?", "?")) is None  # same server
    # The same server under another prefix, or another database, is another log.
    for another in (other, f"{url}?prefix=else:", own.replace("/0?", "/1?")):
        assert await redis_store.decision_log_for(another) == own, another
    await redis_store.close()
    await sqlite_store.close()


def test_the_commands_close_the_connections_they_open(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    """A command left its Postgres pools open: their threads kept the process alive after
    the command was done (a daemon told to stop, on Python 3.13, was still there until
    SIGKILL), and a program calling ``main`` kept the connections."""
    import psycopg

    from coordinator.cli import main
    from participants.postgres import PostgresStorage

    postgres = request.getfixturevalue("postgres_server")
    name = f"cli_{new_txid()[-8:]}"
    postgres.create_database(name)
    url = f"postgresql://postgres@127.0.0.1:{postgres.port}/{name}"
    store = PostgresStorage(url, name="facts")
    txid = new_txid(now=1.0)  # abandoned long ago
    store.prepare(txid, [upsert("a", 1)])
    store.close()

    def sessions() -> int:
        """The other sessions on the database, waited for up to 10 s: the server process
        of a connection the client closed leaves pg_stat_activity a moment later (later
        still on a loaded machine); one left open stays."""
        deadline = time.monotonic() + 10
        while True:
            with psycopg.connect(url, autocommit=True) as conn:
                query = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> %s"
                row = conn.execute(query, (name, conn.info.backend_pid)).fetchone()
            count = int(row[0]) if row else -1
            if count == 0 or time.monotonic() > deadline:
                return count
            time.sleep(0.05)

    stores = ["--store", f"facts={url}", "--log", url, "--json"]
    assert main(["status", *stores]) == 0
    assert json.loads(capsys.readouterr().out)["in_doubt"] == {"facts": 1}
    assert sessions() == 0
    assert main(["recover", *stores]) == 0
    assert json.loads(capsys.readouterr().out)["fenced"] == [txid]
    assert sessions() == 0
    assert main(["recover", "--store", f"facts={url}", "--log", "nosuch:///x"]) == 2
    assert sessions() == 0  # the storage opened before the log was refused is closed
    twice = ["--store", f"facts={url}", "--store", f"facts={url}", "--log", url]
    assert main(["status", *twice]) == 2  # two stores of one name: no coordinator
    assert "two participants are named 'facts'" in capsys.readouterr().err
    assert sessions() == 0  # the stores and the log opened before are closed
