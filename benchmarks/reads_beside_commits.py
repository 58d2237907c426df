"""Reads beside commits: how long an agent's read waits while other threads commit.

One process, SQLite alone: ``writers`` threads commit new facts without pause while one
reader calls ``get`` on facts committed beforehand, a read every half millisecond, and the
read latencies are recorded (p50 / p99), with the commits the writers made meanwhile.
Lockstep's SQLite storage reads on a second connection while a commit holds the first
(WAL lets readers run beside a writer), so a read does not wait for a commit's fsync;
MemState reads and writes one connection behind one lock. Each measurement runs in its
own process, systems alternating; MemState keeps its own setting (``synchronous=NORMAL``,
no fsync at commit) unless ``--memstate-synchronous full``.

    python -m benchmarks.reads_beside_commits [--reads 1000] [--rounds 2] [--writers 0,1,4,8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._common import ensure_memstate_env, machine, run_child, serve_child
from benchmarks._stores import lockstep_store, memstate_store

MODULE = "benchmarks.reads_beside_commits"
SYSTEMS = ["memstate", "lockstep"]
LABELS = {"memstate": "MemState", "lockstep": "Lockstep"}
SEEDED = 100


def child(spec: dict[str, Any]) -> dict[str, Any]:
    system = spec["system"]
    mem = memstate_store(spec) if system == "memstate" else lockstep_store(spec)
    if system == "memstate":
        from memstate import Fact as MemStateFact

        def fact(text: str) -> Any:
            return MemStateFact(type="note", payload={"content": text})
    else:
        from coordinator import Fact

        def fact(text: str) -> Any:
            return Fact(type="note", payload={"content": text})

    ids = [mem.commit(fact(f"seeded {i}"), "reader") for i in range(SEEDED)]
    stop = threading.Event()
    commits = [0] * spec["writers"]

    def write(w: int) -> None:
        while not stop.is_set():
            mem.commit(fact(f"writer {w} remembers {commits[w]}"), f"w{w}")
            commits[w] += 1

    threads = [threading.Thread(target=write, args=(w,)) for w in range(spec["writers"])]
    for t in threads:
        t.start()
    time.sleep(0.2)  # the writers under way
    latencies = []
    started = time.perf_counter()
    before = sum(commits)
    for i in range(spec["reads"]):
        began = time.perf_counter()
        assert mem.get(ids[i % SEEDED]) is not None
        latencies.append(time.perf_counter() - began)
        time.sleep(0.0005)
    seconds = time.perf_counter() - started
    made = sum(commits) - before
    stop.set()
    for t in threads:
        t.join()
    return {"latencies": latencies, "commits_per_s": made / seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reads", type=int, default=1000, help="reads per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--writers", default="0,1,4,8")
    parser.add_argument("--memstate-synchronous", choices=["normal", "full"], default="normal")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        serve_child(child, args.child)
    try:
        counts = [int(n) for n in args.writers.split(",")]
    except ValueError:
        parser.error(f"--writers: expected comma-separated integers, got {args.writers!r}")
    pythons = {"memstate": str(ensure_memstate_env()), "lockstep": sys.executable}
    merged: dict[tuple[int, str], dict[str, list[float]]] = {}
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="lockstep-reads-") as tmp:
        for round_ in range(args.rounds):
            for writers in counts:
                order = SYSTEMS if round_ % 2 == 0 else SYSTEMS[::-1]
                for system in order:
                    spec = {
                        "combo": "sqlite",
                        "system": system,
                        "collection": "unused",
                        "writers": writers,
                        "reads": args.reads,
                        "memstate_synchronous": args.memstate_synchronous,
                    }
                    result = run_child(MODULE, spec, Path(tmp), pythons[system])
                    if isinstance(result, str):
                        failures.append(f"{LABELS[system]}, {writers} writers: {result}")
                        continue
                    slot = merged.setdefault((writers, system), {"latencies": [], "rates": []})
                    slot["latencies"] += result["latencies"]
                    slot["rates"].append(result["commits_per_s"])
                print(f"  round {round_ + 1}: {writers} writers", file=sys.stderr, flush=True)
    rows = []
    for writers in counts:
        row: dict[str, Any] = {"writers": writers}
        for system in SYSTEMS:
            measured = merged.get((writers, system))
            if measured:
                ordered = sorted(measured["latencies"])
                row[system] = {
                    "p50_ms": ordered[len(ordered) // 2] * 1000,
                    "p99_ms": ordered[int(len(ordered) * 0.99)] * 1000,
                    "commits_per_s": statistics.mean(measured["rates"]),
                }
        rows.append(row)
    _print(rows, args)
    for failure in failures:
        print(f"\nnot measured: {failure}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "results": rows}, indent=2))
    return 0


def _print(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print("## Reads beside commits: Lockstep vs MemState 0.5.1, SQLite\n")
    print(f"Machine: {machine()}\n")
    setting = "FULL (as durable as Lockstep)" if args.memstate_synchronous == "full" else "NORMAL"
    print(
        f"MemState's SQLite synchronous={setting}. {args.reads} reads (`get`) per "
        f"measurement, {args.rounds} rounds, one every half millisecond while the writers "
        "commit without pause; read latency p50 / p99 ms, and the writers' commits/s "
        "meanwhile. Lockstep's ratios are to MemState's.\n"
    )
    print(
        "| writers | MemState read p50 / p99 | Lockstep read p50 / p99 | MemState commits/s | Lockstep commits/s |"
    )
    print("|---:|---:|---:|---:|---:|")

    def cell(row: dict[str, Any], system: str, key: str) -> float | None:
        return row[system][key] if system in row else None

    for row in rows:
        ms50, ms99 = cell(row, "memstate", "p50_ms"), cell(row, "memstate", "p99_ms")
        ls50, ls99 = cell(row, "lockstep", "p50_ms"), cell(row, "lockstep", "p99_ms")
        mrate, lrate = (
            cell(row, "memstate", "commits_per_s"),
            cell(row, "lockstep", "commits_per_s"),
        )
        memstate = "—" if ms50 is None else f"{ms50:.3f} / {ms99:.3f}"
        lockstep = "—" if ls50 is None else f"{ls50:.3f} / {ls99:.3f}"
        if ms50 and ls50 is not None:
            lockstep += f" ({ls50 / ms50:.2f}x)"
        print(
            f"| {row['writers']} | {memstate} | {lockstep} | "
            f"{'—' if mrate is None else f'{mrate:.0f}'} | "
            f"{'—' if lrate is None else f'{lrate:.0f}'} |"
        )


if __name__ == "__main__":
    sys.exit(main())
