"""Commit cost of the engine, with its optimisations on and off, against unsynchronised writes.

Two stores (SQLite facts and a second SQLite file standing in for an index) on the real disk,
SQLite decision log, all with ``synchronous=FULL``. Every configuration runs the same
workload (inserts) in the same run, rounds alternating between configurations, with 1
writer and with 8 writer threads. Ratios are against unsynchronised writes (facts, then
index, each its own durable transaction), the way agent-memory libraries write.

    python -m benchmarks.engine [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks._common import machine, percentile_ms, run_threads
from coordinator import Coordinator, FactRecord, Policy, UpsertFact, new_txid
from coordinator.log import SQLiteDecisionLog
from participants.sqlite import SQLiteStorage

CONFIGS: dict[str, Policy | None] = {
    "unsynchronised": None,
    "lockstep": Policy(),
    "lockstep, no group commit": Policy(),
    "lockstep, sequential prepare": Policy(concurrent_prepare=False),
}


@dataclass
class Result:
    config: str
    writers: int
    latencies: list[float]
    seconds: float

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds

    def pct(self, q: float) -> float:
        return percentile_ms(self.latencies, q)


def make_commit(config: str, directory: Path) -> Callable[[int], None]:
    facts = SQLiteStorage(directory / "facts.db", name="facts")
    index = SQLiteStorage(directory / "index.db", name="index")
    if config == "unsynchronised":

        def write_both(n: int) -> None:
            txid = new_txid()
            writes = [UpsertFact(FactRecord(f"f{n}", "memory", {"n": n}, 1), 0)]
            facts.commit_one_phase(txid, writes)
            index.commit_one_phase(txid, writes)

        return write_both
    log = SQLiteDecisionLog(directory / "log.db", group_commit="no group commit" not in config)
    coordinator = Coordinator([facts, index], log, policy=CONFIGS[config])

    def commit(n: int) -> None:
        writes = [UpsertFact(FactRecord(f"f{n}", "memory", {"n": n}, 1), 0)]
        coordinator.commit({"facts": writes, "index": writes})

    return commit


def run(config: str, writers: int, commits: int) -> Result:
    with tempfile.TemporaryDirectory(prefix="lockstep-bench-") as tmp:
        commit = make_commit(config, Path(tmp))
        latencies: list[float] = []
        lock = threading.Lock()

        def worker(first: int) -> None:
            mine = []
            for n in range(first, commits, writers):
                started = time.perf_counter()
                commit(n)
                mine.append(time.perf_counter() - started)
            with lock:
                latencies.extend(mine)

        started = time.perf_counter()
        run_threads(worker, writers)
        return Result(config, writers, latencies, time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer commits and rounds")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    commits, rounds = (60, 1) if args.quick else (200, 3)

    merged: dict[tuple[str, int], Result] = {}
    for round_ in range(rounds):
        for writers in (1, 8):
            for config in CONFIGS:  # alternate configurations inside every round
                r = run(config, writers, commits)
                key = (config, writers)
                if key in merged:
                    merged[key].latencies += r.latencies
                    merged[key].seconds += r.seconds
                else:
                    merged[key] = r
        print(f"round {round_ + 1}/{rounds} done", file=sys.stderr, flush=True)

    print(f"## Engine commit cost\n\nMachine: {machine()}\n")
    print(f"{commits} inserts per run, {rounds} rounds, two stores + decision log.\n")
    print(
        "| configuration | writers | p50 ms | p99 ms | commits/s | p50 vs unsync | tput vs unsync |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = []
    for (config, writers), r in merged.items():
        base = merged[("unsynchronised", writers)]
        row = {
            "configuration": config,
            "writers": writers,
            "p50_ms": round(r.pct(0.5), 2),
            "p99_ms": round(r.pct(0.99), 2),
            "commits_per_s": round(r.throughput, 1),
            "p50_ratio": round(r.pct(0.5) / base.pct(0.5), 2),
            "throughput_ratio": round(r.throughput / base.throughput, 2),
            "mean_ms": round(statistics.fmean(r.latencies) * 1000, 2),
        }
        rows.append(row)
        print(
            f"| {config} | {writers} | {row['p50_ms']} | {row['p99_ms']} | "
            f"{row['commits_per_s']} | {row['p50_ratio']}x | {row['throughput_ratio']}x |"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
