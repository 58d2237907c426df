"""Search on the embedded default as the memories grow: a plain search, and one filtered.

The embedded default keeps vectors in Qdrant's local mode, which tests a filter's condition
on every point in Python. A plain ``search(query)`` sends the index no filter (it asks for
as many more points as there are delete markers, and drops them); a search by type sends
one (``type`` is pushed down to the index). Both through the memory API, as an agent calls
them, with the same deterministic embedder; the two kinds alternate query by query.

    python -m benchmarks.search_scale [--sizes 1000,10000] [--queries 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import SameEmbedder, machine, positive
from coordinator import Fact, MemoryStore


def measure(size: int, queries: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        mem = MemoryStore.open(Path(tmp) / "memory", embedder=SameEmbedder())
        try:
            for start in range(0, size, 1000):
                with mem.transaction() as tx:
                    for i in range(start, min(size, start + 1000)):
                        tx.commit(Fact(type="note", payload={"content": f"memory {i} of {size}"}))
            timings: dict[str, list[float]] = {"plain": [], "by type": []}
            for q in range(queries):
                text = f"memory {q * 37 % size} of {size}"
                for kind, typename in (("plain", None), ("by type", "note")):
                    started = time.perf_counter()
                    found = mem.search(text, k=5, typename=typename)
                    timings[kind].append(time.perf_counter() - started)
                    assert len(found) == 5, (kind, len(found))
        finally:
            mem.close()
    return {kind: statistics.median(values) * 1000 for kind, values in timings.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--queries", type=positive, default=50)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sizes = [positive(size) for size in args.sizes.split(",")]
    rows = [{"facts": size, **measure(size, args.queries)} for size in sizes]
    print(f"## Search as the memories grow (embedded default)\n\nMachine: {machine()}\n")
    print(f"{args.queries} queries a size, k=5, p50 through the memory API.\n")
    print("| facts | plain search ms | search by type ms | by type / plain |")
    print("|---:|---:|---:|---:|")
    for row in rows:
        ratio = row["by type"] / row["plain"]
        print(f"| {row['facts']:,} | {row['plain']:.2f} | {row['by type']:.2f} | {ratio:.1f}x |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
