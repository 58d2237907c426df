"""The crash benchmark's runs: a writer killed mid-workload (rollbacks included, when
asked for) is reopened and its drift counted; a writer that dies of its own error is
reported, not counted as a kill."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from benchmarks.crash import one_run
from tests.support.sqlite import rows


def _spec(directory: Path, rollbacks: object) -> dict[str, object]:
    return {
        "combo": "sqlite + qdrant local",
        "system": "lockstep",
        "dir": str(directory),
        "collection": "c",
        "prefix": "p",
        "rollbacks": rollbacks,
    }


def test_a_run_with_rollbacks_kills_the_writer_mid_workload_and_finds_no_drift(
    tmp_path: Path,
) -> None:
    drifted, late = one_run(sys.executable, _spec(tmp_path, 0.3), 3, random.Random(5))
    assert (drifted, late) == (0, 0)
    kinds = [
        kind for (kind,) in rows(tmp_path / "facts.db", "SELECT kind FROM lockstep_transactions")
    ]
    # The kill came after at least five operations, some of them rollbacks.
    assert len(kinds) >= 5 and "rollback" in kinds and "write" in kinds


def test_a_writer_that_fails_on_its_own_is_reported_not_counted(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"(?s)exited with 1 before it was killed.*TypeError"):
        one_run(sys.executable, _spec(tmp_path, "a share"), 3, random.Random(5))
