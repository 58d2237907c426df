"""The commit-cost benchmark's systems take turns on stores they keep open: a child
process answers one command per turn, continuing its writers' operations where the last
turn left them, and a child that cannot start says why instead of hanging the run."""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks._common import Child
from benchmarks.commit_cost import MODULE
from tests.support.sqlite import sqlite_file


def _facts(directory: str) -> list[tuple[str, int]]:
    with sqlite_file(Path(directory) / "facts.db") as conn:
        rows = conn.execute("SELECT id, version FROM lockstep_facts ORDER BY id").fetchall()
    return [(str(fact_id), int(version)) for fact_id, version in rows]


def test_turns_continue_each_writer_where_the_last_turn_left_it(tmp_path: Path) -> None:
    spec = {"combo": "sqlite", "mode": "8 threads", "system": "lockstep", "collection": "c"}
    child = Child(MODULE, spec, tmp_path, sys.executable)
    try:
        assert child.failed is None
        answers = [child.ask({"op": "insert", "ops": 2, "flush": turn == 1}) for turn in (0, 1)]
        for answer in answers:
            assert isinstance(answer, dict), answer
            assert len(answer["latencies"]) == 16  # 8 writers x 2 operations
            assert answer["seconds"] > 0
        facts = _facts(child._dir.name)
        assert len(facts) == 32 and {version for _, version in facts} == {1}
        # The updates reach the facts the two turns inserted, each writer its own four.
        for _ in range(2):
            answer = child.ask({"op": "update", "ops": 2, "flush": False})
            assert isinstance(answer, dict) and len(answer["latencies"]) == 16
        assert {version for _, version in _facts(child._dir.name)} == {2}
        # A fifth update has no fact left to update: the child fails and says so.
        failed = child.ask({"op": "update", "ops": 1, "flush": False})
        assert isinstance(failed, str) and "IndexError" in failed
        assert child.ask({"op": "insert", "ops": 1, "flush": False}) == failed
    finally:
        child.close()
    assert not Path(child._dir.name).exists()


def test_a_child_that_cannot_open_its_store_says_why(tmp_path: Path) -> None:
    spec = {"combo": "sqlite", "mode": "3 writers", "system": "lockstep", "collection": "c"}
    child = Child(MODULE, spec, tmp_path, sys.executable)
    try:
        assert child.failed is not None and "KeyError" in child.failed
        assert child.ask({"op": "insert", "ops": 1, "flush": False}) == child.failed
    finally:
        child.close()
