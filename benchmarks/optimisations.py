"""Each optimisation of the protocol on and off, through the memory API, on real stores.

One-phase commit (a storage alone: SQLite, Redis), group commit of the SQLite storage
(concurrent one-phase and last-resource commits in one local transaction), the
last-resource commit (the storage holding the decision log: the default for SQLite,
Postgres and Redis, compared here on Postgres and Redis with the log passed explicitly), the last resource staged while the others
prepare (Postgres), concurrent prepares, write combining (group
commit of a Chroma index's prepares: concurrent transactions stage their points in one
upsert), and deferred finishing of the indexes. Group commit of a separate decision log,
which the memory API's default no longer writes to, is measured by ``benchmarks.engine``. Every configuration writes the same workload (inserts, then
updates of the same facts) with 1 writer and 8 writer threads. Each configuration runs in
its own child process (the commit-cost benchmark's), which keeps its store open while the
configurations of a combination take turns of ``--slice`` writes a writer, the first of a
turn rotating. Each optimisation is compared with the default configuration of the same
stores in the same run.

    python -m benchmarks.optimisations [--ops 200] [--rounds 2] [--slice 25] [--combos a,b]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import commit_cost
from benchmarks._common import (
    accumulate,
    children,
    machine,
    percentile_ms,
    pick,
    positive,
    take_turns,
)
from benchmarks._stores import Servers, redis_storage_url

# optimisation -> (the combinations it acts on, the configuration that flips it, its
# state in that configuration)
TOGGLES: dict[str, tuple[list[str], dict[str, Any], str]] = {
    "one-phase commit": (["sqlite", "redis"], {"policy": {"one_phase": False}}, "off"),
    "group commit": (
        ["sqlite", "sqlite + qdrant local"],
        {"storage_query": "?group_commit=0"},
        "off",
    ),
    # The log given explicitly: the storage's own, which it then no longer commits with.
    "last resource": (
        ["redis + qdrant local", "postgres + redis + chroma server"],
        {"log": "{storage}"},
        "off",
    ),
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
    "redis",
    "redis + qdrant local",
    "postgres + qdrant local",
    "postgres + redis + chroma server",
]
# The commit-cost benchmark's modes with threads: mode -> writers.
MODES = {mode: commit_cost.MODES[mode][0] for mode in ("1 writer", "8 threads")}
KINDS = ("insert", "update")


def _configs(combo: str) -> list[tuple[str, dict[str, Any]]]:
    """(configuration name, changes) of every configuration measured on ``combo``."""
    return [("default", {})] + [
        (name, changes) for name, (combos, changes, _) in TOGGLES.items() if combo in combos
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ops", type=int, default=200, help="writes per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--slice",
        type=positive,
        default=25,
        help="writes each writer makes in a configuration's turn before the next one's",
    )
    parser.add_argument("--combos", default=",".join(COMBOS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    combos = pick(parser, "--combos", args.combos, COMBOS)
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    failures: dict[tuple[str, str, str], str] = {}
    with tempfile.TemporaryDirectory(prefix="lockstep-optimisations-") as tmp:
        servers = Servers(Path(tmp))
        try:
            for round_ in range(args.rounds):
                for combo in combos:
                    for mode in MODES:
                        specs = {}
                        for name, changes in _configs(combo):
                            spec = {**servers.spec_for(combo), **changes}
                            if "log" in spec:  # the decision log in the storage's database
                                own = spec.get("pg_url") or redis_storage_url(spec)
                                spec["log"] = spec["log"].format(storage=own)
                            specs[name] = {
                                **spec,
                                "combo": combo,
                                "mode": mode,
                                "system": "lockstep",
                            }
                        _measure(specs, Path(tmp), args, round_, merged, failures)
                print(f"  round {round_ + 1} done", file=sys.stderr, flush=True)
        finally:
            servers.stop()
    rows = _rows(merged)
    _print(rows, args, failures)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": machine(), "ops": args.ops, "slice": args.slice, "results": rows},
                indent=2,
            )
        )
    return 0


def _measure(
    specs: dict[str, dict[str, Any]],
    tmp: Path,
    args: argparse.Namespace,
    round_: int,
    merged: dict[tuple[str, str, str], dict[str, Any]],
    failures: dict[tuple[str, str, str], str],
) -> None:
    """One round of one combination and mode: every configuration's child opens its
    store, then they take turns until each writer has made its inserts, then its updates."""
    combo, mode = specs["default"]["combo"], specs["default"]["mode"]
    share = max(1, args.ops // MODES[mode] // 2)
    with children(commit_cost.MODULE, specs, tmp, {}) as running:
        for name, _, answer in take_turns(running, KINDS, share, args.slice, round_):
            if isinstance(answer, str):
                failures[(combo, name, mode)] = answer
            else:
                accumulate(merged, (combo, name, mode), answer)


def _rows(merged: dict[tuple[str, str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for combo, name in [(c, n) for c in COMBOS for n, _ in _configs(c) if n != "default"]:
        state = TOGGLES[name][2]
        for mode in MODES:
            toggled, default = merged.get((combo, name, mode)), merged.get((combo, "default", mode))
            if not toggled or not default:
                continue
            on, off = (toggled, default) if state == "on" else (default, toggled)
            row: dict[str, Any] = {"optimisation": name, "combo": combo, "mode": mode}
            for label, r in (("on", on), ("off", off)):
                row[f"{label}_p50_ms"] = round(percentile_ms(r["latencies"], 0.5), 2)
                row[f"{label}_ops_per_s"] = round(len(r["latencies"]) / r["seconds"], 1)
            row["p50_ratio"] = round(row["on_p50_ms"] / row["off_p50_ms"], 2)
            row["throughput_ratio"] = round(row["on_ops_per_s"] / row["off_ops_per_s"], 2)
            rows.append(row)
    return rows


def _print(
    rows: list[dict[str, Any]], args: argparse.Namespace, failures: dict[tuple[str, str, str], str]
) -> None:
    print(f"## Optimisations on and off\n\nMachine: {machine()}\n")
    print(
        f"{args.ops} writes per round and configuration (inserts, then updates of the same "
        f"facts), {args.rounds} rounds, the configurations taking turns of {args.slice} writes "
        "a writer; ratios are on / off.\n"
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
