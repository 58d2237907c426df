"""Each optimisation of the protocol on and off, through the memory API, on real stores.

One-phase commit (a storage alone), group commit of the SQLite storage (concurrent
one-phase and last-resource commits in one local transaction), the last-resource commit
(the storage holding the decision log: the default for SQLite and Postgres, compared here
on Postgres with the log passed explicitly), the last resource staged while the others
prepare (Postgres), concurrent prepares, write combining (group
commit of a Chroma index's prepares: concurrent transactions stage their points in one
upsert), and deferred finishing of the indexes. Group commit of a separate decision log,
which the memory API's default no longer writes to, is measured by ``benchmarks.engine``. Every configuration writes the same workload (inserts, then
updates of the same facts) with 1 writer and 8 writer threads, each run in its own child
process, configurations alternating inside every round. Each optimisation is compared with
the default configuration of the same stores in the same run.

    python -m benchmarks.optimisations [--ops 200] [--rounds 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._common import machine, run_child, run_threads, serve_child
from benchmarks._stores import Servers, lockstep_store

MODULE = "benchmarks.optimisations"

# optimisation -> (the combinations it acts on, the configuration that flips it, its
# state in that configuration)
TOGGLES: dict[str, tuple[list[str], dict[str, Any], str]] = {
    "one-phase commit": (["sqlite"], {"policy": {"one_phase": False}}, "off"),
    "group commit": (
        ["sqlite", "sqlite + qdrant local"],
        {"storage_query": "?group_commit=0"},
        "off",
    ),
    "last resource": (["postgres + redis + chroma server"], {"log": "{pg_url}"}, "off"),
    "staged last resource": (
        ["postgres + qdrant local", "postgres + redis + chroma server"],
        {"policy": {"stage_last_resource": False}},
        "off",
    ),
    # Only where two or more participants prepare: on SQLite + Qdrant local the storage
    # commits last and the index alone prepares, so turning this off changes nothing.
    "concurrent prepare": (
        ["postgres + redis + chroma server"],
        {"policy": {"concurrent_prepare": False}},
        "off",
    ),
    "write combining": (
        ["postgres + redis + chroma server"],
        {"index_query": "&combine_writes=0"},
        "off",
    ),
    "deferred finishing": (
        ["sqlite + qdrant local", "postgres + redis + chroma server"],
        {"policy": {"deferred_finish": True}},
        "on",
    ),
}
COMBOS = [
    "sqlite",
    "sqlite + qdrant local",
    "postgres + qdrant local",
    "postgres + redis + chroma server",
]
MODES = {"1 writer": 1, "8 threads": 8}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    from coordinator import Fact

    for key in ("log",):  # placeholders only the child can fill
        if key in spec:
            spec[key] = spec[key].format(dir=spec["dir"], pg_url=spec.get("pg_url", ""))
    mem = lockstep_store(spec)
    writers = MODES[spec["mode"]]
    per_writer = max(1, spec["ops"] // writers // 2)
    latencies: list[float] = []
    lock = threading.Lock()

    def work(w: int) -> None:
        mine, ids = [], []
        for i in range(per_writer):
            started = time.perf_counter()
            ids.append(mem.commit(Fact(type="note", payload={"content": f"w{w} thing {i}"})))
            mine.append(time.perf_counter() - started)
        for i, fact_id in enumerate(ids):
            started = time.perf_counter()
            mem.update(fact_id, {"payload": {"content": f"w{w} revised thing {i}"}})
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    run_threads(work, writers)
    mem.flush()  # deferred work still queued is part of the cost
    seconds = time.perf_counter() - started
    return {"latencies": latencies, "seconds": seconds}


def _configs() -> list[tuple[str, str, dict[str, Any]]]:
    """(combination, configuration name, changes) for every run of a round."""
    runs: list[tuple[str, str, dict[str, Any]]] = []
    for combo in COMBOS:
        runs.append((combo, "default", {}))
        for name, (combos, changes, _) in TOGGLES.items():
            if combo in combos:
                runs.append((combo, name, changes))
    return runs


def _p50(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] * 1000 if ordered else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ops", type=int, default=200, help="writes per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        serve_child(child, args.child)
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    failures: dict[tuple[str, str, str], str] = {}
    runs = _configs()
    with tempfile.TemporaryDirectory(prefix="lockstep-optimisations-") as tmp:
        servers = Servers(Path(tmp))
        try:
            for round_ in range(args.rounds):
                order = runs if round_ % 2 == 0 else runs[::-1]
                for combo, name, changes in order:
                    for mode in MODES:
                        spec = {
                            **servers.spec_for(combo),
                            **changes,
                            "combo": combo,
                            "mode": mode,
                            "system": "lockstep",
                            "ops": args.ops,
                        }
                        result = run_child(MODULE, spec, Path(tmp))
                        if isinstance(result, str):
                            failures[(combo, name, mode)] = result
                            continue
                        slot = merged.setdefault(
                            (combo, name, mode), {"latencies": [], "seconds": 0.0}
                        )
                        slot["latencies"] += result["latencies"]
                        slot["seconds"] += result["seconds"]
                print(f"  round {round_ + 1} done", file=sys.stderr, flush=True)
        finally:
            servers.stop()
    rows = _rows(merged)
    _print(rows, args.ops, args.rounds, failures)
    if args.json:
        args.json.write_text(
            json.dumps({"machine": machine(), "ops": args.ops, "results": rows}, indent=2)
        )
    return 0


def _rows(merged: dict[tuple[str, str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for combo, name, _ in _configs():
        if name == "default":
            continue
        state = TOGGLES[name][2]
        for mode in MODES:
            toggled, default = merged.get((combo, name, mode)), merged.get((combo, "default", mode))
            if not toggled or not default:
                continue
            on, off = (toggled, default) if state == "on" else (default, toggled)
            row: dict[str, Any] = {"optimisation": name, "combo": combo, "mode": mode}
            for label, r in (("on", on), ("off", off)):
                row[f"{label}_p50_ms"] = round(_p50(r["latencies"]), 2)
                row[f"{label}_ops_per_s"] = round(len(r["latencies"]) / r["seconds"], 1)
            row["p50_ratio"] = round(row["on_p50_ms"] / row["off_p50_ms"], 2)
            row["throughput_ratio"] = round(row["on_ops_per_s"] / row["off_ops_per_s"], 2)
            rows.append(row)
    return rows


def _print(
    rows: list[dict[str, Any]], ops: int, rounds: int, failures: dict[tuple[str, str, str], str]
) -> None:
    print(f"## Optimisations on and off\n\nMachine: {machine()}\n")
    print(
        f"{ops} writes per run (inserts, then updates of the same facts), {rounds} rounds; "
        "ratios are on / off.\n"
    )
    print(
        "| optimisation | stores | writers | on: p50 ms | off: p50 ms | p50 on/off "
        "| on: ops/s | off: ops/s | throughput on/off |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['optimisation']} | {r['combo']} | {r['mode']} | {r['on_p50_ms']} "
            f"| {r['off_p50_ms']} | {r['p50_ratio']}x | {r['on_ops_per_s']} "
            f"| {r['off_ops_per_s']} | {r['throughput_ratio']}x |"
        )
    for (combo, name, mode), why in failures.items():
        print(f"\nnot measured: {name} on {combo}, {mode}: {why}")


if __name__ == "__main__":
    sys.exit(main())
