"""What a Chroma write costs as records wait to be persisted, by HNSW ``sync_threshold``.

A Chroma 1.x collection persists its HNSW index every ``sync_threshold`` records (1,000
by default); until then each write call costs more than the last. Lockstep creates its
collections with 200 (``participants.chroma.SYNC_THRESHOLD``). This program writes one
point per call (a new id each, as a commit's staged point) to collections that differ only
in that setting, embedded and on a private ``chroma run`` server, the settings taking turns
round by round, and prints the cost of a write over the run and by blocks of writes, and of
a search afterwards.

    python -m benchmarks.chroma_sync [--writes 1000] [--held 0] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import chromadb

from benchmarks._common import machine, percentile_ms, pick, positive
from participants.chroma import SYNC_THRESHOLD

PLACES = ["embedded", "server"]
DIM = 384
BLOCK = 200  # writes a block of the by-block columns holds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--writes", type=positive, default=1000, help="one-point writes a run")
    parser.add_argument("--held", type=int, default=0, help="points written before, in batches")
    parser.add_argument("--rounds", type=positive, default=2)
    parser.add_argument("--thresholds", default=f"1000,{SYNC_THRESHOLD}")
    parser.add_argument("--places", default=",".join(PLACES))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    places = pick(parser, "--places", args.places, PLACES)
    try:
        thresholds = [int(t) for t in args.thresholds.split(",")]
    except ValueError:
        parser.error(
            f"--thresholds: expected comma-separated whole numbers, got {args.thresholds!r}"
        )
    if any(t < 2 for t in thresholds):
        parser.error("--thresholds: each must be at least 2")
    results: dict[tuple[str, int], dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="lockstep-chroma-sync-") as tmp:
        servers = None
        clients: dict[str, Any] = {}
        try:
            if "embedded" in places:
                clients["embedded"] = chromadb.PersistentClient(path=str(Path(tmp) / "embedded"))
            if "server" in places:
                from chaos.campaign import Servers

                servers = Servers(Path(tmp) / "servers")
                port = servers.ch().port
                clients["server"] = chromadb.HttpClient(host="127.0.0.1", port=port)
            for round_ in range(args.rounds):
                order = thresholds if round_ % 2 == 0 else thresholds[::-1]
                for place in places:
                    for threshold in order:
                        run = _run(clients[place], threshold, args.writes, args.held, round_)
                        into = results.setdefault(
                            (place, threshold), {"writes": [], "searches": []}
                        )
                        into["writes"] += run["writes"]
                        into["searches"] += run["searches"]
                        print(f"  round {round_ + 1}: {place}, {threshold}", file=sys.stderr)
        finally:
            if servers is not None:
                servers.stop()
    rows = [
        _row(place, t, results[(place, t)], args.writes) for place in places for t in thresholds
    ]
    _print(rows, args)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "args": vars(args) | {"json": str(args.json)},
                    "results": rows,
                },
                indent=2,
            )
        )
    return 0


def _run(
    client: Any, threshold: int, writes: int, held: int, round_: int
) -> dict[str, list[float]]:
    """One fresh collection: ``held`` points in batches, then ``writes`` one-point upserts
    (their times, in order), then fifty searches."""
    rnd = random.Random(round_)
    name = f"sync-{threshold}-{round_}-{rnd.randrange(10**9)}"
    collection = client.create_collection(
        name,
        embedding_function=None,
        configuration={"hnsw": {"space": "cosine", "sync_threshold": threshold}},
    )

    def vectors(n: int) -> list[list[float]]:
        return [[rnd.random() for _ in range(DIM)] for _ in range(n)]

    for start in range(0, held, 2000):
        size = min(2000, held - start)
        collection.upsert(
            ids=[f"held{start + i}" for i in range(size)],
            embeddings=vectors(size),
            metadatas=[{"n": start + i} for i in range(size)],
        )
    times = []
    for i in range(writes):
        vector = vectors(1)
        started = time.perf_counter()
        collection.upsert(ids=[f"w{i}"], embeddings=vector, metadatas=[{"n": i}])
        times.append(time.perf_counter() - started)
    searches = []
    for _ in range(50):
        query = vectors(1)
        started = time.perf_counter()
        collection.query(query_embeddings=query, n_results=5)
        searches.append(time.perf_counter() - started)
    client.delete_collection(name)
    return {"writes": times, "searches": searches}


def _row(place: str, threshold: int, run: dict[str, list[float]], writes: int) -> dict[str, Any]:
    times = run["writes"]
    # Runs are concatenated: write i of every run falls in block i // BLOCK.
    blocks: list[list[float]] = [[] for _ in range((writes + BLOCK - 1) // BLOCK)]
    for i, t in enumerate(times):
        blocks[(i % writes) // BLOCK].append(t)
    return {
        "place": place,
        "sync_threshold": threshold,
        "write_p50_ms": round(percentile_ms(times, 0.5), 2),
        "write_p99_ms": round(percentile_ms(times, 0.99), 2),
        "write_mean_ms": round(statistics.mean(times) * 1000, 2),
        "block_mean_ms": [round(statistics.mean(b) * 1000, 2) for b in blocks],
        "search_p50_ms": round(percentile_ms(run["searches"], 0.5), 2),
    }


def _print(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"## Chroma writes by HNSW sync_threshold\n\nMachine: {machine()}\n")
    print(
        f"chromadb {chromadb.__version__}; {args.writes} one-point upserts a run on a fresh "
        f"collection holding {args.held} points first, {DIM} dimensions, cosine, "
        f"{args.rounds} rounds, the settings taking turns. Milliseconds.\n"
    )
    blocks = len(rows[0]["block_mean_ms"]) if rows else 0
    head = ["where", "sync_threshold", "write p50 / p99", "write mean"]
    head += [
        f"writes {b * BLOCK + 1}-{min((b + 1) * BLOCK, args.writes)}, mean" for b in range(blocks)
    ]
    head += ["search p50"]
    print("| " + " | ".join(head) + " |")
    print("|---|---:|" + "---:|" * (len(head) - 2))
    for r in rows:
        cells = [r["place"], str(r["sync_threshold"]), f"{r['write_p50_ms']} / {r['write_p99_ms']}"]
        cells += [
            str(r["write_mean_ms"]),
            *(str(m) for m in r["block_mean_ms"]),
            str(r["search_p50_ms"]),
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
