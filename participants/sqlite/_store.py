"""The SQLite fact store behind ``SQLiteStorage`` (synchronous; thread- and process-safe).

Theory of operation:

* ``prepare`` runs one ``BEGIN IMMEDIATE`` transaction that checks versions, writes the
  staged rows, a lock row per fact and a ``prepared`` row, then commits with
  ``synchronous=FULL``: on return the vote survives a crash, and the lock rows keep other
  transactions (in any process sharing the file) off those facts until the branch ends.
* ``commit`` applies the staged rows, appends them to history and deletes the staging,
  in one local transaction; a txid with no ``prepared`` row was already finished.
* ``abort`` deletes the staging and the locks, and leaves a tombstone that refuses a
  prepare of the same txid arriving later. ``recover`` lists ``prepared`` rows.
* ``commit_one_phase`` checks and applies in one local transaction, with no staging.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from coordinator.abc import Vote
from coordinator.errors import LockstepError, ParticipantError, UsageError
from coordinator.records import DeleteFact, FactRecord, UpsertFact, Write
from participants._checks import (
    FactWrite,
    already_aborted,
    fact_writes,
    locked_conflict,
    version_conflict,
)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS lockstep_facts (
        id TEXT PRIMARY KEY, type TEXT NOT NULL, session_id TEXT,
        version INTEGER NOT NULL, record TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS lockstep_facts_type ON lockstep_facts (type)",
    "CREATE INDEX IF NOT EXISTS lockstep_facts_session ON lockstep_facts (session_id)",
    """CREATE TABLE IF NOT EXISTS lockstep_fact_history (
        id TEXT NOT NULL, version INTEGER NOT NULL, deleted INTEGER NOT NULL,
        record TEXT NOT NULL, PRIMARY KEY (id, version))""",
    """CREATE TABLE IF NOT EXISTS lockstep_staged (
        txid TEXT NOT NULL, seq INTEGER NOT NULL, fact_id TEXT NOT NULL, kind TEXT NOT NULL,
        expected_version INTEGER NOT NULL, record TEXT, PRIMARY KEY (txid, seq))""",
    """CREATE TABLE IF NOT EXISTS lockstep_locks (
        fact_id TEXT PRIMARY KEY, txid TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS lockstep_prepared (
        txid TEXT PRIMARY KEY, prepared_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS lockstep_aborted (
        txid TEXT PRIMARY KEY, aborted_at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS lockstep_aborted_at ON lockstep_aborted (aborted_at)",
)
ABORT_FENCE_SECONDS = 24 * 3600.0
"""How long an abort keeps refusing a late prepare of the same txid."""


class SQLiteStore:
    """Facts, history and staged branches in one SQLite file."""

    def __init__(self, path: str | os.PathLike[str], name: str, busy_timeout: float) -> None:
        self.path = os.fspath(path)
        self.name = name
        self._lock = threading.RLock()
        with self._translated():
            self._conn = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            with self._transaction():
                for statement in _SCHEMA:
                    self._conn.execute(statement)

    # -- the participant contract -------------------------------------------------------

    def prepare(self, txid: str, writes: Sequence[Write]) -> Vote:
        checked = fact_writes(self.name, writes)
        rows = [_staged_row(txid, seq, write) for seq, write in enumerate(checked)]
        with self._lock, self._translated(txid), self._transaction():
            if self._conn.execute(
                "SELECT 1 FROM lockstep_prepared WHERE txid = ?", (txid,)
            ).fetchone():
                return Vote.YES
            if self._conn.execute(
                "SELECT 1 FROM lockstep_aborted WHERE txid = ?", (txid,)
            ).fetchone():
                raise already_aborted(self.name, txid)
            self._check(txid, checked)
            self._conn.executemany("INSERT INTO lockstep_staged VALUES (?, ?, ?, ?, ?, ?)", rows)
            self._conn.executemany(
                "INSERT INTO lockstep_locks VALUES (?, ?)", [(w.fact_id, txid) for w in checked]
            )
            self._conn.execute("INSERT INTO lockstep_prepared VALUES (?, ?)", (txid, time.time()))
        return Vote.YES

    def commit(self, txid: str) -> None:
        with self._lock, self._translated(txid), self._transaction():
            if not self._conn.execute(
                "SELECT 1 FROM lockstep_prepared WHERE txid = ?", (txid,)
            ).fetchone():
                return  # already committed (or never prepared: the log says which)
            staged = self._conn.execute(
                "SELECT fact_id, kind, expected_version, record FROM lockstep_staged "
                "WHERE txid = ? ORDER BY seq",
                (txid,),
            ).fetchall()
            self._apply([_write_from_row(row) for row in staged])
            self._forget(txid)

    def abort(self, txid: str) -> None:
        now = time.time()
        with self._lock, self._translated(txid), self._transaction():
            self._forget(txid)
            # The tombstone fences out a prepare that arrives after the abort (a call the
            # coordinator gave up on at its timeout); old ones are pruned as we go.
            self._conn.execute("INSERT OR IGNORE INTO lockstep_aborted VALUES (?, ?)", (txid, now))
            self._conn.execute(
                "DELETE FROM lockstep_aborted WHERE aborted_at < ?", (now - ABORT_FENCE_SECONDS,)
            )

    def recover(self) -> list[str]:
        with self._lock, self._translated():
            rows = self._conn.execute("SELECT txid FROM lockstep_prepared ORDER BY txid")
            return [row[0] for row in rows]

    def commit_one_phase(self, txid: str, writes: Sequence[Write]) -> None:
        checked = fact_writes(self.name, writes)
        with self._lock, self._translated(txid), self._transaction():
            self._check(txid, checked)
            self._apply(checked)

    # -- reads --------------------------------------------------------------------------

    def get(self, fact_id: str) -> FactRecord | None:
        with self._lock, self._translated():
            row = self._conn.execute(
                "SELECT record FROM lockstep_facts WHERE id = ?", (fact_id,)
            ).fetchone()
        return None if row is None else FactRecord.from_json(row[0])

    def all_facts(self) -> list[FactRecord]:
        with self._lock, self._translated():
            rows = self._conn.execute("SELECT record FROM lockstep_facts ORDER BY id").fetchall()
        return [FactRecord.from_json(row[0]) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- internals ----------------------------------------------------------------------

    def _check(self, txid: str, writes: Sequence[FactWrite]) -> None:
        for write in writes:
            holder = self._conn.execute(
                "SELECT txid FROM lockstep_locks WHERE fact_id = ?", (write.fact_id,)
            ).fetchone()
            if holder is not None and holder[0] != txid:
                raise locked_conflict(self.name, txid, write.fact_id)
            row = self._conn.execute(
                "SELECT version FROM lockstep_facts WHERE id = ?", (write.fact_id,)
            ).fetchone()
            actual = 0 if row is None else int(row[0])
            if actual != write.expected_version:
                raise version_conflict(
                    self.name, txid, write.fact_id, write.expected_version, actual
                )

    def _apply(self, writes: Sequence[FactWrite]) -> None:
        for write in writes:
            if isinstance(write, UpsertFact):
                fact = write.fact
                text = fact.to_json()
                self._conn.execute(
                    "INSERT INTO lockstep_facts VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO "
                    "UPDATE SET type = excluded.type, session_id = excluded.session_id, "
                    "version = excluded.version, record = excluded.record",
                    (fact.id, fact.type, fact.session_id, fact.version, text),
                )
                self._conn.execute(
                    "INSERT OR REPLACE INTO lockstep_fact_history VALUES (?, ?, 0, ?)",
                    (fact.id, fact.version, text),
                )
            else:
                self._conn.execute("DELETE FROM lockstep_facts WHERE id = ?", (write.fact_id,))
                if write.tombstone is not None:
                    self._conn.execute(
                        "INSERT OR REPLACE INTO lockstep_fact_history VALUES (?, ?, 1, ?)",
                        (write.fact_id, write.tombstone.version, write.tombstone.to_json()),
                    )

    def _forget(self, txid: str) -> None:
        for table in ("lockstep_staged", "lockstep_locks", "lockstep_prepared"):
            self._conn.execute(f"DELETE FROM {table} WHERE txid = ?", (txid,))

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    @contextmanager
    def _translated(self, txid: str | None = None) -> Iterator[None]:
        try:
            yield
        except LockstepError:
            raise
        except sqlite3.Error as exc:
            raise ParticipantError(
                f"SQLite store {self.path} failed: {exc}", txid=txid, participant=self.name
            ) from exc


def _staged_row(txid: str, seq: int, write: FactWrite) -> tuple[object, ...]:
    if isinstance(write, UpsertFact):
        try:
            record = write.fact.to_json()
        except (TypeError, ValueError) as exc:
            raise UsageError(
                f"fact {write.fact_id!r}: payload is not JSON-serialisable ({exc})", txid=txid
            ) from exc
        return (txid, seq, write.fact_id, "upsert", write.expected_version, record)
    tombstone = None if write.tombstone is None else write.tombstone.to_json()
    return (txid, seq, write.fact_id, "delete", write.expected_version, tombstone)


def _write_from_row(row: tuple[str, str, int, str | None]) -> FactWrite:
    fact_id, kind, expected, record = row
    if kind == "upsert":
        assert record is not None
        return UpsertFact(FactRecord.from_json(record), expected)
    tombstone = None if record is None else FactRecord.from_json(record)
    return DeleteFact(fact_id, expected, tombstone)
