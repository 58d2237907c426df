"""The default decision log: one SQLite file, WAL mode, ``synchronous=FULL``.

Theory of operation:

* Deciding is ``INSERT OR IGNORE`` followed by reading the row back, inside one
  ``BEGIN IMMEDIATE`` transaction: the first decision for a txid wins, whichever process
  made it, and every caller learns the winner. SQLite's file lock serialises processes.
* ``synchronous=FULL`` in WAL mode fsyncs the WAL at every commit, so a decision is
  durable when ``decide`` returns.
* Group commit: callers that arrive while a write is in flight queue up; the next writer
  takes the whole queue and commits it in one transaction, so concurrent transactions
  share one fsync.
* END marks are lazy: they are kept in memory and ride along with the next decision
  write, or are flushed without fsync (``synchronous=OFF`` for that write). Losing them in
  a crash only makes recovery re-drive an idempotent commit.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from coordinator.abc import Decision, DecisionRecord
from coordinator.errors import DecisionLogError
from coordinator.log._adapter import AsyncDecisionLogAdapter
from coordinator.log._base import DecisionLogBase, check_decisions

logger = logging.getLogger("coordinator")

if TYPE_CHECKING:
    from coordinator.daemon import Lease

SCHEMA_VERSION = 1
_CHUNK = 500  # stays under SQLite's limit on bound parameters
_LAZY_END_LIMIT = 256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lockstep_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS lockstep_decisions (
    txid TEXT PRIMARY KEY,
    decision TEXT NOT NULL CHECK (decision IN ('commit', 'abort')),
    participants TEXT NOT NULL,
    decided_at REAL NOT NULL,
    ended INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS lockstep_decisions_unended
    ON lockstep_decisions (decided_at) WHERE ended = 0;
"""


def sqlite_path(path: str | os.PathLike[str]) -> str:
    """``path`` as SQLite opens it now: absolute (``:memory:`` and ``""``, SQLite's
    private databases, stay themselves)."""
    text = os.fspath(path)
    return text if text in (":memory:", "") else os.path.abspath(text)


def connect(path: str, busy_timeout: float) -> sqlite3.Connection:
    """A connection to the database file ``path`` (created if missing), in autocommit
    mode (transactions are begun explicitly), for any thread.

    :raises sqlite3.OperationalError: it cannot be opened; when its directory does not
        exist, saying so (SQLite creates the file, not the directory, and says only
        "unable to open database file").
    """
    directory = os.path.dirname(path)
    if path not in (":memory:", "") and directory and not os.path.isdir(directory):
        raise sqlite3.OperationalError(
            f"unable to open database file: its directory {directory} does not exist "
            "(SQLite creates the file, not its directory)"
        )
    return sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )


