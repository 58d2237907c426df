"""Simulated crashes, agents killed for real, and small builders of facts and writes for
tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from coordinator import FactRecord, MemoryStore, UpsertFact


class SimulatedCrash(BaseException):
    """The process 'dies' here: nothing in the driver catches or cleans up after it."""


class CrashAt:
    """A fault hook that raises :class:`SimulatedCrash` the first time ``point`` is reached."""

    def __init__(self, point: str | None) -> None:
        self.point = point
        self.seen: list[str] = []
        self.fired = False

    def __call__(self, point: str) -> None:
        self.seen.append(point)
        if not self.fired and point == self.point:
            self.fired = True
            raise SimulatedCrash(point)


def abandon(mem: MemoryStore) -> None:
    """What the death of the process holding ``mem`` leaves: its connections and files
    let go, and nothing said to the stores (nothing prepared is finished or rolled back).
    Another open of the same stores can then take over, as a new process would."""
    for participant in mem.participants:
        participant.close()
    mem.log.close()


def fact(fact_id: str, version: int, **payload: object) -> FactRecord:
    return FactRecord(fact_id, "note", dict(payload), version)


def upsert(fact_id: str, version: int, **payload: object) -> UpsertFact:
    return UpsertFact(fact(fact_id, version, **payload), version - 1)


def killed_agent(kill_at: str, agent: str, *args: str, **env: str) -> set[str]:
    """Run the Python source ``agent`` (with ``args``) until the fault hook SIGKILLs it at
    the fourth pass of ``kill_at``; the ids it printed, one a commit it saw return."""
    done = subprocess.run(
        [sys.executable, "-c", agent, *args],
        env={**os.environ, "LOCKSTEP_KILL_AT": kill_at, "LOCKSTEP_KILL_SKIP": "3", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    return set(done.stdout.split())
