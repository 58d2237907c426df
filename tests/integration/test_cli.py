"""The ``lockstep`` command line: the demo and one-shot recovery, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from coordinator import new_txid
from coordinator.log import SQLiteDecisionLog
from participants.sqlite import SQLiteStorage
from tests.support.crash import upsert


def lockstep(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coordinator.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )


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


def test_an_unknown_store_scheme_is_a_clear_error(tmp_path: Path) -> None:
    result = lockstep("recover", "--store", "x=nosuch:///db", "--log", "memory://")
    assert result.returncode == 2
    assert "no participant backend for nosuch://" in result.stderr
    assert "sqlite" in result.stderr
