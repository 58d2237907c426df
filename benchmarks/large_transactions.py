"""Large transactions: one atomic change of thousands of facts (an import, a session's
bulk rewrite, its rollback) against the same facts written one commit each.

On each backend combination Lockstep writes ``--facts`` new facts in one transaction,
updates them all in a second, and rolls that one back; then it writes ``--singles`` facts
one commit each, on the same stores in the same run, for the per-fact rate a program
gets without a transaction. The default of 6,000 facts is more than a Chroma call may
carry (5,461 records), so a transaction that size is written in parts there. After each
step the stores are read back: the facts in the storage and the versions in the index
must be the ones written, or the run stops.

    python -m benchmarks.large_transactions [--facts 6000] [--singles 200] [--combos a,b]
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

from benchmarks._common import machine, pick, positive
from benchmarks._stores import COMBOS, Servers, lockstep_store
from coordinator import Fact


def measure(spec: dict[str, Any], facts: int, singles: int) -> dict[str, Any]:
    """The seconds each step took on the stores ``spec`` names, checked against them."""
    mem = lockstep_store(spec)
    try:
        row: dict[str, Any] = {"stores": spec["combo"], "facts": facts}
        started = time.perf_counter()
        with mem.transaction(session_id="bulk") as tx:
            ids = [
                tx.commit(Fact(type="note", payload={"content": f"imported memory {n}"}))
                for n in range(facts)
            ]
        row["insert_s"] = time.perf_counter() - started
        expect(mem, ids, 1)

        started = time.perf_counter()
        with mem.transaction(session_id="bulk") as tx:
            for fact_id in ids:
                tx.update(fact_id, {"payload": {"content": "rewritten"}})
        row["update_s"] = time.perf_counter() - started
        expect(mem, ids, 2)

        started = time.perf_counter()
        undone = mem.rollback(1, "bulk")
        row["rollback_s"] = time.perf_counter() - started
        if len(undone) != facts:
            raise SystemExit(f"{spec['combo']}: the rollback undid {len(undone)} of {facts}")
        expect(mem, ids, 3)

        started = time.perf_counter()
        for n in range(singles):
            mem.commit(Fact(type="note", payload={"content": f"one memory {n}"}))
        row["single_per_s"] = singles / (time.perf_counter() - started)
        row["insert_per_s"] = facts / row["insert_s"]
        return row
    finally:
        mem.close()


def expect(mem: Any, ids: list[str], version: int) -> None:
    """Every fact at ``version`` in the storage, and that version alone in every index."""
    mem.flush()
    stored = {f["id"]: f["version"] for f in mem.query("note")}
    if any(stored.get(i) != version for i in ids):
        raise SystemExit(f"the storage does not hold version {version} of every fact")
    for index in mem.indexes:
        contents = index.contents()
        if any(contents.committed.get(i) != version for i in ids) or contents.pending:
            raise SystemExit(f"{index.name} does not hold version {version} of every fact")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--facts", type=positive, default=6000, help="facts in a transaction")
    parser.add_argument("--singles", type=positive, default=200, help="one-fact commits")
    parser.add_argument("--combos", default=",".join(COMBOS))
    parser.add_argument("--json")
    args = parser.parse_args()
    combos = pick(parser, "--combos", args.combos, COMBOS)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lockstep-large-") as base:
        servers = Servers(Path(base) / "servers")
        try:
            for n, combo in enumerate(combos):
                spec = {
                    **servers.spec_for(combo),
                    "combo": combo,
                    "dir": str(Path(base) / f"run{n}"),
                    "system": "lockstep",
                }
                Path(spec["dir"]).mkdir()
                print(f"  {combo}", file=sys.stderr, flush=True)
                rows.append(measure(spec, args.facts, args.singles))
                servers.release(spec)
        finally:
            servers.stop()
    print("## Large transactions\n")
    print(f"Machine: {machine()}\n")
    print(
        f"One transaction of {args.facts} new facts, one updating them all, the rollback "
        f"of that one; then {args.singles} one-fact commits on the same stores. Every step "
        "is read back from the stores.\n"
    )
    print(
        "| stores | insert s | update s | rollback s | facts/s in one transaction "
        "| facts/s one commit each | ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['stores']} | {r['insert_s']:.2f} | {r['update_s']:.2f} | "
            f"{r['rollback_s']:.2f} | {r['insert_per_s']:.0f} | {r['single_per_s']:.0f} | "
            f"{r['insert_per_s'] / r['single_per_s']:.1f}x |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