def insert_decisions(
    conn: sqlite3.Connection,
    items: Sequence[tuple[str, Decision, Sequence[str]]],
    now: float | None = None,
) -> dict[str, Decision]:
    """Insert-if-absent decision records on ``conn``, inside the caller's transaction;
    the decision that holds for each txid (the first one recorded wins). Also used by a
    SQLite storage that keeps the log in its own file (the last-resource commit)."""
    decided_at = time.time() if now is None else now
    conn.executemany(
        "INSERT OR IGNORE INTO lockstep_decisions "
        "(txid, decision, participants, decided_at) VALUES (?, ?, ?, ?)",
        [(t, Decision(d).value, json.dumps(list(p)), decided_at) for t, d, p in items],
    )
    txids = [txid for txid, _, _ in items]
    winners: dict[str, Decision] = {}
    for start in range(0, len(txids), _CHUNK):
        chunk = txids[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        for txid, decision in conn.execute(
            f"SELECT txid, decision FROM lockstep_decisions WHERE txid IN ({marks})", chunk
        ):
            winners[txid] = Decision(decision)
    return winners


@dataclass
class _Request:
    items: Sequence[tuple[str, Decision, Sequence[str]]]
    result: dict[str, Decision] = field(default_factory=dict)
    error: BaseException | None = None
    done: bool = False


class SQLiteDecisionLog(DecisionLogBase):
    """Decide-once decision records in a SQLite file; thread- and process-safe.

    :param path: the database file (created if missing; its directory must exist).
    :param group_commit: let concurrent decisions share one fsync.
    :param busy_timeout: seconds to wait for another process's write lock.
    :raises DecisionLogError: the file cannot be opened or has a newer schema.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, group_commit: bool = True, busy_timeout: float = 30.0
    ) -> None:
        # Absolute, as the connection opened now: later uses of the path (the lease file,
        # comparing files) mean this file after a change of the working directory too.
        self.path = sqlite_path(path)
        self.group_commit = group_commit
        self.flushes = 0
        """Forced write transactions so far (a measure of group commit)."""
        self._conn_lock = threading.RLock()
        self._cond = threading.Condition()
        self._queue: list[_Request] = []
        self._flushing = False
        self._lazy_ends: set[str] = set()
        self._closed = False
        try:
            self._conn = connect(self.path, busy_timeout)
            try:
                self._set_up()
            except BaseException:
                self._conn.close()  # a refused file is let go, not held until collected
                raise
        except sqlite3.Error as exc:
            raise DecisionLogError(f"cannot open decision log {self.path}: {exc}") from exc

    def _set_up(self) -> None:
        """WAL and full sync on the new connection, the tables, the schema version checked."""
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        with self._transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._conn.execute(statement)
            row = self._conn.execute(
                "SELECT value FROM lockstep_meta WHERE key = 'schema_version'"
            ).fetchone()
            if row is None:
                self._conn.execute(
                    "INSERT INTO lockstep_meta VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif int(row[0]) > SCHEMA_VERSION:
                raise DecisionLogError(
                    f"decision log {self.path} has schema {row[0]}; this version of "
                    f"Lockstep reads schema {SCHEMA_VERSION}"
                )

    # -- deciding -----------------------------------------------------------------------

    def decide_many(
        self, decisions: Sequence[tuple[str, Decision, Sequence[str]]]
    ) -> dict[str, Decision]:
        """Insert-if-absent several decisions in one forced write; return the winners."""
        check_decisions(decisions)
        request = _Request(decisions)
        if not self.group_commit:
            with self._conn_lock:
                self._write([request])
        else:
            self._submit(request)
        if request.error is not None:
            raise request.error
        return request.result

    def _submit(self, request: _Request) -> None:
        with self._cond:
            self._queue.append(request)
            while not request.done:
                if self._flushing:
                    self._cond.wait()
                    continue
                # Become the leader: write everything queued so far in one transaction.
                self._flushing = True
                batch, self._queue = self._queue, []
                self._cond.release()
                try:
                    with self._conn_lock:
                        self._write(batch)
                finally:
                    self._cond.acquire()
                    self._flushing = False
                    for queued in batch:
                        queued.done = True
                    self._cond.notify_all()

    def _write(self, batch: list[_Request]) -> None:
        now = time.time()
        try:
            self._check_open()
            with self._transaction():
                items = [item for request in batch for item in request.items]
                winners = insert_decisions(self._conn, items, now)
                self._mark_ended(self._lazy_ends)
            self._lazy_ends.clear()
            self.flushes += 1
        except BaseException as exc:
            error = exc if isinstance(exc, DecisionLogError) else _wrap(exc, self.path)
            for request in batch:
                request.error = error
            if not isinstance(exc, Exception):
                raise
            return
        for request in batch:
            request.result = {txid: winners[txid] for txid, _, _ in request.items}

    # -- reading ------------------------------------------------------------------------

    def records(self, txids: Iterable[str]) -> dict[str, DecisionRecord]:
        """The records of those ``txids`` that have one."""
        wanted = list(txids)
        found: dict[str, DecisionRecord] = {}
        with self._conn_lock, _translated(self.path):
            self._check_open()
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                for row in self._conn.execute(
                    "SELECT txid, decision, participants, decided_at, ended "
                    f"FROM lockstep_decisions WHERE txid IN ({marks})",
                    chunk,
                ):
                    found[row[0]] = _record(row, row[0] in self._lazy_ends)
        return found

    def unended(self) -> list[DecisionRecord]:
        """Every record without END (oldest first)."""
        with self._conn_lock, _translated(self.path):
            self._check_open()
            rows = self._conn.execute(
                "SELECT txid, decision, participants, decided_at, ended "
                "FROM lockstep_decisions WHERE ended = 0 ORDER BY decided_at"
            ).fetchall()
            return [_record(row) for row in rows if row[0] not in self._lazy_ends]

    # -- END ----------------------------------------------------------------------------

    def end(self, txids: Iterable[str]) -> None:
        """Mark transactions finished, lazily (no fsync; may be lost in a crash)."""
        with self._conn_lock:
            self._lazy_ends.update(txids)
            if len(self._lazy_ends) >= _LAZY_END_LIMIT:
                self._flush_ends()

    def _flush_ends(self) -> None:
        if not self._lazy_ends or self._closed:
            return
        with _translated(self.path):
            self._conn.execute("PRAGMA synchronous=OFF")
            try:
                with self._transaction():
                    self._mark_ended(self._lazy_ends)
            finally:
                self._conn.execute("PRAGMA synchronous=FULL")
        self._lazy_ends.clear()

    def _mark_ended(self, txids: Iterable[str]) -> None:
        ids = list(txids)
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            self._conn.execute(
                f"UPDATE lockstep_decisions SET ended = 1 WHERE txid IN ({marks})", chunk
            )

    def lease(self) -> AbstractContextManager[Lease]:
        """The recovery daemon's lease on this log: a ``flock`` on ``<path>.lease``."""
        from coordinator.daemon import file_lease

        return file_lease(self.path + ".lease")

    def close(self) -> None:
        """Flush pending END marks and close the file. Idempotent.

        END marks only spare recovery a look (see :meth:`end`): if they cannot be written
        (a full disk, say), that is logged and the file is closed all the same."""
        with self._conn_lock:
            if self._closed:
                return
            try:
                self._flush_ends()
            except DecisionLogError:
                logger.warning(
                    "could not record END for %d transactions in %s at close; recovery "
                    "will finish them again, which changes nothing",
                    len(self._lazy_ends),
                    self.path,
                    exc_info=True,
                )
            finally:
                self._closed = True
                self._conn.close()

    # -- helpers ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise DecisionLogError(f"decision log {self.path} is closed")

    def _transaction(self) -> WriteTransaction:
        return WriteTransaction(self._conn)


class WriteTransaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` on ``conn``; ``ROLLBACK`` on any exception.

    The connection never stays inside a transaction, where it would hold the file's write
    lock and show its uncommitted rows to reads on it: whatever is raised while one is
    open rolls it back, a failed ``COMMIT`` included, and so does a ``KeyboardInterrupt``
    delivered the moment ``BEGIN`` returns. One left open all the same (an exception
    between ``__enter__`` returning and the ``with`` block) is rolled back when the
    connection is next used (:func:`settle`).
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        settle(self._conn)
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            settle(self._conn)
            raise

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            settle(self._conn)
            return
        try:
            self._conn.execute("COMMIT")
        except BaseException:
            settle(self._conn)
            raise


def settle(conn: sqlite3.Connection) -> None:
    """Roll back the transaction an interrupted caller left open on ``conn``, if any (the
    caller holds the connection: nothing else can have one open)."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


@contextmanager
def _translated(path: str) -> Iterator[None]:
    """Turn sqlite3 errors into :class:`DecisionLogError` (cause chained)."""
    try:
        yield
    except sqlite3.Error as exc:
        raise _wrap(exc, path) from exc


def _wrap(exc: BaseException, path: str) -> DecisionLogError:
    err = DecisionLogError(f"decision log {path} failed: {exc}")
    err.__cause__ = exc
    return err


def _record(row: tuple[str, str, str, float, int], lazily_ended: bool = False) -> DecisionRecord:
    txid, decision, participants, decided_at, ended = row
    return DecisionRecord(
        txid,
        Decision(decision),
        tuple(json.loads(participants)),
        decided_at,
        bool(ended) or lazily_ended,
    )


class AsyncSQLiteDecisionLog(AsyncDecisionLogAdapter):
    """:class:`SQLiteDecisionLog` with an async face (calls run on worker threads)."""

    def __init__(
        self, path: str | os.PathLike[str], *, group_commit: bool = True, busy_timeout: float = 30.0
    ) -> None:
        super().__init__(
            SQLiteDecisionLog(path, group_commit=group_commit, busy_timeout=busy_timeout)
        )
