"""Search on the embedded default as the memories grow: plain, and filtered.

The embedded default keeps vectors in Qdrant's local mode, which tests a filter's condition
on every point in Python. Its index keeps a catalog of its points, so a search sends local
mode no filter when at least one point in 16 meets its conditions (it asks for enough of
the nearest points instead), and reads the points that meet rarer ones by id and ranks
them itself. Four kinds of search,
through the memory API as an agent calls them, alternating query by query: plain; by the
type 99% of the memories have; by a session holding 10% of them; by a type 1% have.
``--index "chroma embedded"`` measures SQLite + a Chroma ``PersistentClient`` instead,
whose plain searches leave the filter out unless a delete marker comes back;
``--index "qdrant edge"`` SQLite + Qdrant Edge (Qdrant's engine in the process), which
evaluates every filter itself, with its payload indexes.

    python -m benchmarks.search_scale [--sizes 1000,10000] [--queries 50] [--index NAME]
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

KINDS = [
    ("plain", None, None),
    ("type, 99%", "note", None),
    ("session, 10%", None, "s3"),
    ("type, 1%", "rare", None),
]


def open_store(index: str, directory: Path) -> MemoryStore:
    if index in ("qdrant local", "qdrant edge"):
        engine = index.replace(" ", "+")
        return MemoryStore.open(directory, embedder=SameEmbedder(), index=engine)
    import chromadb

    from participants.chroma import ChromaIndex
    from participants.sqlite import SQLiteStorage

    directory.mkdir()
    client = chromadb.PersistentClient(str(directory / "vectors"))
    chroma = ChromaIndex(client, "memories", "content", embedder=SameEmbedder())
    return MemoryStore(SQLiteStorage(directory / "facts.db"), [chroma])


def measure(index: str, size: int, queries: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        mem = open_store(index, Path(tmp) / "memory")
        try:
            for start in range(0, size, 1000):
                with mem.transaction() as tx:
                    for i in range(start, min(size, start + 1000)):
                        kind = "rare" if i % 100 == 0 else "note"
                        text = f"memory {i} of {size}"
                        tx.commit(Fact(type=kind, payload={"content": text}), f"s{i % 10}")
            timings: dict[str, list[float]] = {kind: [] for kind, _, _ in KINDS}
            held = {kind: len(mem.query(t, session_id=s)) for kind, t, s in KINDS}
            for q in range(queries):
                text = f"memory {q * 37 % size} of {size}"
                for kind, typename, session in KINDS:
                    started = time.perf_counter()
                    found = mem.search(text, k=5, typename=typename, session_id=session)
                    timings[kind].append(time.perf_counter() - started)
                    assert len(found) == min(5, held[kind]), (kind, len(found))
        finally:
            mem.close()
    return {kind: statistics.median(values) * 1000 for kind, values in timings.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--queries", type=positive, default=50)
    parser.add_argument(
        "--index",
        choices=["qdrant local", "qdrant edge", "chroma embedded"],
        default="qdrant local",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sizes = [positive(size) for size in args.sizes.split(",")]
    rows = [{"facts": size, **measure(args.index, size, args.queries)} for size in sizes]
    print(f"## Search as the memories grow (SQLite + {args.index})\n\nMachine: {machine()}\n")
    print(f"{args.queries} queries a size, k=5, p50 through the memory API.\n")
    print("| facts | " + " | ".join(f"{kind} ms" for kind, _, _ in KINDS) + " |")
    print("|---:|" + "---:|" * len(KINDS))
    for row in rows:
        cells = " | ".join(f"{row[kind]:.2f}" for kind, _, _ in KINDS)
        print(f"| {row['facts']:,} | {cells} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
