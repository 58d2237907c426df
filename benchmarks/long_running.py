"""A long-running agent on the embedded default: memories updated many times over.

Qdrant's local mode only marks a deleted point in memory, where its vector and payload
stay and every search goes over them again; each update of a memory writes a new point
and deletes the old one. The index drops the deleted points once they are most of what a
collection holds in memory (``participants.qdrant._catalog.compact``). Each run is
its own process (its memory measured alone), with compaction on and, for comparison,
off, and on Qdrant Edge (``qdrant edge``: Qdrant's engine in the process, which keeps the
points on disk); they alternate round by round. Vectors have 384 dimensions, as the default e5
model's (a deterministic hashing embedder makes them: no model is measured). At each
checkpoint: plain search p50 through the memory API, and the process's resident memory;
over the updates, their latency.

    python -m benchmarks.long_running [--memories 1000] [--updates 9000] [--rounds 1]
        [--checkpoints 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import (
    machine,
    percentile_ms,
    positive,
    run_child,
    serve_child,
)

MODES = ("compaction", "no compaction", "qdrant edge")


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One process: ``spec["memories"]`` memories, updated ``spec["updates"]`` times."""
    if spec["mode"] == "no compaction":
        from participants.qdrant import _catalog

        _catalog.COMPACT_AFTER = 2**62
    from coordinator import Fact, MemoryStore
    from coordinator.embeddings import HashingEmbedder

    memories, updates = spec["memories"], spec["updates"]
    # 384 dimensions, as the default e5 model's: a row's cost in a search is its vector's.
    embedder = HashingEmbedder(384)
    engine = "qdrant+edge" if spec["mode"] == "qdrant edge" else "qdrant+local"
    mem = MemoryStore.open(Path(spec["dir"]) / "memory", embedder=embedder, index=engine)
    try:
        ids = []
        for start in range(0, memories, 1000):
            with mem.transaction() as tx:
                ids += [
                    tx.commit(Fact(type="note", payload={"content": f"memory {i} of many"}))
                    for i in range(start, min(memories, start + 1000))
                ]
        points: list[dict[str, float]] = []
        latencies: list[float] = []
        done = 0
        checkpoints = spec["checkpoints"]
        for checkpoint in range(checkpoints):
            target = updates * checkpoint // (checkpoints - 1)
            while done < target:
                started = time.perf_counter()
                patch = {"payload": {"content": f"memory {done} updated, round {done}"}}
                mem.update(ids[done % memories], patch)
                latencies.append(time.perf_counter() - started)
                done += 1
            searches = []
            for q in range(30):
                started = time.perf_counter()
                mem.search(f"memory {q * 37 % memories}", k=5)
                searches.append(time.perf_counter() - started)
            points.append(
                {
                    "updates": done,
                    "search_ms": statistics.median(searches) * 1000,
                    "rss_mb": _status_mb("VmRSS"),
                    "anon_mb": _status_mb("RssAnon"),
                }
            )
        assert mem.verify().clean
    finally:
        mem.close()
    return {
        "points": points,
        "update_p50_ms": percentile_ms(latencies, 0.5),
        "update_p99_ms": percentile_ms(latencies, 0.99),
        "update_max_ms": max(latencies) * 1000,
    }


def _status_mb(field: str) -> float:
    """A memory figure of this process from ``/proc/self/status``: ``VmRSS`` (resident,
    with the pages of files it maps, such as an Edge shard's) or ``RssAnon`` (its own)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memories", default="1000")
    parser.add_argument("--updates", type=positive, default=9000)
    parser.add_argument("--rounds", type=positive, default=1)
    parser.add_argument("--checkpoints", type=positive, default=3, help="at least 2")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        serve_child(measure, args.child)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for memories in (positive(m) for m in args.memories.split(",")):
            for round_ in range(args.rounds):
                modes = MODES if round_ % 2 == 0 else MODES[::-1]
                for mode in modes:
                    spec = {
                        "memories": memories,
                        "updates": args.updates,
                        "mode": mode,
                        "checkpoints": max(2, args.checkpoints),
                    }
                    print(f"  {memories} memories, round {round_ + 1}: {mode}", file=sys.stderr)
                    answer = run_child("benchmarks.long_running", spec, Path(tmp))
                    if isinstance(answer, str):
                        raise SystemExit(f"{mode}: {answer}")
                    results.append({**spec, "round": round_ + 1, **answer})
    print("## A long-running agent: memories updated many times (SQLite + Qdrant local or Edge)\n")
    print(f"Machine: {machine()}\n")
    print(
        "Plain search p50 and resident memory (in brackets: the part not mapped from "
        "files) at each checkpoint; update latency over all.\n"
    )
    header = " | ".join(f"after {p['updates']:,} updates" for p in results[0]["points"])
    print(f"| memories | round | mode | {header} | update p50 / p99 / max ms |")
    print("|---:|---:|---|" + "---:|" * (len(results[0]["points"]) + 1))
    for r in results:
        cells = " | ".join(
            f"{p['search_ms']:.2f} ms, {p['rss_mb']:.0f} MB ({p['anon_mb']:.0f})"
            for p in r["points"]
        )
        latency = f"{r['update_p50_ms']:.2f} / {r['update_p99_ms']:.2f} / {r['update_max_ms']:.0f}"
        print(f"| {r['memories']:,} | {r['round']} | {r['mode']} | {cells} | {latency} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
