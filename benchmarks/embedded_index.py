"""Which embedded vector index should the embedded default use? All three, in one run.

Through Lockstep's own index participants (so staging, commit and search are what a real
commit pays): Qdrant local mode (``QdrantClient(path=...)``), Qdrant Edge (Qdrant's engine
in the process, ``qdrant+edge://``) and Chroma ``PersistentClient``, same deterministic
embedder, rounds alternating between them.

    python -m benchmarks.embedded_index [--quick]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import chromadb
from qdrant_client import QdrantClient

from benchmarks._common import machine
from coordinator import FactRecord, UpsertFact, new_txid
from coordinator.abc import Index
from coordinator.embeddings import HashingEmbedder
from participants.chroma import ChromaIndex
from participants.qdrant import QdrantIndex
from participants.qdrant._edge import EdgeClient

EMBEDDER = HashingEmbedder(384)
KINDS = ("qdrant local", "qdrant edge", "chroma embedded")


def make(kind: str, directory: Path) -> Index:
    if kind == "qdrant local":
        client = QdrantClient(path=str(directory / "q"))
        return QdrantIndex(client, "bench", "content", embedder=EMBEDDER, owns_client=True)
    if kind == "qdrant edge":
        edge = EdgeClient(directory / "e")
        return QdrantIndex(edge, "bench", "content", embedder=EMBEDDER, owns_client=True)
    client_c = chromadb.PersistentClient(path=str(directory / "c"))
    return ChromaIndex(client_c, "bench", "content", embedder=EMBEDDER)


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run(kind: str, n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"prepare": [], "commit": [], "search": [], "open": []}
    with tempfile.TemporaryDirectory() as tmp:
        index = make(kind, Path(tmp))
        index.recover()
        for i in range(n):
            record = FactRecord(f"f{i}", "note", {"content": f"note number {i}"}, 1)
            vector = tuple(EMBEDDER.embed([record.payload["content"]])[0])
            txid = new_txid()
            writes = [UpsertFact(record, 0, embedding=vector)]
            out["prepare"].append(timed(functools.partial(index.prepare, txid, writes)))
            out["commit"].append(timed(functools.partial(index.commit, txid)))
        query = EMBEDDER.embed_query("note number 7")
        for _ in range(50):
            out["search"].append(timed(functools.partial(index.search, query, 5, {})))
        index.close()
        out["open"].append(timed(lambda: make(kind, Path(tmp)).recover()))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n, rounds = (100, 1) if args.quick else (300, 3)
    merged: dict[str, dict[str, list[float]]] = {}
    for _ in range(rounds):
        for kind in KINDS:
            result = run(kind, n)
            for key, values in result.items():
                merged.setdefault(kind, {}).setdefault(key, []).extend(values)
    print(f"## Embedded vector index\n\nMachine: {machine()}\n")
    print(f"{n} facts per run, {rounds} rounds alternating, 384-dim vectors.\n")
    print("| index | prepare p50 ms | commit p50 ms | search p50 ms | reopen ms |")
    print("|---|---:|---:|---:|---:|")
    for kind, timings in merged.items():
        cells = [
            statistics.median(timings[k]) * 1000 for k in ("prepare", "commit", "search", "open")
        ]
        print(f"| {kind} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    q, c = merged["qdrant local"], merged["chroma embedded"]
    write_q = statistics.median(q["prepare"]) + statistics.median(q["commit"])
    write_c = statistics.median(c["prepare"]) + statistics.median(c["commit"])
    print(
        f"\nChroma embedded / Qdrant local, one index write (prepare + commit): {write_c / write_q:.1f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
