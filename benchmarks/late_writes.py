"""Late writes: a client SIGKILLed while its upsert is in flight to a Chroma server.

The server carries out a request it has received although the client that sent it is
dead, so the client's points can appear after the kill — after a recovery pass started
at once may already have listed what is staged. For each run a child process upserts
eight points marked ``state=pending`` and is killed a random 0 to 30 ms into the call;
the parent then reads the collection (``where state=pending``, as recovery lists staged
branches) every 5 ms for two seconds and notes when the points appeared. ``--load``
keeps a second client writing to another collection meanwhile (a busy server).

    python -m benchmarks.late_writes [--runs 100] [--load]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._common import ROOT, machine
from chaos.servers import ChromaServer

POINTS = 8
WATCH = 2.0  # seconds a run watches for its points after the kill


def child(port: int, tag: str) -> None:
    import chromadb

    collection: Any = chromadb.HttpClient(host="127.0.0.1", port=port).get_collection("late")
    print("ready", flush=True)
    sys.stdin.readline()
    rng = random.Random(tag)
    collection.upsert(
        ids=[f"{tag}-{i}" for i in range(POINTS)],
        embeddings=[[rng.random() for _ in range(16)] for _ in range(POINTS)],
        metadatas=[{"state": "pending", "txid": tag} for _ in range(POINTS)],
    )
    print("done", flush=True)


def one_run(port: int, collection: Any, tag: str, rng: random.Random) -> str | float:
    """What a run saw: ``"returned"`` (the upsert returned before the kill), ``"first"``
    (the points were there at the first read after it), ``"never"``, or the seconds
    after the kill at which a later read first found them (the first read had not)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ANONYMIZED_TELEMETRY": "False"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.late_writes", "--child", str(port), tag],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("the writer did not start")
    proc.stdin.write("go\n")
    proc.stdin.flush()
    time.sleep(rng.uniform(0, 0.03))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed = time.monotonic()
    returned = "done" in proc.stdout.read()
    seen: str | float = "never"
    reads = 0
    while time.monotonic() - killed < WATCH:
        found = collection.get(where={"$and": [{"state": "pending"}, {"txid": tag}]}, include=[])
        reads += 1
        if found["ids"]:
            seen = "first" if reads == 1 else time.monotonic() - killed
            break
        time.sleep(0.005)
    collection.delete(where={"txid": tag})
    return "returned" if returned else seen


def _load(port: int, stop: threading.Event) -> None:
    import chromadb

    client = chromadb.HttpClient(host="127.0.0.1", port=port)
    other: Any = client.get_or_create_collection("load")
    rng = random.Random(7)
    n = 0
    while not stop.is_set():
        ids = [f"l{n}-{i}" for i in range(32)]
        other.upsert(ids=ids, embeddings=[[rng.random() for _ in range(16)] for _ in ids])
        other.delete(ids=ids[:16])
        n += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--load", action="store_true", help="a second client writes meanwhile")
    parser.add_argument("--child", nargs=2, metavar=("PORT", "TAG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(int(args.child[0]), args.child[1])
        return 0
    import chromadb

    rng = random.Random(5)
    with tempfile.TemporaryDirectory(prefix="lockstep-late-") as tmp:
        server = ChromaServer(Path(tmp) / "chroma")
        server.start()
        stop = threading.Event()
        loader = threading.Thread(target=_load, args=(server.port, stop), daemon=True)
        try:
            client = chromadb.HttpClient(host="127.0.0.1", port=server.port)
            collection = client.get_or_create_collection("late")
            if args.load:
                loader.start()
            results = [one_run(server.port, collection, f"t{n}", rng) for n in range(args.runs)]
        finally:
            stop.set()
            if loader.is_alive():
                loader.join(timeout=30)
            server.kill()
    late = sorted(r * 1000 for r in results if isinstance(r, float))
    print(f"## Late writes to a Chroma server\n\nMachine: {machine()}\n")
    print(
        f"{args.runs} writers killed 0 to 30 ms into an upsert of {POINTS} points"
        f"{', with a second client writing meanwhile' if args.load else ''}.\n"
    )
    print(
        "| upsert returned before the kill | points there at the first read after it "
        "| first read missed them, a later one found them | never appeared |"
    )
    print("|---:|---:|---:|---:|")
    print(
        f"| {results.count('returned')} | {results.count('first')} | {len(late)} "
        f"| {results.count('never')} |\n"
    )
    if late:
        print(
            f"Where a later read found them: median {statistics.median(late):.0f} ms after "
            f"the kill, max {late[-1]:.0f} ms (read every 5 ms)."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
