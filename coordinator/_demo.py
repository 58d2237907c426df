"""``lockstep demo``: an agent writes memories while failures and crashes are injected.

The embedded default holds the memory: facts in SQLite, vectors in Qdrant (local mode),
embedded offline. A writer process runs a workload of inserts, updates and deletes; 10% of
vector-store writes fail, and the writer is killed with SIGKILL at a random moment or at a
named point of the protocol. Then the store is reopened (recovery runs on open) and the
facts and the vectors are compared fact by fact.

The same faults hit two writers: *unsynchronised* (write the SQL, then the vector, the way
agent-memory libraries do it) and *Lockstep* (``MemoryStore``: one atomic commit).
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
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from coordinator._tables import text_table
from coordinator.abc import Index, Storage, SupportsOnePhase, Vote
from coordinator.errors import LockstepError, ParticipantError
from coordinator.faults import hook_from_environment, last_resource_points
from coordinator.ids import new_txid
from coordinator.memory import Fact, MemoryStore
from coordinator.plugins import open_participant
from coordinator.records import DeleteFact, FactRecord, UpsertFact, Write

PARTICIPANTS = ["facts", "vectors"]
# The storage commits last, with the decision (its log is in facts.db); up to the lazy END.
NAMED_POINTS = last_resource_points(PARTICIPANTS, "facts")[:-1]
TOPICS = [
    "prefers vegetarian food",
    "lives in London",
    "has a cat called Whiskers",
    "works night shifts",
    "is learning Portuguese",
    "likes dark mode",
    "travels to Lisbon in May",
    "is allergic to peanuts",
]


def _failing(
    prepare: Callable[[str, Sequence[Write]], Vote], rate: float, rng: random.Random
) -> Callable[[str, Sequence[Write]], Vote]:
    """``prepare``, failing ``rate`` of its calls like a flaky vector store."""

    def flaky(txid: str, writes: Sequence[Write]) -> Vote:
        if rng.random() < rate:
            raise ParticipantError("injected vector store failure (timeout)", participant="vectors")
        return prepare(txid, writes)

    return flaky


def _choose(rng: random.Random, existing: list[str]) -> tuple[str, str | None, str]:
    """The next operation: ("insert" | "update" | "delete", fact id, text)."""
    text = f"The user {rng.choice(TOPICS)} (note {rng.randrange(10**6)})"
    roll = rng.random()
    if existing and roll < 0.25:
        return "delete", rng.choice(existing), text
    if existing and roll < 0.6:
        return "update", rng.choice(existing), text
    return "insert", None, text


def lockstep_worker(directory: Path, rng: random.Random, ops: int, fail_rate: float) -> None:
    mem = MemoryStore.open(directory, fault_hook=hook_from_environment())
    index = mem.indexes[0]
    flaky = _failing(index.prepare, fail_rate, random.Random(rng.random()))
    index.prepare = flaky  # type: ignore[assignment,method-assign]
    for _ in range(ops):
        existing = [f["id"] for f in mem.query()]
        op, fact_id, text = _choose(rng, existing)
        try:
            if op == "insert":
                mem.commit(Fact(type="memory", payload={"content": text}))
            elif op == "update":
                assert fact_id is not None
                mem.update(fact_id, {"payload": {"content": text}})
            else:
                assert fact_id is not None
                mem.delete(None, fact_id)
            print("committed", flush=True)
        except LockstepError:
            print("aborted", flush=True)


def _baseline_stores(directory: Path) -> tuple[Storage, Index]:
    storage = open_participant(f"sqlite:///{directory / 'facts.db'}", name="facts")
    index = open_participant(
        f"qdrant+local:///{directory / 'vectors'}?collection=memories", name="vectors"
    )
    assert isinstance(storage, Storage) and isinstance(index, Index)
    return storage, index


def unsynchronised_worker(directory: Path, rng: random.Random, ops: int, fail_rate: float) -> None:
    """SQL first, then the vector write; a failed vector write is logged and left."""
    storage, index = _baseline_stores(directory)
    assert isinstance(storage, SupportsOnePhase)
    vector_write = _failing(index.prepare, fail_rate, random.Random(rng.random()))
    hook = hook_from_environment()
    for _ in range(ops):
        existing = [f.id for f in storage.all_facts()]
        op, fact_id, text = _choose(rng, existing)
        txid = new_txid()
        current = None if fact_id is None else storage.get(fact_id)
        writes: list[Write]
        if op == "delete" and current is not None:
            writes = [DeleteFact(current.id, current.version)]
        else:
            version = 0 if current is None else current.version
            record = FactRecord(
                fact_id or f"m-{txid}", "memory", {"content": text}, version + 1, ts=time.time()
            )
            vector = index.embedder.embed([text])[0]
            writes = [UpsertFact(record, version, embedding=tuple(vector))]
        storage.commit_one_phase(txid, writes)
        hook("between_writes")
        try:
            vector_write(txid, writes)  # the vector write, one step as a client does it
            index.commit(txid)
            print("committed", flush=True)
        except LockstepError:
            print("vector-failed", flush=True)  # the stores now disagree


@dataclass
class Tally:
    approach: str
    runs: int = 0
    writes: int = 0
    committed: int = 0
    kills: int = 0
    facts: int = 0
    vectors: int = 0
    drifted_facts: int = 0
    drifted_runs: int = 0
    left_staged: int = 0


def measure(directory: Path, mode: str) -> tuple[int, int, int, int]:
    """(facts, vectors, facts that differ between them, branches left staged)."""
    if mode == "lockstep":
        mem = MemoryStore.open(directory)  # recovery runs here
        try:
            report = mem.verify()
            vectors = len(mem.indexes[0].contents().committed)
            staged = sum(len(v) for v in report.staged.values())
            staged += sum(len(d.pending) for d in report.derived.values())
            return report.facts, vectors, report.drifted_facts, staged
        finally:
            mem.close()
    storage, index = _baseline_stores(directory)
    try:
        in_sql = {f.id: f.version for f in storage.all_facts()}
        in_vectors = dict(index.contents().committed)
        ids = set(in_sql) | set(in_vectors)
        drifted = sum(in_sql.get(k) != in_vectors.get(k) for k in ids)
        return len(in_sql), len(in_vectors), drifted, 0
    finally:
        storage.close()
        index.close()


def run_once(mode: str, seed: int, ops: int, fail_rate: float, tally: Tally) -> None:
    rng = random.Random(seed * 7919)
    with tempfile.TemporaryDirectory(prefix="lockstep-demo-") as tmp:
        env = dict(os.environ)
        named = rng.random() < 0.5
        if named:
            point = "between_writes" if mode == "unsynchronised" else rng.choice(NAMED_POINTS)
            env["LOCKSTEP_KILL_AT"] = point
            env["LOCKSTEP_KILL_SKIP"] = str(rng.randrange(ops // 2))
        args = [sys.executable, "-m", "coordinator._demo", "--worker", mode, "--dir", tmp]
        args += ["--seed", str(seed), "--writes", str(ops), "--fail-rate", str(fail_rate)]
        child = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)
        assert child.stdout is not None
        lines: list[str] = []
        kill_after = None if named else rng.randrange(1, ops)
        for line in child.stdout:
            lines.append(line.strip())
            if len(lines) == kill_after:
                # A random moment inside the next write: the kill lands mid-operation.
                time.sleep(rng.uniform(0, 0.02))
                child.send_signal(signal.SIGKILL)
                break
        child.wait(timeout=300)
        killed = child.returncode == -signal.SIGKILL
        facts, vectors, drifted, staged = measure(Path(tmp), mode)
    tally.runs += 1
    tally.writes += len(lines) + (1 if killed else 0)
    tally.committed += lines.count("committed")
    tally.kills += killed
    tally.facts += facts
    tally.vectors += vectors
    tally.drifted_facts += drifted
    tally.drifted_runs += drifted > 0 or staged > 0
    tally.left_staged += staged


def demo(runs: int, ops: int, fail_rate: float, as_json: bool) -> int:
    tallies = [Tally("unsynchronised (SQL, then vector)"), Tally("Lockstep (one atomic commit)")]
    out = sys.stderr if as_json else sys.stdout
    print(
        f"Lockstep demo: {runs} runs per approach, {ops} memory writes each (SQLite facts, "
        f"Qdrant vectors, offline embeddings); {fail_rate:.0%} of vector writes fail and "
        "the writer is SIGKILLed in every run.",
        file=out,
    )
    for n in range(runs):
        for mode, tally in zip(("unsynchronised", "lockstep"), tallies, strict=True):
            run_once(mode, 1000 + n, ops, fail_rate, tally)
        print(f"  run {n + 1}/{runs} done", file=out, flush=True)
    if as_json:
        print(json.dumps([asdict(t) for t in tallies], indent=2))
    else:
        print(_table(tallies))
    lockstep = tallies[1]
    return 0 if lockstep.drifted_facts == 0 and lockstep.left_staged == 0 else 1


def _table(tallies: list[Tally]) -> str:
    rows: list[dict[str, Any]] = [
        {
            "approach": t.approach,
            "runs": t.runs,
            "writes": t.writes,
            "committed": t.committed,
            "killed": t.kills,
            "facts": t.facts,
            "vectors": t.vectors,
            "drifted facts": t.drifted_facts,
            "runs with drift": t.drifted_runs,
        }
        for t in tallies
    ]
    return text_table(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coordinator._demo")
    parser.add_argument("--worker", choices=["unsynchronised", "lockstep"])
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--writes", type=int, default=30)
    parser.add_argument("--fail-rate", type=float, default=0.1)
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.worker == "lockstep":
        lockstep_worker(args.dir, random.Random(args.seed), args.writes, args.fail_rate)
        return 0
    if args.worker == "unsynchronised":
        unsynchronised_worker(args.dir, random.Random(args.seed), args.writes, args.fail_rate)
        return 0
    return demo(args.runs, args.writes, args.fail_rate, args.json)


if __name__ == "__main__":
    sys.exit(main())
