"""Rollback against the length of the transaction log.

A rollback first asks the storage for the latest writes it may undo (of one session, or
of the whole store). Each storage keeps those in an index — two partial indexes of the
log on SQLite and Postgres, sorted sets on Redis — so the question costs the same however
long the log; without them the storage walks the log from its newest end, past every
later transaction of other sessions. Here session ``quiet`` writes one fact, then session
``busy`` commits until the log is each length in turn; at each length, the step alone
(``transactions("quiet", 1)``, p50 of 200) and whole rollbacks (an update of the quiet
fact, then ``rollback(1, "quiet")``, p50 of 20). On SQLite and Postgres the same is
measured with the indexes dropped, as a store of an earlier release has them; on Redis the
walk was the earlier release's code (one round trip per transaction) and is not measured.

    python -m benchmarks.rollback_log [--lengths 0,1000,10000] [--stores sqlite,postgres,redis]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks._common import machine, pick
from chaos.campaign import Servers
from coordinator import Fact, MemoryStore
from participants.postgres import PostgresStorage
from participants.postgres import _schema as pg_sql
from participants.redis import RedisStorage
from participants.sqlite import SQLiteStorage

STORES = ["sqlite", "postgres", "redis"]
INDEXES = ("lockstep_transactions_undoable", "lockstep_transactions_undoable_session")


def p50_ms(call: Callable[[], Any], times: int) -> float:
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def measure(mem: MemoryStore, quiet: str) -> tuple[float, float]:
    """The step alone and whole rollbacks, p50 ms."""
    step = p50_ms(lambda: mem.storage.transactions("quiet", 1), 200)
    rollbacks = []
    for i in range(20):
        mem.update(quiet, {"payload": {"content": f"quiet, revised {i}"}})
        started = time.perf_counter()
        assert mem.rollback(1, "quiet") == [quiet]
        rollbacks.append(time.perf_counter() - started)
    return step, statistics.median(rollbacks) * 1000


@contextmanager
def without_indexes(store: str, where: str) -> Iterator[None]:
    """The log's rollback indexes dropped for the block (SQLite, Postgres)."""
    if store == "sqlite":
        with sqlite3.connect(where) as conn:
            for name in INDEXES:
                conn.execute(f"DROP INDEX {name}")
        yield
        # SQLiteStorage creates them again when opened.
        SQLiteStorage(where).close()
    else:
        import psycopg

        with psycopg.connect(where, autocommit=True) as conn:
            for name in INDEXES:
                conn.execute(f"DROP INDEX {name}")
            yield
            for statement in pg_sql.LATER_INDEXES:
                conn.execute(statement)


def run_store(store: str, lengths: list[int], servers: Servers, tmp: Path) -> list[dict[str, Any]]:
    if store == "sqlite":
        where = str(tmp / f"{uuid.uuid4().hex}.db")
        storage: Any = SQLiteStorage(where)
    elif store == "postgres":
        name = f"r{uuid.uuid4().hex[:12]}"
        where = servers.pg().create_database(name)
        storage = PostgresStorage(where)
    else:
        where = servers.rd().url
        storage = RedisStorage(where, prefix=f"r{uuid.uuid4().hex[:12]}:")
    mem = MemoryStore(storage)
    quiet = mem.commit(Fact(type="note", payload={"content": "quiet"}), "quiet")
    logged = 1
    rows = []
    for length in lengths:
        while logged < length:
            mem.commit(Fact(type="note", payload={"content": f"busy {logged}"}), "busy")
            logged += 1
        step, rollback = measure(mem, quiet)
        logged += 40  # the measurement's updates and rollbacks
        row: dict[str, Any] = {"store": store, "log": length, "step_ms": step}
        row["rollback_ms"] = rollback
        if store != "redis":
            with without_indexes(store, where):
                row["step_walk_ms"], row["rollback_walk_ms"] = measure(mem, quiet)
            logged += 40
        rows.append(row)
        print(f"  {store}: log {length}", file=sys.stderr, flush=True)
    mem.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lengths", default="0,1000,10000")
    parser.add_argument("--stores", default=",".join(STORES))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    stores = pick(parser, "--stores", args.stores, STORES)
    try:
        lengths = sorted(int(n) for n in args.lengths.split(","))
    except ValueError:
        parser.error(f"--lengths: expected comma-separated integers, got {args.lengths!r}")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lockstep-rollback-log-") as tmp:
        servers = Servers(Path(tmp))
        try:
            for store in stores:
                rows += run_store(store, lengths, servers, Path(tmp))
        finally:
            servers.stop()

    def cell(row: dict[str, Any], key: str) -> str:
        return f"{row[key]:.3f}" if key in row else "—"

    print("## Rollback against the length of the transaction log\n")
    print(f"Machine: {machine()}\n")
    print(
        "A session that last wrote before a log of other transactions: finding what a "
        "rollback may undo (`transactions(session, 1)`, p50 of 200) and whole rollbacks "
        "(p50 of 20), in ms, with the log's indexes and without them (a walk of the log).\n"
    )
    print(
        "| store | log length | find, indexed | find, walk | rollback, indexed | rollback, walk |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['store']} | {row['log']:,} | {cell(row, 'step_ms')} | "
            f"{cell(row, 'step_walk_ms')} | {cell(row, 'rollback_ms')} | "
            f"{cell(row, 'rollback_walk_ms')} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
