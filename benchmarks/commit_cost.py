"""Commit cost: Lockstep against MemState 0.5.1 on the same stores, side by side.

Inserts, updates, rollbacks and deletes through each system's memory API, with 1 writer,
8 writer threads and 8 asyncio tasks, on every backend combination. Lockstep runs twice:
as configured by default, and with ``Policy(deferred_finish=True)`` (the indexes' phase 2
batched; the time of the last batch, run by ``flush()`` after each kind of operation, is
counted in the throughput). Each writer has its
own facts and session (no conflicts). Both systems get the same deterministic embedder, so
the layer is measured, not a model. Each system runs in its own child process (MemState in
its own environment, ``benchmarks/.venv-memstate``), which keeps its store open for the
round while the systems take turns: each writer runs ``--slice`` operations of one kind,
then the next system does, the first of a turn rotating. A store's latency drifts over
seconds (a Chroma write costs more the more records wait to be persisted: see
``benchmarks.chroma_sync``), and short turns spread that drift over every system alike.
Lockstep is durable (SQLite ``synchronous=FULL``, Postgres ``fsync=on``, Redis ``appendfsync
always``); MemState keeps its own settings (SQLite ``synchronous=NORMAL``; its Chroma
collection as it makes it, unless ``--memstate-chroma-sync`` gives it Lockstep's setting). Beside latency and throughput, the writer
process's CPU time per operation: on in-process stores both systems are CPU-bound on a
small machine, and throughput follows it.

    python -m benchmarks.commit_cost [--ops 200] [--rounds 2] [--slice 25] [--combos a,b] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._common import (
    accumulate,
    children,
    ensure_memstate_env,
    machine,
    percentile_ms,
    pick,
    positive,
    run_threads,
    serve_commands,
    take_turns,
)
from benchmarks._stores import COMBOS, Servers, lockstep_store, memstate_store, memstate_store_async

MODULE = "benchmarks.commit_cost"

MODES = {"1 writer": (1, False), "8 threads": (8, False), "8 asyncio tasks": (8, True)}
OPS = ["insert", "update", "rollback", "delete"]
SYSTEMS = ["memstate", "lockstep", "lockstep-deferred"]
LABELS = {"memstate": "MemState", "lockstep": "Lockstep", "lockstep-deferred": "Lockstep deferred"}


# -- the child: one system, one combination, one mode, its store kept open ---------------


class Writers:
    """One system's store on one combination, with the mode's writers; each command is
    a turn: every writer runs the next ``ops`` operations of one kind (``flush``: then the
    deferred queue is finished, inside the turn's time)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.system = spec["system"]
        self.writers, self.asynchronous = MODES[spec["mode"]]
        self.ids: list[list[str]] = [[] for _ in range(self.writers)]
        self.done = dict.fromkeys(OPS, 0)  # operations of each kind each writer has run
        self.loop: asyncio.AbstractEventLoop | None = None
        if self.asynchronous:
            self.loop = asyncio.new_event_loop()
            self.mem = self.loop.run_until_complete(self._open_async(spec))
        elif self.system == "memstate":
            self.mem = memstate_store(spec)
        else:
            self.mem = lockstep_store(spec)

    @staticmethod
    async def _open_async(spec: dict[str, Any]) -> Any:
        if spec["system"] == "memstate":
            return await memstate_store_async(spec)
        return lockstep_store(spec, asynchronous=True)

    def __call__(self, command: dict[str, Any]) -> dict[str, Any]:
        op, count = command["op"], command["ops"]
        numbers = range(self.done[op], self.done[op] + count)
        self.done[op] += count
        latencies: list[float] = []
        started, cpu = time.perf_counter(), time.process_time()
        if self.loop is not None:
            self.loop.run_until_complete(self._async_turn(op, numbers, latencies))
            if command["flush"] and self.system != "memstate":
                self.loop.run_until_complete(self.mem.flush())
        else:
            lock = threading.Lock()

            def work(w: int) -> None:
                mine = []
                for i in numbers:
                    began = time.perf_counter()
                    _one(self.system, self.mem, op, w, i, self.ids[w])
                    mine.append(time.perf_counter() - began)
                with lock:
                    latencies.extend(mine)

            run_threads(work, self.writers)
            if command["flush"] and self.system != "memstate":
                self.mem.flush()  # deferred work left in the queue is part of the cost
        return {
            "latencies": latencies,
            "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu,
        }

    async def _async_turn(self, op: str, numbers: range, latencies: list[float]) -> None:
        async def work(w: int) -> None:
            for i in numbers:
                began = time.perf_counter()
                method, args = _call(self.system, op, w, i, self.ids[w])
                result = await getattr(self.mem, method)(*args)
                if op == "insert":
                    self.ids[w].append(result)
                latencies.append(time.perf_counter() - began)

        await asyncio.gather(*(work(w) for w in range(self.writers)))


def _call(system: str, op: str, w: int, i: int, ids: list[str]) -> tuple[str, tuple[Any, ...]]:
    """The memory-API method and arguments of operation ``i`` of writer ``w`` (the same
    names in both systems; MemState's ``rollback`` takes the session first)."""
    session = f"s{w}"
    if op == "insert":
        return "commit", (_fact(system, f"writer {w} remembers thing {i}"), session)
    if op == "update":
        return "update", (ids[i], {"payload": {"content": f"writer {w} revised thing {i}"}})
    if op == "rollback":
        return "rollback", (session, 1) if system == "memstate" else (1, session)
    return "delete", (session, ids[i])


def _one(system: str, mem: Any, op: str, w: int, i: int, ids: list[str]) -> None:
    method, args = _call(system, op, w, i, ids)
    result = getattr(mem, method)(*args)
    if op == "insert":
        ids.append(result)


def _fact(system: str, text: str) -> Any:
    if system == "memstate":
        from memstate import Fact as MemStateFact

        return MemStateFact(type="note", payload={"content": text})
    from coordinator import Fact

    return Fact(type="note", payload={"content": text})


def main() -> int:
    from participants.chroma import SYNC_THRESHOLD  # here: MemState's child never imports it

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ops", type=int, default=200, help="operations of each kind per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--slice",
        type=positive,
        default=25,
        help="operations each writer runs in a system's turn before the next system's",
    )
    parser.add_argument("--combos", default=",".join(COMBOS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--memstate-synchronous",
        choices=["normal", "full"],
        default="normal",
        help="MemState's SQLite synchronous setting (its own: normal; full: as durable as "
        "Lockstep's, to compare like with like)",
    )
    parser.add_argument(
        "--memstate-chroma-sync",
        type=positive,
        default=None,
        metavar="N",
        help="make MemState's Chroma collection with this HNSW sync_threshold (its own: "
        f"Chroma's default, 1,000; Lockstep creates its collections with {SYNC_THRESHOLD}), "
        "to compare like with like",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        serve_commands(Writers, args.child)
    combos = pick(parser, "--combos", args.combos, COMBOS)
    modes = pick(parser, "--modes", args.modes, MODES)
    memstate = str(ensure_memstate_env())
    pythons = {
        "memstate": memstate,
        "lockstep": sys.executable,
        "lockstep-deferred": sys.executable,
    }
    merged: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    failures: dict[tuple[str, str, str], str] = {}
    with tempfile.TemporaryDirectory(prefix="lockstep-commit-cost-") as tmp:
        servers = Servers(Path(tmp))
        try:
            for round_ in range(args.rounds):
                for combo in combos:
                    for mode in modes:
                        specs = {
                            system: {
                                **servers.spec_for(combo),
                                "combo": combo,
                                "mode": mode,
                                "system": system,
                                "memstate_synchronous": args.memstate_synchronous,
                                "memstate_chroma_sync": args.memstate_chroma_sync,
                            }
                            for system in SYSTEMS
                        }
                        _measure(specs, pythons, Path(tmp), args, round_, merged, failures)
                        print(f"  round {round_ + 1}: {combo}, {mode}", file=sys.stderr, flush=True)
        finally:
            servers.stop()
    rows = _rows(merged, combos, modes)
    _print(rows, args, failures)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "ops": args.ops,
                    "rounds": args.rounds,
                    "slice": args.slice,
                    "memstate_synchronous": args.memstate_synchronous,
                    "memstate_chroma_sync": args.memstate_chroma_sync,
                    "results": rows,
                    "not_measured": [
                        {"combo": c, "mode": m, "system": s, "why": why}
                        for (c, m, s), why in failures.items()
                    ],
                },
                indent=2,
            )
        )
    return 0


