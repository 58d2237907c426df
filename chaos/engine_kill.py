"""Chaos: SIGKILL the writer at every named fault point, and recovery at each of its own.

For every point, several runs: a writer process commits memories through ``MemoryStore``
on the embedded default (SQLite facts, Qdrant local vectors; 10% of vector writes fail) and
is killed with SIGKILL the n-th time it reaches the point. For recovery points, a
``lockstep recover`` process is then killed at that point too. The store is reopened (its
recovery runs) and the facts and vectors are compared fact by fact.

    python -m chaos.engine_kill [--runs 3] [--json]

Prints one row per point: runs, kills, transactions committed before the kill, drift.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from coordinator._demo import PARTICIPANTS, measure
from coordinator._tables import text_table
from coordinator.faults import last_resource_points, recovery_points

# The embedded default's storage holds the decision log and commits last with the
# decision: the points a commit passes, and recovery's (only the index holds branches).
COMMIT_POINTS = last_resource_points(PARTICIPANTS, "facts")
RECOVERY_POINTS = recovery_points(["vectors"])
# Writer kill points that leave a branch for recovery (after the prepare, before the end).
LEAVES_WORK = COMMIT_POINTS[COMMIT_POINTS.index("after_prepare:vectors") : -2]
OPS = 20


def _kill_writer(directory: Path, point: str, rng: random.Random) -> tuple[bool, int]:
    env = dict(os.environ, LOCKSTEP_KILL_AT=point, LOCKSTEP_KILL_SKIP=str(rng.randrange(OPS // 3)))
    args = [sys.executable, "-m", "coordinator._demo", "--worker", "lockstep"]
    args += ["--dir", str(directory), "--seed", str(rng.randrange(10**6)), "--writes", str(OPS)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, check=False)
    return done.returncode == -signal.SIGKILL, done.stdout.split().count("committed")


def _kill_recovery(directory: Path, point: str) -> bool:
    env = dict(os.environ, LOCKSTEP_KILL_AT=point)
    args = [sys.executable, "-m", "coordinator.cli", "recover", "--in-doubt-timeout", "0.001"]
    args += ["--store", f"facts=sqlite:///{directory / 'facts.db'}"]
    args += ["--store", f"vectors=qdrant+local:///{directory / 'vectors'}?collection=memories"]
    args += ["--log", f"sqlite:///{directory / 'facts.db'}"]  # the embedded default's log
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, check=False)
    return done.returncode == -signal.SIGKILL


@dataclass
class PointTally:
    point: str
    runs: int = 0
    kills: int = 0
    committed: int = 0
    drifted_facts: int = 0
    left_staged: int = 0


def campaign(runs: int, seed: int) -> list[PointTally]:
    rng = random.Random(seed)
    tallies = []
    for point in COMMIT_POINTS + RECOVERY_POINTS:
        tally = PointTally(point)
        for _ in range(runs):
            with tempfile.TemporaryDirectory(prefix="lockstep-chaos-") as tmp:
                directory = Path(tmp)
                if point in RECOVERY_POINTS:
                    # Leave work for recovery (an undecided branch where recovery must decide),
                    # then kill recovery itself at the point.
                    leave = "before_decision" if point == "recovery_after_decide" else None
                    leave = leave or rng.choice(LEAVES_WORK)
                    _, committed = _kill_writer(directory, leave, rng)
                    killed = _kill_recovery(directory, point)
                else:
                    killed, committed = _kill_writer(directory, point, rng)
                _, _, drifted, staged = measure(directory, "lockstep")  # reopens: recovery runs
            tally.runs += 1
            tally.kills += killed
            tally.committed += committed
            tally.drifted_facts += drifted
            tally.left_staged += staged
        print(f"  {point}: {tally.kills}/{tally.runs} killed", file=sys.stderr, flush=True)
        tallies.append(tally)
    return tallies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="runs per fault point")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tallies = campaign(args.runs, args.seed)
    rows = [asdict(t) for t in tallies]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(text_table(rows))
        drift = sum(t.drifted_facts + t.left_staged for t in tallies)
        kills = sum(t.kills for t in tallies)
        print(f"\nfault points: {len(tallies)}, kills: {kills}, drift: {drift}")
    return 0 if all(t.drifted_facts == 0 and t.left_staged == 0 for t in tallies) else 1


if __name__ == "__main__":
    sys.exit(main())
