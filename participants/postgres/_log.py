"""A decision log in PostgreSQL, shared by every agent process and host that commits.

Deciding is ``INSERT ... ON CONFLICT (txid) DO NOTHING`` then reading the row back: the
first decision for a txid wins, whichever process made it, and every caller learns the
winner. Postgres commits (and fsyncs, with ``synchronous_commit=on``) before replying, so
a decision is durable when ``decide`` returns; concurrent decisions share WAL flushes
through Postgres's own group commit. END marks are written with
``synchronous_commit=off``: losing one only makes recovery re-drive an idempotent commit.

Each call is one round trip: the pool's connections are in autocommit, so a lone read is
its own transaction, and a write sends ``BEGIN``, its statements and ``COMMIT`` together
(psycopg's pipeline mode), where a connection that opens its transactions itself waits
for each of them apart (an END took four round trips, a decision four).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from coordinator.abc import Decision, DecisionRecord
from coordinator.errors import DecisionLogError
from coordinator.log import AsyncDecisionLogAdapter
from coordinator.log._base import DecisionLogBase, check_decisions
from participants.postgres._connections import ANSWER_TIMEOUT, BoundedConnection, idle_check
from participants.postgres._schema import DECISIONS_SCHEMA
from participants.postgres._sync.pipeline import Statement, send

logger = logging.getLogger("participants.postgres")

#: The advisory-lock key of the recovery daemon's lease (one per database).
DAEMON_LEASE_KEY = 0x10C57E9  # "lockstep"-ish; any constant unique to this use
INSERT_DECISION = (
    "INSERT INTO lockstep_decisions (txid, decision, participants, decided_at) "
    "VALUES (%s, %s, %s, %s) ON CONFLICT (txid) DO NOTHING"
)


class PostgresDecisionLog(DecisionLogBase):
    """Decide-once decision records in a Postgres table; thread- and process-safe.

    :param conninfo: libpq connection string or ``postgresql://`` URL.
    :param connect_timeout: seconds to reach the server before a ``DecisionLogError``.
    :param answer_timeout: seconds any one statement may wait for the server's answer
        before a ``DecisionLogError`` (see ``PostgresStorage``).
    """

    def __init__(
        self,
        conninfo: str,
        *,
        connect_timeout: float = 5.0,
        max_connections: int = 8,
        answer_timeout: float = ANSWER_TIMEOUT,
    ) -> None:
        self.conninfo = conninfo
        self._answer_timeout = answer_timeout
        self._pool = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=max_connections,
            kwargs={"connect_timeout": max(1, int(connect_timeout)), "autocommit": True},
            timeout=connect_timeout,
            open=False,
            check=idle_check,
            connection_class=BoundedConnection,
            configure=self._bound,
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except Exception as exc:
            raise DecisionLogError(
                f"cannot reach the Postgres decision log within {connect_timeout} s: {exc}"
            ) from exc
        self._conninfo = conninfo
        self._connect_timeout = connect_timeout
        with self._connection() as conn:
            present = conn.execute("SELECT to_regclass('lockstep_decisions_unended')").fetchone()
        if present is None or present[0] is None:
            lock: Statement = ("SELECT pg_advisory_xact_lock(4242424242)", None)
            self._transaction(lock, *((statement, None) for statement in DECISIONS_SCHEMA))

    def decide_many(
        self, decisions: Sequence[tuple[str, Decision, Sequence[str]]]
    ) -> dict[str, Decision]:
        check_decisions(decisions)
        now = time.time()
        rows = [(t, Decision(d).value, Jsonb(list(p)), now) for t, d, p in decisions]
        _, winners = self._transaction(
            (INSERT_DECISION, rows),
            (
                "SELECT txid, decision FROM lockstep_decisions WHERE txid = ANY(%s)",
                ([t for t, _, _ in decisions],),
            ),
        )
        return {txid: Decision(decision) for txid, decision in winners.fetchall()}

    def records(self, txids: Iterable[str]) -> dict[str, DecisionRecord]:
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT txid, decision, participants, decided_at, ended FROM lockstep_decisions "
                "WHERE txid = ANY(%s)",
                (list(txids),),
            ).fetchall()
        return {r[0]: _record(r) for r in rows}

    def unended(self) -> list[DecisionRecord]:
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT txid, decision, participants, decided_at, ended FROM lockstep_decisions "
                "WHERE NOT ended ORDER BY decided_at"
            ).fetchall()
        return [_record(r) for r in rows]

    def end(self, txids: Iterable[str]) -> None:
        ids = list(txids)
        if not ids:
            return
        self._transaction(
            ("SET LOCAL synchronous_commit = off", None),  # lazy: never forced
            ("UPDATE lockstep_decisions SET ended = true WHERE txid = ANY(%s)", (ids,)),
        )

    def close(self) -> None:
        self._pool.close()

    @contextlib.contextmanager
    def lease(self) -> Iterator[AdvisoryLease]:
        """The recovery daemon's lease on this log: a session-level advisory lock on its
        own connection, released when the block ends or the process dies."""
        lease = AdvisoryLease(self._conninfo, self._connect_timeout, self._answer_timeout)
        try:
            lease.check()
            yield lease
        finally:
            lease.release()

    def _bound(self, conn: BoundedConnection) -> None:
        conn.answer_timeout = self._answer_timeout

    def _connection(self) -> Any:
        """A pooled connection in autocommit: each statement its own transaction."""
        return _Translated(self._pool)

    def _transaction(self, *statements: Statement) -> list[psycopg.Cursor[Any]]:
        """``statements`` in one transaction and one round trip (``BEGIN``, the statements
        and ``COMMIT`` in pipeline mode, where psycopg's own transaction blocks wait for
        their ``BEGIN`` and ``COMMIT`` apart); their cursors, rows fetched."""
        with self._connection() as conn:
            # A failed statement leaves the rest skipped, COMMIT too; the pool's connection
            # block rolls the transaction back as the error leaves it.
            return send(conn, ("BEGIN", None), *statements, ("COMMIT", None))[1:-1]


class _Translated:
    """A pooled connection; psycopg errors become DecisionLogError."""

    def __init__(self, pool: ConnectionPool[Any]) -> None:
        self._pool = pool
        self._context: Any = None

    def __enter__(self) -> psycopg.Connection[Any]:
        try:
            self._context = self._pool.connection()
            conn: psycopg.Connection[Any] = self._context.__enter__()
            return conn
        except Exception as exc:
            raise DecisionLogError(f"Postgres decision log unavailable: {exc}") from exc

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            self._context.__exit__(exc_type, exc, tb)
        except psycopg.Error as error:
            raise DecisionLogError(f"Postgres decision log failed: {error}") from error
        if isinstance(exc, psycopg.Error):
            raise DecisionLogError(f"Postgres decision log failed: {exc}") from exc


class AdvisoryLease:
    """``pg_try_advisory_lock`` on a dedicated connection; ``check`` re-takes a lost one."""

    def __init__(self, conninfo: str, connect_timeout: float, answer_timeout: float) -> None:
        self._conninfo = conninfo
        self._timeout = max(1, int(connect_timeout))
        self._answer_timeout = answer_timeout
        self._conn: BoundedConnection | None = None
        self.held = False

    def check(self) -> bool:
        """True while this process holds the lease (taking it when it is free)."""
        try:
            if self._conn is not None and not self._conn.closed:
                self._conn.execute("SELECT 1")
                if self.held:
                    return True
            else:
                self.held = False
                self._conn = BoundedConnection.connect(
                    self._conninfo, autocommit=True, connect_timeout=self._timeout
                )
                self._conn.answer_timeout = self._answer_timeout
            row = self._conn.execute(
                "SELECT pg_try_advisory_lock(%s)", (DAEMON_LEASE_KEY,)
            ).fetchone()
            self.held = bool(row and row[0])
        except psycopg.Error as exc:
            logger.warning("recovery lease connection failed: %s", exc)
            self.release()
        return self.held

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()  # a session-level advisory lock ends with its session
        self._conn = None
        self.held = False


def _record(row: tuple[Any, ...]) -> DecisionRecord:
    txid, decision, participants, decided_at, ended = row
    return DecisionRecord(txid, Decision(decision), tuple(participants), decided_at, bool(ended))


class AsyncPostgresDecisionLog(AsyncDecisionLogAdapter):
    """:class:`PostgresDecisionLog` with an async face (calls run on worker threads)."""

    def __init__(
        self, conninfo: str, *, connect_timeout: float = 5.0, answer_timeout: float = ANSWER_TIMEOUT
    ) -> None:
        super().__init__(
            PostgresDecisionLog(
                conninfo, connect_timeout=connect_timeout, answer_timeout=answer_timeout
            )
        )