def _measure(
    specs: dict[str, dict[str, Any]],
    pythons: dict[str, str],
    tmp: Path,
    args: argparse.Namespace,
    round_: int,
    merged: dict[tuple[str, str, str, str], dict[str, Any]],
    failures: dict[tuple[str, str, str], str],
) -> None:
    """One round of one combination and mode: each system's child opens its store, then
    the systems take turns until every writer has run its share of each kind."""
    combo, mode = specs[SYSTEMS[0]]["combo"], specs[SYSTEMS[0]]["mode"]
    share = max(1, args.ops // MODES[mode][0])
    with children(MODULE, specs, tmp, pythons) as running:
        for system, op, answer in take_turns(running, OPS, share, args.slice, round_):
            if isinstance(answer, str):
                failures[(combo, mode, system)] = answer
            else:
                accumulate(merged, (combo, mode, op, system), answer)


def _rows(
    merged: dict[tuple[str, str, str, str], dict[str, Any]], combos: list[str], modes: list[str]
) -> list[dict[str, Any]]:
    rows = []
    for combo in combos:
        for mode in modes:
            for op in OPS:
                row: dict[str, Any] = {"combo": combo, "mode": mode, "op": op}
                for system in SYSTEMS:
                    r = merged.get((combo, mode, op, system))
                    if r is None or not r["latencies"]:
                        continue
                    row[f"{system}_p50_ms"] = round(percentile_ms(r["latencies"], 0.5), 2)
                    row[f"{system}_p99_ms"] = round(percentile_ms(r["latencies"], 0.99), 2)
                    row[f"{system}_ops_per_s"] = round(len(r["latencies"]) / r["seconds"], 1)
                    row[f"{system}_cpu_ms"] = round(
                        r["cpu_seconds"] / len(r["latencies"]) * 1000, 2
                    )
                for system in SYSTEMS[1:]:
                    if "memstate_p50_ms" in row and f"{system}_p50_ms" in row:
                        row[f"{system}_p50_ratio"] = round(
                            row[f"{system}_p50_ms"] / row["memstate_p50_ms"], 2
                        )
                        row[f"{system}_throughput_ratio"] = round(
                            row[f"{system}_ops_per_s"] / row["memstate_ops_per_s"], 2
                        )
                        row[f"{system}_cpu_ratio"] = round(
                            row[f"{system}_cpu_ms"] / max(row["memstate_cpu_ms"], 0.01), 2
                        )
                rows.append(row)
    return rows


def _print(
    rows: list[dict[str, Any]],
    args: argparse.Namespace,
    failures: dict[tuple[str, str, str], str],
) -> None:
    print(f"## Commit cost: Lockstep vs MemState 0.5.1\n\nMachine: {machine()}\n")
    if args.memstate_synchronous != "normal":
        print(
            f"MemState's SQLite set to synchronous={args.memstate_synchronous.upper()} here "
            "(its own setting is NORMAL), as durable as Lockstep's.\n"
        )
    if args.memstate_chroma_sync:
        from participants.chroma import SYNC_THRESHOLD

        print(
            f"MemState's Chroma collection made with sync_threshold={args.memstate_chroma_sync} "
            f"here (its own is Chroma's default, 1,000; Lockstep's {SYNC_THRESHOLD}).\n"
        )
    print(
        f"{args.ops} operations of each kind per round and system, {args.rounds} rounds, the "
        f"systems taking turns of {args.slice} operations a writer. Latency: p50 / p99 ms; "
        "throughput: operations/s; Lockstep's ratios are to MemState's.\n"
    )
    head = ["stores", "writers", "op"]
    head += [f"{LABELS[s]} p50 / p99" for s in SYSTEMS]
    head += [f"{LABELS[s]} ops/s" for s in SYSTEMS]
    print("| " + " | ".join(head) + " |")
    print("|---|---|---|" + "---:|" * (2 * len(SYSTEMS)))
    dash = "—"
    for r in rows:
        latency, throughput = [], []
        for system in SYSTEMS:
            if f"{system}_p50_ms" not in r:
                latency.append(dash)
                throughput.append(dash)
                continue
            ratio = r.get(f"{system}_p50_ratio")
            tratio = r.get(f"{system}_throughput_ratio")
            latency.append(
                f"{r[f'{system}_p50_ms']} / {r[f'{system}_p99_ms']}"
                + (f" ({ratio}x)" if ratio is not None else "")
            )
            throughput.append(
                str(r[f"{system}_ops_per_s"]) + (f" ({tratio}x)" if tratio is not None else "")
            )
        print("| " + " | ".join([r["combo"], r["mode"], r["op"], *latency, *throughput]) + " |")
    _print_cpu(rows)
    for (combo, mode, system), why in failures.items():
        print(f"\nnot measured: {LABELS[system]} on {combo}, {mode}: {why}")


def _print_cpu(rows: list[dict[str, Any]]) -> None:
    """CPU time per operation: where a run is CPU-bound (in-process stores, two cores),
    throughput follows it, whatever the concurrency."""
    print(
        "\nCPU time per operation (ms: the writer process's user + system time over the "
        "run, deferred batches included; the servers' own time is not counted):\n"
    )
    print("| stores | writers | op | " + " | ".join(LABELS[s] for s in SYSTEMS) + " |")
    print("|---|---|---|" + "---:|" * len(SYSTEMS))
    for r in rows:
        cells = []
        for system in SYSTEMS:
            ratio = r.get(f"{system}_cpu_ratio")
            cpu = r.get(f"{system}_cpu_ms")
            cells.append("—" if cpu is None else f"{cpu}" + (f" ({ratio}x)" if ratio else ""))
        print("| " + " | ".join([r["combo"], r["mode"], r["op"], *cells]) + " |")


if __name__ == "__main__":
    sys.exit(main())
