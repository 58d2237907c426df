"""Crash benchmark: a writer process SIGKILLed at a random moment, then reopened.

For each system (unsynchronised writes, MemState 0.5.1, Lockstep) and run: a child process
writes memories to SQLite + Qdrant local (inserts, updates, deletes), the parent kills it
with SIGKILL after a random number of operations plus a random fraction of the next one,
reopens the stores (Lockstep runs its recovery; the others have none) and counts the
facts whose SQL row and vector disagree. Systems alternate run by run.

    python -m benchmarks.crash [--runs 200] [--json out.json]
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
from pathlib import Path
from typing import Any

from benchmarks._common import ROOT, embed, ensure_memstate_env, machine
from benchmarks.failure import _compare, _points

SYSTEMS = ["unsynchronised", "memstate", "lockstep"]


def child(system: str, directory: Path, seed: int) -> None:
    rng = random.Random(seed)
    if system == "memstate":
        from memstate import Fact, MemoryStore, SQLiteStorage
        from memstate.integrations.qdrant import QdrantSyncHook
        from qdrant_client import QdrantClient

        hook = QdrantSyncHook(
            QdrantClient(path=str(directory / "qdrant")),
            "memories",
            embedding_fn=embed,
            text_field="content",
        )
        mem: Any = MemoryStore(SQLiteStorage(str(directory / "facts.db")), hooks=[hook])
        ids: list[str] = []
        for i in range(10_000):
            roll = rng.random()
            if ids and roll < 0.1:
                mem.delete(None, ids.pop(rng.randrange(len(ids))))
            elif ids and roll < 0.4:
                mem.update(rng.choice(ids), {"payload": {"content": f"memory {i}"}})
            else:
                ids.append(mem.commit(Fact(type="note", payload={"content": f"memory {i}"})))
            print("op", flush=True)
        return
    from benchmarks.failure import _ours_stores

    storage, index, mem = _ours_stores(system, directory)
    ids = []
    for i in range(10_000):
        roll = rng.random()
        if ids and roll < 0.1:
            fid = ids.pop(rng.randrange(len(ids)))
            _write(system, storage, index, mem, fid, None)
        elif ids and roll < 0.4:
            _write(system, storage, index, mem, rng.choice(ids), f"memory {i}")
        else:
            fid = f"f{i}"
            _write(system, storage, index, mem, fid, f"memory {i}")
            ids.append(fid)
        print("op", flush=True)


def _write(system: str, storage: Any, index: Any, mem: Any, fid: str, text: str | None) -> None:
    from coordinator import Fact, new_txid
    from coordinator.records import DeleteFact, FactRecord, UpsertFact

    if system == "lockstep":
        if text is None:
            mem.delete(None, fid)
        elif mem.get(fid) is None:
            mem.commit(Fact(id=fid, type="note", payload={"content": text}))
        else:
            mem.update(fid, {"payload": {"content": text}})
        return
    current = storage.get(fid)
    version = 0 if current is None else current.version
    txid = new_txid()
    if text is None:
        writes: list[Any] = [DeleteFact(fid, version)]
    else:
        writes = [
            UpsertFact(
                FactRecord(fid, "note", {"content": text}, version + 1),
                version,
                embedding=tuple(embed(text)),
            )
        ]
    storage.commit_one_phase(txid, writes)
    index.prepare(txid, writes)
    index.commit(txid)


def measure(system: str, directory: Path) -> int:
    if system == "memstate":
        return -1  # measured by the MemState environment (see main)
    from benchmarks.failure import _ours_stores

    storage, index, mem = _ours_stores(system, directory)
    try:
        if system == "lockstep":
            mem.coordinator_with(in_doubt_timeout=0.001, redrive_after=0).recover()
            report = mem.verify()
            return int(report.drifted_facts + sum(len(d.pending) for d in report.derived.values()))
        facts = {f.id: f.version for f in storage.all_facts()}
        held = dict(index.contents().committed)
        return sum(facts.get(k) != held.get(k) for k in set(facts) | set(held))
    finally:
        index.close()
        storage.close()


def measure_memstate(directory: Path) -> int:
    from memstate import MemoryStore, SQLiteStorage
    from qdrant_client import QdrantClient

    mem = MemoryStore(SQLiteStorage(str(directory / "facts.db")))
    facts = {f["id"]: f["payload"]["content"] for f in mem.query(typename="note")}
    client = QdrantClient(path=str(directory / "qdrant"))
    points = _points(client) if client.collection_exists("memories") else {}
    return int(_compare(facts, points)["drift"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--child", nargs=3, metavar=("SYSTEM", "DIR", "SEED"), help=argparse.SUPPRESS
    )
    parser.add_argument("--measure", nargs=2, metavar=("SYSTEM", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), int(args.child[2]))
        return 0
    if args.measure:
        system, directory = args.measure[0], Path(args.measure[1])
        found = measure_memstate(directory) if system == "memstate" else measure(system, directory)
        print(found)
        return 0
    memstate_python = str(ensure_memstate_env())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = random.Random(11)
    drifted: dict[str, list[int]] = {s: [] for s in SYSTEMS}
    for n in range(args.runs):
        for system in SYSTEMS:
            python = memstate_python if system == "memstate" else sys.executable
            with tempfile.TemporaryDirectory() as tmp:
                proc = subprocess.Popen(
                    [python, "-m", "benchmarks.crash", "--child", system, tmp, str(n)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                    cwd=ROOT,
                    env=env,
                )
                assert proc.stdout is not None
                target = rng.randrange(5, 40)
                for count, _ in enumerate(proc.stdout, 1):
                    if count >= target:
                        time.sleep(rng.uniform(0, 0.01))  # lands inside the next operation
                        break
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=60)
                done = subprocess.run(
                    [python, "-m", "benchmarks.crash", "--measure", system, tmp],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=ROOT,
                    env=env,
                )
                drifted[system].append(int(done.stdout.strip().splitlines()[-1]))
        if (n + 1) % 10 == 0:
            print(f"  run {n + 1}/{args.runs}", file=sys.stderr, flush=True)
    print(f"## Crash benchmark\n\nMachine: {machine()}\n")
    print(f"{args.runs} SIGKILLed runs per system, SQLite + Qdrant local, systems alternating.\n")
    print("| system | runs | runs with drift | share | drifted facts |")
    print("|---|---:|---:|---:|---:|")
    for system, counts in drifted.items():
        bad = sum(c > 0 for c in counts)
        print(f"| {system} | {len(counts)} | {bad} | {bad / len(counts):.0%} | {sum(counts)} |")
    if args.json:
        args.json.write_text(json.dumps(drifted, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
