"""A decision log in PostgreSQL, shared by every agent process and host that commits.

Deciding is ``INSERT ... ON CONFLICT (txid) DO NOTHING`` then reading the row back: the
first decision for a txid wins, whichever process made it, and every caller learns the
winner. Postgres commits (and fsyncs, with ``synchronous_commit=on``) before replying, so
a decision is durable when ``decide`` returns; concurrent decisions share WAL flushes
through Postgres's own group commit. END marks are written with
``synchronous_commit=off``: losing one only makes recovery re-drive an idempotent commit.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from coordinator.abc import Decision, DecisionRecord
from coordinator.errors import DecisionLogError, UsageError
from coordinator.log import AsyncDecisionLogAdapter
from participants.postgres._schema import DECISIONS_SCHEMA


class PostgresDecisionLog:
    """Decide-once decision records in a Postgres table; thread- and process-safe.

    :param conninfo: libpq connection string or ``postgresql://`` URL.
    :param connect_timeout: seconds to reach the server before a ``DecisionLogError``.
    """

    def __init__(
        self, conninfo: str, *, connect_timeout: float = 5.0, max_connections: int = 8
    ) -> None:
        self._pool = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=max_connections,
            kwargs={"connect_timeout": max(1, int(connect_timeout))},
            timeout=connect_timeout,
            open=False,
            check=ConnectionPool.check_connection,
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except Exception as exc:
            raise DecisionLogError(
                f"cannot reach the Postgres decision log within {connect_timeout} s: {exc}"
            ) from exc
        with self._connection() as conn:
            present = conn.execute("SELECT to_regclass('lockstep_decisions_unended')").fetchone()
            if present is None or present[0] is None:
                conn.execute("SELECT pg_advisory_xact_lock(4242424242)")
                for statement in DECISIONS_SCHEMA:
                    conn.execute(statement)

    def decide(self, txid: str, decision: Decision, participants: Sequence[str]) -> Decision:
        return self.decide_many([(txid, decision, participants)])[txid]

    def decide_many(
        self, decisions: Sequence[tuple[str, Decision, Sequence[str]]]
    ) -> dict[str, Decision]:
        for txid, decision, _ in decisions:
            if not isinstance(txid, str) or decision not in ("commit", "abort"):
                raise UsageError(f"bad decision {decision!r} for txid {txid!r}")
        now = time.time()
        with self._connection() as conn:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO lockstep_decisions (txid, decision, participants, decided_at) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT (txid) DO NOTHING",
                    [(t, Decision(d).value, Jsonb(list(p)), now) for t, d, p in decisions],
                )
            rows = conn.execute(
                "SELECT txid, decision FROM lockstep_decisions WHERE txid = ANY(%s)",
                ([t for t, _, _ in decisions],),
            ).fetchall()
        return {txid: Decision(decision) for txid, decision in rows}

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
        with self._connection() as conn:
            conn.execute("SET LOCAL synchronous_commit = off")  # lazy: never forced
            conn.execute("UPDATE lockstep_decisions SET ended = true WHERE txid = ANY(%s)", (ids,))

    def close(self) -> None:
        self._pool.close()

    def _connection(self) -> Any:
        return _Translated(self._pool)


class _Translated:
    """A pooled connection in a transaction; psycopg errors become DecisionLogError."""

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


def _record(row: tuple[Any, ...]) -> DecisionRecord:
    txid, decision, participants, decided_at, ended = row
    return DecisionRecord(txid, Decision(decision), tuple(participants), decided_at, bool(ended))


class AsyncPostgresDecisionLog(AsyncDecisionLogAdapter):
    """:class:`PostgresDecisionLog` with an async face (calls run on worker threads)."""

    def __init__(self, conninfo: str, *, connect_timeout: float = 5.0) -> None:
        super().__init__(PostgresDecisionLog(conninfo, connect_timeout=connect_timeout))
