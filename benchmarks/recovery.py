"""Recovery: time to resolve 10,000 in-doubt transactions, and the start-up cost of
``MemoryStore.open`` (the embedded default: SQLite facts and log, Qdrant local vectors).

The in-doubt state is what a crash leaves, for half of the transactions after the commit
decision and for half before it, in two layouts:

* **last resource** (the default): the decision log lives in the facts file, so a
  transaction's facts and its COMMIT record land in one local transaction; only the vector
  index holds prepared branches (all of them), and recovery commits the decided half and
  aborts the rest.
* **separate log** (a ``decisions.db`` beside the stores, as earlier versions kept it):
  every transaction is prepared in both stores.

``MemoryStore.open`` recovers them all; the stores are checked afterwards.

    python -m benchmarks.recovery [--transactions 10000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import SameEmbedder, machine
from coordinator import FactRecord, MemoryStore, UpsertFact, new_txid
from coordinator.abc import Decision
from coordinator.log import SQLiteDecisionLog
from coordinator.plugins import open_participant

LAYOUTS = ("last resource", "separate log")


def leave_in_doubt(directory: Path, transactions: int, layout: str) -> None:
    """Stage ``transactions`` single-fact inserts as a crash would leave them in
    ``layout``; half of them are decided (COMMIT), half are not."""
    directory.mkdir(parents=True, exist_ok=True)
    storage: Any = open_participant(f"sqlite:///{directory / 'facts.db'}", name="facts")
    index: Any = open_participant(
        f"qdrant+local:///{directory / 'vectors'}?collection=memories",
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
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    n = args.transactions
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lockstep-recovery-") as tmp:
        base = Path(tmp)
        seconds, mem = timed_open(base / "empty", embedder=SameEmbedder())
        mem.close()
        rows.append({"case": "open, empty directory", "seconds": seconds})

        for layout in LAYOUTS:
            print(f"  staging {n} in-doubt transactions ({layout})", file=sys.stderr, flush=True)
            crashed = base / layout.replace(" ", "-")
            leave_in_doubt(crashed, n, layout)
            seconds, mem = timed_open(crashed, embedder=SameEmbedder())
            facts = {f.id for f in mem.storage.all_facts()}
            contents = mem.indexes[0].contents()
            report = mem.verify()
            assert len(facts) == (n + 1) // 2, f"recovery ({layout}): {len(facts)} facts"
            assert len(contents.committed) == len(facts), f"recovery ({layout}): vectors"
            assert report.clean, f"recovery ({layout}) left drift or staged branches"
            mem.close()
            rows.append(
                {
                    "case": f"open + recover {n} in-doubt transactions ({layout})",
                    "seconds": seconds,
                    "transactions_per_s": n / seconds,
                }
            )

        seconds, mem = timed_open(crashed, embedder=SameEmbedder())
        mem.close()
        rows.append({"case": f"open, {len(facts)} facts, nothing in doubt", "seconds": seconds})

        seconds, mem = timed_open(base / "model")
        mem.close()
        rows.append(
            {"case": "open, empty, default embedder (offline e5 model load)", "seconds": seconds}
        )

    print(f"## Recovery and start-up\n\nMachine: {machine()}\n")
    print("SQLite facts + SQLite decision log + Qdrant local vectors (`MemoryStore.open`).\n")
    print("| case | seconds | transactions/s |")
    print("|---|---:|---:|")
    for row in rows:
        rate = row.get("transactions_per_s")
        print(
            f"| {row['case']} | {row['seconds']:.2f} | {'' if rate is None else f'{rate:,.0f}'} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
