"""The SQLite fact store behind ``SQLiteStorage`` (synchronous; thread- and process-safe).

Theory of operation:

* ``prepare`` runs one ``BEGIN IMMEDIATE`` transaction that checks versions and singleton
  claims, writes the staged rows, a lock row per fact (and per claim) and a ``prepared``
  row, then commits with ``synchronous=FULL``: on return the vote survives a crash, and the
  lock rows keep other transactions (in any process sharing the file) off those facts
  until the branch ends. SQLite's write lock serialises every prepare across processes, so
  the checks and the locks they take are one atomic step.
* ``commit`` applies the staged rows, appends them to history, records the transaction in
  the transaction log and deletes the staging, in one local transaction; a txid with no
  ``prepared`` row was already finished.
* ``abort`` deletes the staging and the locks, and leaves a tombstone that refuses a
  prepare of the same txid arriving later. ``recover`` lists ``prepared`` rows.
* ``commit_one_phase`` checks and applies in one local transaction, with no staging;
  ``commit_with_decision`` does the same and records the COMMIT decision in it (the last
  resource). Concurrent local commits are group-committed: the first caller commits alone,
  callers arriving meanwhile queue, and the next turn applies everything queued in one
  transaction (one fsync), each transaction checked against what the ones before it wrote.
  If that transaction fails, each is committed again on its own, so a refusal (a version
  conflict, a decision recovery fenced) fails its own transaction only.
* The caller's own SQL (``Execute``) runs inside those local commits only; a prepare
  carrying it is refused (``_your_sql``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from coordinator.abc import Decision, TransactionEntry, UndoReads, Vote, versions_before
from coordinator.errors import (
    ConfigurationError,
    LockstepError,
    ParticipantError,
    TransactionAborted,
    UsageError,
)
from coordinator.filters import check_filters
from coordinator.log._sqlite import (
    WriteTransaction,
    connect,
    insert_decisions,
    settle,
    sqlite_path,
)
from coordinator.plugins import path_of, scheme_of
from coordinator.records import (
    DeleteFact,
    Execute,
    FactRecord,
    JSONValue,
    TransactionMeta,
    UpsertFact,
    Write,
)
from participants._checks import (
    FactWrite,
    already_aborted,
    claim_conflict,
    fact_writes,
    facts_and_sql,
    history_conflict,
    locked_conflict,
    transaction_meta,
    version_conflict,
)
from participants._sync.combine import WriteCombiner
from participants.sqlite._your_sql import refuse_prepare, run_statements

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS lockstep_facts (
        id TEXT PRIMARY KEY, type TEXT NOT NULL, session_id TEXT,
        version INTEGER NOT NULL, ts REAL NOT NULL, record TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS lockstep_facts_type ON lockstep_facts (type)",
    "CREATE INDEX IF NOT EXISTS lockstep_facts_session ON lockstep_facts (session_id)",
    """CREATE TABLE IF NOT EXISTS lockstep_fact_history (
        id TEXT NOT NULL, version INTEGER NOT NULL, deleted INTEGER NOT NULL,
        txid TEXT, record TEXT NOT NULL, PRIMARY KEY (id, version))""",
    "CREATE INDEX IF NOT EXISTS lockstep_fact_history_txid ON lockstep_fact_history (txid)",
    """CREATE TABLE IF NOT EXISTS lockstep_transactions (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, txid TEXT NOT NULL UNIQUE, session_id TEXT,
        kind TEXT NOT NULL, undoes TEXT NOT NULL, rolled_back_by TEXT,
        committed_at REAL NOT NULL, actor TEXT, reason TEXT)""",
    # What a rollback may undo, newest first, without walking the whole log.
    """CREATE INDEX IF NOT EXISTS lockstep_transactions_undoable ON lockstep_transactions
        (seq) WHERE kind = 'write' AND rolled_back_by IS NULL""",
    """CREATE INDEX IF NOT EXISTS lockstep_transactions_undoable_session
        ON lockstep_transactions (session_id, seq)
        WHERE kind = 'write' AND rolled_back_by IS NULL""",
    """CREATE TABLE IF NOT EXISTS lockstep_claims (
        claim TEXT PRIMARY KEY, fact_id TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS lockstep_claims_fact ON lockstep_claims (fact_id)",
    """CREATE TABLE IF NOT EXISTS lockstep_staged (
        txid TEXT NOT NULL, seq INTEGER NOT NULL, fact_id TEXT NOT NULL, kind TEXT NOT NULL,
        expected_version INTEGER NOT NULL, claim TEXT, record TEXT,
        PRIMARY KEY (txid, seq))""",
    """CREATE TABLE IF NOT EXISTS lockstep_locks (
        fact_id TEXT PRIMARY KEY, txid TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS lockstep_claim_locks (
        claim TEXT PRIMARY KEY, txid TEXT NOT NULL)""",
    # A branch's locks are released by txid: without these, resolving n branches at once
    # (recovery) scans both tables n times.
    "CREATE INDEX IF NOT EXISTS lockstep_locks_txid ON lockstep_locks (txid)",
    "CREATE INDEX IF NOT EXISTS lockstep_claim_locks_txid ON lockstep_claim_locks (txid)",
    """CREATE TABLE IF NOT EXISTS lockstep_prepared (
        txid TEXT PRIMARY KEY, prepared_at REAL NOT NULL, meta TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS lockstep_aborted (
        txid TEXT PRIMARY KEY, aborted_at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS lockstep_aborted_at ON lockstep_aborted (aborted_at)",
)
#: The writes a rollback may undo, newest first: each planned on its index above.
SELECT_UNDOABLE = (
    "SELECT seq, txid, session_id, kind, undoes, rolled_back_by, committed_at, actor, reason "
    "FROM lockstep_transactions WHERE kind = 'write' AND rolled_back_by IS NULL "
    "ORDER BY seq DESC LIMIT ?"
)
SELECT_UNDOABLE_IN_SESSION = SELECT_UNDOABLE.replace("ORDER BY", "AND session_id = ? ORDER BY")
ABORT_FENCE_SECONDS = 24 * 3600.0
"""How long an abort keeps refusing a late prepare of the same txid."""
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class _LocalCommit:
    """One transaction's writes for a local (unstaged) commit."""

    txid: str
    writes: Sequence[FactWrite]
    meta: TransactionMeta
    decision_for: Sequence[str] | None
    statements: Sequence[Execute]


class SQLiteStore:
    """Facts, history, the transaction log and staged branches in one SQLite file."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        name: str,
        busy_timeout: float,
        group_commit: bool = True,
    ) -> None:
        self.path = sqlite_path(path)  # as opened now, whatever the working directory later
        self.name = name
        self._lock = threading.RLock()
        self._log_inside = False
        self.local_commits: WriteCombiner[_LocalCommit] | None = (
            WriteCombiner(name, self._commit_batch) if group_commit else None
        )
        """The group committer of local commits (``None``: each commits alone)."""
        with self._translated():
            self._conn = connect(self.path, busy_timeout)
            try:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
                with self._transaction():
                    for statement in _SCHEMA:
                        self._conn.execute(statement)
                # Reads of committed data that arrive while a commit holds the connection
                # take a second one: WAL lets them run beside the commit, so they do not
                # wait for its fsync. (A private in-memory database is one connection's
                # own: there they wait.)
                self._reader, self._read_lock = self._conn, self._lock
                if self.path != ":memory:":
                    self._reader = connect(self.path, busy_timeout)
                    self._read_lock = threading.RLock()
            except BaseException:
                self._conn.close()  # a refused file is let go, not held until collected
                raise

    # -- the participant contract -------------------------------------------------------

    def prepare(self, txid: str, writes: Sequence[Write]) -> Vote:
        if any(isinstance(w, Execute) for w in writes):
            raise refuse_prepare(self.name, txid)
        checked = fact_writes(self.name, writes)
        meta = _meta_json(transaction_meta(writes))
        rows = [_staged_row(txid, seq, write) for seq, write in enumerate(checked)]
        with self._lock, self._translated(txid), self._transaction():
            if self._one("SELECT 1 FROM lockstep_prepared WHERE txid = ?", txid):
                return Vote.YES
            if self._one("SELECT 1 FROM lockstep_aborted WHERE txid = ?", txid):
                raise already_aborted(self.name, txid)
            self._check(txid, checked)
            self._conn.executemany("INSERT INTO lockstep_staged VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            self._conn.executemany(
                "INSERT INTO lockstep_locks VALUES (?, ?)", [(w.fact_id, txid) for w in checked]
            )
            self._conn.executemany(
                "INSERT INTO lockstep_claim_locks VALUES (?, ?)",
                [(w.claim, txid) for w in checked if isinstance(w, UpsertFact) and w.claim],
            )
            self._conn.execute(
                "INSERT INTO lockstep_prepared VALUES (?, ?, ?)", (txid, time.time(), meta)
            )
        return Vote.YES

    def commit(self, txid: str) -> None:
        self.commit_many([txid])

    def commit_many(self, txids: Sequence[str]) -> None:
        """Commit every branch of ``txids`` in one local transaction (one fsync)."""
        if not txids:
            return
        one = txids[0] if len(txids) == 1 else None
        with self._lock, self._translated(one), self._transaction():
            for txid in txids:
                self._commit_staged(txid)

    def _commit_staged(self, txid: str) -> None:
        prepared = self._one("SELECT meta FROM lockstep_prepared WHERE txid = ?", txid)
        if prepared is None:
            return  # already committed (or never prepared: the log says which)
        staged = self._conn.execute(
            "SELECT fact_id, kind, expected_version, claim, record FROM lockstep_staged "
            "WHERE txid = ? ORDER BY seq",
            (txid,),
        ).fetchall()
        self._apply(txid, [_write_from_row(row) for row in staged], _meta_from(prepared[0]))
        self._forget(txid)

    def abort(self, txid: str) -> None:
        self.abort_many([txid])

    def abort_many(self, txids: Sequence[str]) -> None:
        """Abort every branch of ``txids`` in one local transaction."""
        now = time.time()
        if not txids:
            return
        one = txids[0] if len(txids) == 1 else None
        with self._lock, self._translated(one), self._transaction():
            for txid in txids:
                self._forget(txid)
                # The tombstone fences out a prepare that arrives after the abort (a call
                # the coordinator gave up on at its timeout).
                self._conn.execute(
                    "INSERT OR IGNORE INTO lockstep_aborted VALUES (?, ?)", (txid, now)
                )
            self._conn.execute(
                "DELETE FROM lockstep_aborted WHERE aborted_at < ?", (now - ABORT_FENCE_SECONDS,)
            )

    def recover(self) -> list[str]:
        with self._lock, self._translated():
            rows = self._conn.execute("SELECT txid FROM lockstep_prepared ORDER BY txid")
            return [row[0] for row in rows]

    def commit_one_phase(self, txid: str, writes: Sequence[Write]) -> None:
        self._commit_locally(txid, writes, None)

    def commit_with_decision(
        self, txid: str, writes: Sequence[Write], participants: Sequence[str]
    ) -> None:
        """The last-resource commit: the writes and the COMMIT record, one local
        transaction (one fsync), in a file that also holds the decision log."""
        self._commit_locally(txid, writes, participants)

    def _commit_locally(
        self, txid: str, writes: Sequence[Write], decision_for: Sequence[str] | None
    ) -> None:
        """Check and apply ``writes`` in one local transaction (recording COMMIT for
        ``decision_for``, if given, in the decision log this file holds); the caller's
        ``Execute`` statements run in it after the facts."""
        checked, statements = facts_and_sql(self.name, writes)
        for seq, write in enumerate(checked):
            _staged_row(txid, seq, write)  # refuses a payload that is not JSON
        local = _LocalCommit(txid, checked, transaction_meta(writes), decision_for, statements)
        if self.local_commits is None:
            self._commit_batch([local])
        else:
            self.local_commits.submit(txid, [local])

    def _commit_batch(self, batch: list[_LocalCommit]) -> None:
        """Check and apply each commit of ``batch`` in turn, in one local transaction."""
        one = batch[0].txid if len(batch) == 1 else None
        with self._lock, self._translated(one), self._transaction():
            for local in batch:
                if local.decision_for is not None:
                    self._record_commit(local.txid, local.decision_for)
                self._check(local.txid, local.writes)
                self._apply(local.txid, local.writes, local.meta)
                if local.statements:
                    run_statements(self._conn, self.name, local.txid, local.statements)

    def _record_commit(self, txid: str, participants: Sequence[str]) -> None:
        if not self._has_decision_table():
            raise ConfigurationError(
                f"SQLite store {self.path} holds no decision log; open a "
                "SQLiteDecisionLog on this file to commit it as the last resource",
                participant=self.name,
            )
        won = insert_decisions(self._conn, [(txid, Decision.COMMIT, participants)])
        if won[txid] is not Decision.COMMIT:
            raise TransactionAborted(
                "recovery aborted this transaction before its COMMIT was recorded",
                txid=txid,
                participant=self.name,
            )

    def has_decision_table(self) -> bool:
        """True when a decision log was opened on this file."""
        with self._lock, self._translated():
            return self._has_decision_table()

    def holds_decisions(self) -> bool:
        """True when this file holds decision records."""
        with self._lock, self._translated():
            if not self._has_decision_table():
                return False
            return self._one("SELECT 1 FROM lockstep_decisions LIMIT 1") is not None

    def decision_log_for(self, url: str) -> str | None:
        """The log URL to recover this store with, when this file holds decisions and
        ``url`` names another log; ``None`` when ``url`` will do."""
        if not self.holds_decisions():
            return None
        if scheme_of(url) == "sqlite":
            theirs = path_of(url)
            if os.path.exists(theirs) and os.path.samefile(theirs, self.path):
                return None
        return f"sqlite:///{self.path}"  # absolute since it was opened

    def _has_decision_table(self) -> bool:
        if not self._log_inside:  # once a log is here it stays: asked until then
            self._log_inside = bool(
                self._one(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' "
                    "AND name = 'lockstep_decisions'"
                )
            )
        return self._log_inside

    # -- reads (committed data only) ----------------------------------------------------

    def get(self, fact_id: str) -> FactRecord | None:
        row = self._read_one("SELECT record FROM lockstep_facts WHERE id = ?", fact_id)
        return None if row is None else FactRecord.from_json(row[0])

    def head(self, fact_id: str) -> tuple[FactRecord | None, int]:
        row = self._read_one(
            "SELECT (SELECT record FROM lockstep_facts WHERE id = ?1), "
            "(SELECT max(version) FROM lockstep_fact_history WHERE id = ?1)",
            fact_id,
        )
        assert row is not None  # one row, always
        record, newest = row
        return (None if record is None else FactRecord.from_json(record)), int(newest or 0)

    def get_many(self, fact_ids: Sequence[str]) -> dict[str, FactRecord]:
        with self._reading() as conn:
            return _get_many(conn, fact_ids)

    def query(
        self, typename: str | None, filters: Mapping[str, JSONValue], session_id: str | None
    ) -> list[FactRecord]:
        clauses: list[str] = []
        params: list[object] = []
        if typename is not None:
            clauses.append("type = ?")
            params.append(typename)
        if session_id is not None:
            clauses.append("session_id = ?")
            params.append(session_id)
        for path, value in check_filters(filters).items():
            # Keys were checked (names only); the JSON path and the value are parameters.
            # json_type keeps JSON's kinds apart, which json_extract alone would not (it
            # reads true as 1): true matches true only, 1 matches numbers only.
            json_path = "$." + ".".join(path)
            if value is None:
                clauses.append("json_extract(record, ?) IS NULL")
                params.append(json_path)
            elif isinstance(value, bool):
                clauses.append("json_type(record, ?) = ?")
                params += [json_path, "true" if value else "false"]
            else:
                kinds = "('text')" if isinstance(value, str) else "('integer', 'real')"
                clauses.append(f"json_type(record, ?) IN {kinds} AND json_extract(record, ?) = ?")
                params += [json_path, json_path, value]
        where = " AND ".join(clauses) or "1"
        with self._reading() as conn:
            rows = conn.execute(
                f"SELECT record FROM lockstep_facts WHERE {where} ORDER BY ts, id", params
            ).fetchall()
        return [FactRecord.from_json(row[0]) for row in rows]

    def history(self, fact_id: str) -> list[FactRecord]:
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT record FROM lockstep_fact_history WHERE id = ? ORDER BY version",
                (fact_id,),
            ).fetchall()
        return [FactRecord.from_json(row[0]) for row in rows]

    def versions(self, keys: Sequence[tuple[str, int]]) -> list[FactRecord]:
        with self._reading() as conn:
            return _versions(conn, keys)

    def written_by(self, txids: Sequence[str]) -> list[FactRecord]:
        with self._reading() as conn:
            return _written_by(conn, txids)

    def undo_reads(self, txids: Sequence[str]) -> UndoReads:
        with self._reading() as conn:  # one connection for the three statements
            written = _written_by(conn, txids)
            before = {record.id: record for record in _versions(conn, versions_before(written))}
            heads = _heads(conn, sorted({record.id for record in written}))
        return UndoReads(before, heads)

    def transactions(self, session_id: str | None, limit: int) -> list[TransactionEntry]:
        with self._reading() as conn:
            if session_id is None:
                rows = conn.execute(SELECT_UNDOABLE, (limit,))
            else:
                rows = conn.execute(SELECT_UNDOABLE_IN_SESSION, (session_id, limit))
            return [
                TransactionEntry(r[0], r[1], r[2], r[3], tuple(json.loads(r[4])), *r[5:])
                for r in rows.fetchall()
            ]

    def all_facts(self) -> list[FactRecord]:
        with self._reading() as conn:
            rows = conn.execute("SELECT record FROM lockstep_facts ORDER BY id").fetchall()
        return [FactRecord.from_json(row[0]) for row in rows]

    def close(self) -> None:
        with self._read_lock:
            self._reader.close()
        with self._lock:
            self._conn.close()

    # -- internals ----------------------------------------------------------------------

    def _check(self, txid: str, writes: Sequence[FactWrite]) -> None:
        for write in writes:
            holder = self._one("SELECT txid FROM lockstep_locks WHERE fact_id = ?", write.fact_id)
            if holder is not None and holder[0] != txid:
                raise locked_conflict(self.name, txid, write.fact_id)
            row = self._one("SELECT version FROM lockstep_facts WHERE id = ?", write.fact_id)
            actual = 0 if row is None else int(row[0])
            if actual != write.expected_version:
                raise version_conflict(
                    self.name, txid, write.fact_id, write.expected_version, actual
                )
            if isinstance(write, UpsertFact) and write.expected_version == 0:
                version = write.fact.version
                if self._one(
                    "SELECT 1 FROM lockstep_fact_history WHERE id = ? AND version = ?",
                    write.fact_id,
                    version,
                ):
                    raise history_conflict(self.name, txid, write.fact_id, version)
            if isinstance(write, UpsertFact) and write.claim is not None:
                owner = self._one(
                    "SELECT fact_id FROM lockstep_claims WHERE claim = ?", write.claim
                )
                if owner is not None and owner[0] != write.fact_id:
                    raise claim_conflict(self.name, txid, write.claim, owner[0])
                locker = self._one(
                    "SELECT txid FROM lockstep_claim_locks WHERE claim = ?", write.claim
                )
                if locker is not None and locker[0] != txid:
                    raise claim_conflict(
                        self.name, txid, write.claim, "staged by another transaction"
                    )

    def _apply(self, txid: str, writes: Sequence[FactWrite], meta: TransactionMeta) -> None:
        for write in writes:
            self._conn.execute("DELETE FROM lockstep_claims WHERE fact_id = ?", (write.fact_id,))
            if isinstance(write, UpsertFact):
                fact = write.fact
                text = fact.to_json()
                self._conn.execute(
                    "INSERT INTO lockstep_facts VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO "
                    "UPDATE SET type = excluded.type, session_id = excluded.session_id, "
                    "version = excluded.version, ts = excluded.ts, record = excluded.record",
                    (fact.id, fact.type, fact.session_id, fact.version, fact.ts, text),
                )
                self._conn.execute(
                    "INSERT OR REPLACE INTO lockstep_fact_history VALUES (?, ?, 0, ?, ?)",
                    (fact.id, fact.version, fact.txid, text),
                )
                if write.claim is not None:
                    self._conn.execute(
                        "INSERT INTO lockstep_claims VALUES (?, ?)", (write.claim, fact.id)
                    )
            else:
                self._conn.execute("DELETE FROM lockstep_facts WHERE id = ?", (write.fact_id,))
                if write.tombstone is not None:
                    self._conn.execute(
                        "INSERT OR REPLACE INTO lockstep_fact_history VALUES (?, ?, 1, ?, ?)",
                        (
                            write.fact_id,
                            write.tombstone.version,
                            write.tombstone.txid,
                            write.tombstone.to_json(),
                        ),
                    )
        for undone in meta.undoes:
            self._conn.execute(
                "UPDATE lockstep_transactions SET rolled_back_by = ? WHERE txid = ?",
                (txid, undone),
            )
        self._conn.execute(
            "INSERT OR IGNORE INTO lockstep_transactions (txid, session_id, kind, undoes, "
            "committed_at, actor, reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                txid,
                meta.session_id,
                meta.kind,
                json.dumps(list(meta.undoes)),
                time.time(),
                meta.actor,
                meta.reason,
            ),
        )

    def _forget(self, txid: str) -> None:
        for table in ("lockstep_staged", "lockstep_locks", "lockstep_claim_locks"):
            self._conn.execute(f"DELETE FROM {table} WHERE txid = ?", (txid,))
        self._conn.execute("DELETE FROM lockstep_prepared WHERE txid = ?", (txid,))

    def _one(self, sql: str, *params: object) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._conn.execute(sql, params).fetchone()
        return row

    def _read_one(self, sql: str, *params: object) -> tuple[str, ...] | None:
        """:meth:`_reading` for one row, without its context managers (a ``get`` is
        short enough for theirs to show)."""
        lock, conn = self._read_connection()
        try:
            row: tuple[str, ...] | None = conn.execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise self._failure(exc) from exc
        finally:
            lock.release()
        return row

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A connection for a read of committed data (see :meth:`_read_connection`)."""
        lock, conn = self._read_connection()
        try:
            with self._translated():
                yield conn
        finally:
            lock.release()

    def _read_connection(self) -> tuple[Any, sqlite3.Connection]:
        """A connection for a read, and its lock, taken: the writing one while it is free
        (its page cache is warm: it made the last writes, which another connection would
        read from the file again), the reading one while a commit holds it."""
        if self._lock.acquire(blocking=False):
            try:
                settle(self._conn)  # never read an interrupted commit's rows
            except BaseException:
                self._lock.release()
                raise
            return self._lock, self._conn
        self._read_lock.acquire()
        return self._read_lock, self._reader

    def _transaction(self) -> WriteTransaction:
        return WriteTransaction(self._conn)

    @contextmanager
    def _translated(self, txid: str | None = None) -> Iterator[None]:
        try:
            yield
        except LockstepError:
            raise
        except sqlite3.Error as exc:
            raise self._failure(exc, txid) from exc

    def _failure(self, exc: sqlite3.Error, txid: str | None = None) -> ParticipantError:
        return ParticipantError(
            f"SQLite store {self.path} failed: {exc}", txid=txid, participant=self.name
        )


def _staged_row(txid: str, seq: int, write: FactWrite) -> tuple[object, ...]:
    if isinstance(write, UpsertFact):
        try:
            record = write.fact.to_json()
        except (TypeError, ValueError) as exc:
            raise UsageError(
                f"fact {write.fact_id!r}: payload is not JSON-serialisable ({exc})", txid=txid
            ) from exc
        return (txid, seq, write.fact_id, "upsert", write.expected_version, write.claim, record)
    tombstone = None if write.tombstone is None else write.tombstone.to_json()
    return (txid, seq, write.fact_id, "delete", write.expected_version, None, tombstone)


def _write_from_row(row: tuple[str, str, int, str | None, str | None]) -> FactWrite:
    fact_id, kind, expected, claim, record = row
    if kind == "upsert":
        assert record is not None
        return UpsertFact(FactRecord.from_json(record), expected, claim=claim)
    tombstone = None if record is None else FactRecord.from_json(record)
    return DeleteFact(fact_id, expected, tombstone)


def _meta_json(meta: TransactionMeta) -> str:
    return json.dumps(
        {
            "session_id": meta.session_id,
            "kind": meta.kind,
            "undoes": list(meta.undoes),
            "actor": meta.actor,
            "reason": meta.reason,
        }
    )


def _meta_from(text: object) -> TransactionMeta:
    data = json.loads(str(text))
    return TransactionMeta(
        data["session_id"], data["kind"], tuple(data["undoes"]), data["actor"], data["reason"]
    )


# -- reads on a connection: each store read is one of these, or several on one connection


def _in_chunks(values: Sequence[str]) -> Iterator[tuple[list[str], str]]:
    """``values`` in chunks of at most ``_CHUNK``, each with its ``?`` placeholders."""
    items = list(values)
    for start in range(0, len(items), _CHUNK):
        chunk = items[start : start + _CHUNK]
        yield chunk, ",".join("?" * len(chunk))


def _get_many(conn: sqlite3.Connection, fact_ids: Sequence[str]) -> dict[str, FactRecord]:
    found: dict[str, FactRecord] = {}
    for chunk, marks in _in_chunks(fact_ids):
        for (record,) in conn.execute(
            f"SELECT record FROM lockstep_facts WHERE id IN ({marks})", chunk
        ):
            fact = FactRecord.from_json(record)
            found[fact.id] = fact
    return found


def _versions(conn: sqlite3.Connection, keys: Sequence[tuple[str, int]]) -> list[FactRecord]:
    found: list[FactRecord] = []
    pairs = list(keys)
    step = _CHUNK // 2  # two parameters a pair
    for start in range(0, len(pairs), step):
        chunk = pairs[start : start + step]
        values = ",".join(["(?, ?)"] * len(chunk))
        # A join, not "(id, version) IN (VALUES ...)": SQLite scans the whole table for
        # that form, and seeks the primary key for this one.
        rows = conn.execute(
            f"SELECT h.record FROM (VALUES {values}) AS k JOIN lockstep_fact_history h "
            "ON h.id = k.column1 AND h.version = k.column2",
            [param for pair in chunk for param in pair],
        ).fetchall()
        found += [FactRecord.from_json(row[0]) for row in rows]
    return found


def _written_by(conn: sqlite3.Connection, txids: Sequence[str]) -> list[FactRecord]:
    found: list[FactRecord] = []
    for chunk, marks in _in_chunks(txids):
        rows = conn.execute(
            f"SELECT record FROM lockstep_fact_history WHERE txid IN ({marks}) ORDER BY id, version",
            chunk,
        ).fetchall()
        found += [FactRecord.from_json(row[0]) for row in rows]
    return found


def _heads(
    conn: sqlite3.Connection, fact_ids: Sequence[str]
) -> dict[str, tuple[FactRecord | None, int]]:
    """:meth:`SQLiteStore.head` of many facts in one statement (each newest version found
    by one seek of the history's primary key, whatever the history's length)."""
    heads: dict[str, tuple[FactRecord | None, int]] = {}
    if not fact_ids:
        return heads
    for fact_id, record, newest in conn.execute(
        "SELECT k.value, (SELECT record FROM lockstep_facts WHERE id = k.value), "
        "(SELECT max(version) FROM lockstep_fact_history WHERE id = k.value) "
        "FROM json_each(?) AS k",
        (json.dumps(list(fact_ids)),),
    ):
        heads[str(fact_id)] = (
            (None if record is None else FactRecord.from_json(record)),
            int(newest or 0),
        )
    return heads
