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

Then against the length of one fact's history: a fact updated until it has each number of
versions in turn; the step alone — reading the version a rollback returns to, directly
(``versions([(fact, version)])``, p50 of 50) and by reading the fact's whole history as
an earlier release did (``history(fact)``) — then everything a rollback of the last
update reads after the log (``undo_reads([txid])``: the version it returns to and the
fact's head, p50 of 50), and whole rollbacks (p50 of 20).

    python -m benchmarks.rollback_log [--lengths 0,1000,10000] [--versions 10,1000,5000]
        [--stores sqlite,postgres,redis]
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
from contextlib import closing, contextmanager
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
    return step, rollbacks_p50(mem, quiet, "quiet")


def rollbacks_p50(mem: MemoryStore, fact: str, session: str | None) -> float:
    """p50 ms of 20 rollbacks (of ``session``), each undoing an update of ``fact``."""
    samples = []
    for i in range(20):
        mem.update(fact, {"payload": {"content": f"revised {i}"}})
        started = time.perf_counter()
        assert mem.rollback(1, session) == [fact]
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


@contextmanager
def without_indexes(store: str, where: str) -> Iterator[None]:
    """The log's rollback indexes dropped for the block (SQLite, Postgres)."""
    if store == "sqlite":
        with closing(sqlite3.connect(where)) as lite, lite:  # commits, then closes
            for name in INDEXES:
                lite.execute(f"DROP INDEX {name}")
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


def open_storage(store: str, servers: Servers, tmp: Path) -> tuple[Any, str]:
    """A new storage of the kind, and where it is (a file, a database URL, a server URL)."""
    if store == "sqlite":
        where = str(tmp / f"{uuid.uuid4().hex}.db")
        return SQLiteStorage(where), where
    if store == "postgres":
        where = servers.pg().create_database(f"r{uuid.uuid4().hex[:12]}")
        return PostgresStorage(where), where
    where = servers.rd().url
    return RedisStorage(where, prefix=f"r{uuid.uuid4().hex[:12]}:"), where


def run_history(store: str, counts: list[int], servers: Servers, tmp: Path) -> list[dict[str, Any]]:
    """Rollbacks of a fact against the length of its history."""
    storage, _ = open_storage(store, servers, tmp)
    mem = MemoryStore(storage)
    fact = mem.commit(Fact(type="note", payload={"content": "version 1"}), "s")
    versions = 1
    rows = []
    for count in counts:
        while versions < count:
            versions += 1
            mem.update(fact, {"payload": {"content": f"version {versions}"}})
        target = versions - 1
        direct = p50_ms(lambda: storage.versions([(fact, target)]), 50)  # noqa: B023
        whole = p50_ms(lambda: storage.history(fact), 50)
        last = storage.get(fact).txid
        undo = p50_ms(lambda: storage.undo_reads([last]), 50)  # noqa: B023
        rollback = rollbacks_p50(mem, fact, None)
        versions = mem.get(fact)["version"]  # type: ignore[index]
        rows.append(
            {
                "store": store,
                "versions": count,
                "find_ms": direct,
                "find_history_ms": whole,
                "undo_reads_ms": undo,
                "rollback_ms": rollback,
            }
        )
        print(f"  {store}: {count} versions", file=sys.stderr, flush=True)
    mem.close()
    return rows


def run_store(store: str, lengths: list[int], servers: Servers, tmp: Path) -> list[dict[str, Any]]:
    storage, where = open_storage(store, servers, tmp)
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
    parser.add_argument("--versions", default="10,1000,5000")
    parser.add_argument("--stores", default=",".join(STORES))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    stores = pick(parser, "--stores", args.stores, STORES)
    try:
        lengths = sorted(int(n) for n in args.lengths.split(","))
        counts = sorted(int(n) for n in args.versions.split(","))
    except ValueError:
        parser.error("--lengths, --versions: expected comma-separated integers")
    if not counts or counts[0] < 2:
        parser.error("--versions: a rollback needs facts of at least 2 versions")
    rows: list[dict[str, Any]] = []
    history_rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lockstep-rollback-log-") as tmp:
        servers = Servers(Path(tmp))
        try:
            for store in stores:
                rows += run_store(store, lengths, servers, Path(tmp))
                history_rows += run_history(store, counts, servers, Path(tmp))
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
    print("\n## Rollback against the length of the fact's history\n")
    print(
        "A fact with each number of versions: reading the version a rollback returns to "
        "(p50 of 50) directly and through the fact's whole history (an earlier release's "
        "read); all that a rollback of the last update reads after the log (`undo_reads`, "
        "p50 of 50); and whole rollbacks (p50 of 20), in ms.\n"
    )
    print("| store | versions | find, direct | find, whole history | undo reads | rollback |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in history_rows:
        print(
            f"| {row['store']} | {row['versions']:,} | {row['find_ms']:.3f} | "
            f"{row['find_history_ms']:.3f} | {row['undo_reads_ms']:.3f} | "
            f"{row['rollback_ms']:.3f} |"
        )
    if args.json:
        results = {"machine": machine(), "results": rows, "history": history_rows}
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
