"""Recovery: time to resolve 10,000 in-doubt transactions, and the start-up cost of
``MemoryStore.open`` (the embedded default: SQLite facts and log, and its vectors in
Qdrant's local mode or, with ``index="qdrant+edge"``, in Qdrant Edge).

The in-doubt state is what a crash leaves, for half of the transactions after the commit
decision and for half before it, in two layouts:

* **last resource** (the default): the decision log lives in the facts file, so a
  transaction's facts and its COMMIT record land in one local transaction; only the vector
  index holds prepared branches (all of them), and recovery commits the decided half and
  aborts the rest.
* **separate log** (a ``decisions.db`` beside the stores, as earlier versions kept it):
  every transaction is prepared in both stores.

``MemoryStore.open`` recovers them all; the stores are checked afterwards.

    python -m benchmarks.recovery [--transactions 10000] [--engines qdrant+local,qdrant+edge]
                                  [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import SameEmbedder, machine, pick
from coordinator import FactRecord, MemoryStore, UpsertFact, new_txid
from coordinator.abc import Decision
from coordinator.log import SQLiteDecisionLog
from coordinator.plugins import open_participant
from coordinator.settings import ENGINES

LAYOUTS = ("last resource", "separate log")


def leave_in_doubt(directory: Path, transactions: int, layout: str, engine: str) -> None:
    """Stage ``transactions`` single-fact inserts as a crash would leave them in
    ``layout``, the vectors in ``engine`` (as the embedded default keeps them); half of
    them are decided (COMMIT), half are not."""
    directory.mkdir(parents=True, exist_ok=True)
    storage: Any = open_participant(f"sqlite:///{directory / 'facts.db'}", name="facts")
    index: Any = open_participant(
        f"{engine}:///{directory / ENGINES[engine]}?collection=memories",
        name="vectors",
        embedder=SameEmbedder(),
    )
    log = (
        storage.default_decision_log()  # creates the log's table in facts.db
        if layout == "last resource"
        else SQLiteDecisionLog(directory / "decisions.db")
    )
    decided = []
    for n in range(transactions):
        txid = new_txid()
        fact = FactRecord(f"f{n}", "note", {"content": f"memory {n}"}, 1, txid=txid)
        vector = tuple(SameEmbedder().embed([f"memory {n}"])[0])
        index.prepare(txid, [UpsertFact(fact, 0, embedding=vector)])
        if layout == "last resource":
            if n % 2 == 0:  # the crash came after the facts and the decision committed
                storage.commit_with_decision(txid, [UpsertFact(fact, 0)], ("facts", "vectors"))
            continue
        storage.prepare(txid, [UpsertFact(fact, 0)])
        if n % 2 == 0:
            decided.append((txid, Decision.COMMIT, ("facts", "vectors")))
    for start in range(0, len(decided), 500):
        log.decide_many(decided[start : start + 500])
    log.close()
    storage.close()
    index.close()


def timed_open(directory: Path, **options: Any) -> tuple[float, MemoryStore]:
    started = time.perf_counter()
    mem = MemoryStore.open(directory, **options)
    return time.perf_counter() - started, mem


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transactions", type=int, default=10_000)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    engines = pick(parser, "--engines", args.engines, list(ENGINES))
    n = args.transactions
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lockstep-recovery-") as tmp:
        for engine in engines:
            rows += _open_and_recover(Path(tmp) / engine.replace("+", "-"), n, engine)

    print(f"## Recovery and start-up\n\nMachine: {machine()}\n")
    print("SQLite facts + SQLite decision log + the vectors in the index (`MemoryStore.open`).\n")
    print("| index | case | seconds | transactions/s |")
    print("|---|---|---:|---:|")
    for row in rows:
        rate = row.get("transactions_per_s")
        print(
            f"| {row['index']} | {row['case']} | {row['seconds']:.2f} "
            f"| {'' if rate is None else f'{rate:,.0f}'} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "results": rows}, indent=2))
    return 0


def _open_and_recover(base: Path, n: int, engine: str) -> list[dict[str, Any]]:
    """The rows of one engine: opening an empty directory (first in the process, so with
    the imports an engine's first use costs, then again), recovering ``n`` in-doubt
    transactions in each layout, opening again, opening with the default embedder."""
    rows: list[dict[str, Any]] = []
    seconds, mem = timed_open(base / "first", embedder=SameEmbedder(), index=engine)
    mem.close()
    first = "open, empty directory, the engine's first in the process (imports included)"
    rows.append({"index": engine, "case": first, "seconds": seconds})
    seconds, mem = timed_open(base / "empty", embedder=SameEmbedder(), index=engine)
    mem.close()
    rows.append({"index": engine, "case": "open, empty directory", "seconds": seconds})

    for layout in LAYOUTS:
        print(f"  {engine}: staging {n} in-doubt transactions ({layout})", file=sys.stderr)
        crashed = base / layout.replace(" ", "-")
        leave_in_doubt(crashed, n, layout, engine)
        seconds, mem = timed_open(crashed, embedder=SameEmbedder())  # the engine it holds
        facts = {f.id for f in mem.storage.all_facts()}
        contents = mem.indexes[0].contents()
        report = mem.verify()
        assert len(facts) == (n + 1) // 2, f"recovery ({layout}): {len(facts)} facts"
        assert len(contents.committed) == len(facts), f"recovery ({layout}): vectors"
        assert report.clean, f"recovery ({layout}) left drift or staged branches"
        mem.close()
        rows.append(
            {
                "index": engine,
                "case": f"open + recover {n} in-doubt transactions ({layout})",
                "seconds": seconds,
                "transactions_per_s": n / seconds,
            }
        )

    seconds, mem = timed_open(crashed, embedder=SameEmbedder())
    mem.close()
    rows.append(
        {"index": engine, "case": f"open, {len(facts)} facts, nothing in doubt", "seconds": seconds}
    )

    seconds, mem = timed_open(base / "model", index=engine)
    mem.close()
    rows.append(
        {
            "index": engine,
            "case": "open, empty, default embedder (offline e5 model load)",
            "seconds": seconds,
        }
    )
    return rows


if __name__ == "__main__":
    sys.exit(main())
