"""The Postgres participant (source of the generated sync twin).

Theory of operation:

* ``prepare`` opens a two-phase branch (psycopg's ``tpc_begin`` with XA id
  ``(FORMAT_ID, txid, participant name)``), takes the facts' row locks with ``NOWAIT``,
  checks versions and singleton claims, writes the new rows, a marker row and the caller's
  own SQL, and runs ``PREPARE TRANSACTION``. The branch then survives a crash of Postgres
  and of every client, holding its row locks until it is committed or rolled back.
* A concurrent writer of the same fact finds its rows locked (``NOWAIT``, or
  ``lock_timeout`` on an index) and is refused with ``VersionConflict`` at once.
* ``commit``/``abort`` run ``COMMIT PREPARED``/``ROLLBACK PREPARED`` from any connection;
  "no such prepared transaction" means already finished. An abort then writes an
  ``aborted`` marker, so a prepare of the same txid arriving later fails on the marker's
  primary key (the fence).
* ``recover`` lists ``pg_prepared_xacts`` entries with our format id, branch qualifier and
  database: other applications' prepared transactions are never touched.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import AsyncConnection, AsyncCursor, errors, pq
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from coordinator._acompat import ALock, ashielded, asleep
from coordinator.abc import AsyncDecisionLog, TransactionEntry, UndoReads, Vote
from coordinator.errors import (
    ConfigurationError,
    LockstepError,
    ParticipantError,
    PrepareTimeout,
    TransactionAborted,
    TransactionInDoubt,
    UsageError,
    VersionConflict,
)
from coordinator.ids import check_participant_name
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
    already_aborted,
    claim_conflict,
    facts_and_sql,
    history_conflict,
    statement_failed,
    transaction_meta,
    version_conflict,
)
from participants.postgres import _schema as sql
from participants.postgres import _your_sql as your_sql
from participants.postgres._async.pipeline import Statement, send
from participants.postgres._connections import (
    ANSWER_TIMEOUT,
    AsyncBoundedConnection,
    aidle_check,
    no_answer_in,
)
from participants.postgres._log import AsyncPostgresDecisionLog, PostgresDecisionLog

logger = logging.getLogger("participants.postgres")
#: The history's primary key (id, version): a version may be written once.
HISTORY_KEY = "lockstep_fact_history_pkey"


class AsyncPostgresStorage:
    """Facts as JSONB rows in PostgreSQL, committed with prepared transactions.

    Needs ``max_prepared_transactions > 0`` on the server (checked on first use).

    :param conninfo: a libpq connection string or ``postgresql://`` URL.
    :param name: the participant name (the XA branch qualifier; keep it stable).
    :param connect_timeout: seconds to reach the server before a ``ParticipantError``.
    :param lock_timeout_ms: how long a writer waits for a row another branch holds.
    :param max_connections: size of the connection pool.
    :param answer_timeout: seconds any one exchange with the server (a statement, a
        pipeline, a COMMIT) may wait for its answer; then the connection is closed and
        the call fails, rather than wait for ever on a server that stopped answering or a
        connection black-holed on the way. A commit whose statements go unanswered
        raises ``PrepareTimeout`` (nothing was committed); one whose commit point (the
        local COMMIT of a one-phase or last-resource commit) goes unanswered raises
        ``TransactionInDoubt``, and recovery decides it from the log in this database; a
        read raises ``ParticipantError``.
    """

    runs_sql = True
    """``Execute`` writes (``tx.execute()``) run inside its branch."""

    def __init__(
        self,
        conninfo: str,
        *,
        name: str = "postgres",
        connect_timeout: float = 5.0,
        lock_timeout_ms: int = 100,
        max_connections: int = 8,
        answer_timeout: float = ANSWER_TIMEOUT,
    ) -> None:
        self._name = check_participant_name(name)
        self._answer_timeout = answer_timeout
        self._conninfo = conninfo
        self._connect_timeout = connect_timeout
        self._lock_timeout_ms = int(lock_timeout_ms)
        self._pool = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=max_connections,
            kwargs={"connect_timeout": max(1, int(connect_timeout))},
            timeout=connect_timeout,
            open=False,
            check=aidle_check,
            connection_class=AsyncBoundedConnection,
            configure=self._bound,
        )
        self._ready = False
        self._opening = ALock()  # concurrent first calls open the pool once
        self._database = ""

    @property
    def name(self) -> str:
        return self._name

    def default_decision_log(self) -> AsyncDecisionLog:
        """A :class:`PostgresDecisionLog` in this same database, shared by every process
        that uses it; with it this storage commits last, together with the decision."""
        return AsyncPostgresDecisionLog(
            self._conninfo,
            connect_timeout=self._connect_timeout,
            answer_timeout=self._answer_timeout,
        )

    def holds_decision_log(self, log: object) -> bool:
        """True when ``log`` keeps its records in this storage's own database."""
        inner = getattr(log, "sync", log)  # an async log wraps the synchronous one
        return isinstance(inner, PostgresDecisionLog) and inner.conninfo == self._conninfo

    # -- the participant contract -------------------------------------------------------

    async def prepare(self, txid: str, writes: Sequence[Write]) -> Vote:
        facts, statements = facts_and_sql(self._name, writes)
        meta = transaction_meta(writes)
        await self._open()
        # Not a pooled connection: psycopg keeps a connection in its two-phase state after
        # PREPARE (only the same connection's tpc_commit/tpc_rollback clears it), so it
        # cannot be reused. The prepare gets a connection of its own and closes it; the
        # branch lives on in the server.
        conn = await self._connect()
        try:
            xid = conn.xid(sql.FORMAT_ID, txid, self._name)
            try:
                await conn.tpc_begin(xid)
                await self._stage(conn, txid, facts, statements, meta)
                await conn.tpc_prepare()
            except LockstepError:
                await _rollback_quietly(conn)
                raise
            except psycopg.Error as exc:
                await _rollback_quietly(conn)
                if await self._is_prepared(txid):
                    return Vote.YES  # a retried prepare: the first one holds the branch
                raise self._refusal(txid, exc) from exc
        finally:
            await conn.close()
        return Vote.YES

    async def commit(self, txid: str) -> None:
        await self._open()
        async with self._pool.connection() as conn:
            try:
                await conn.tpc_commit(conn.xid(sql.FORMAT_ID, txid, self._name))
            except errors.UndefinedObject:
                await conn.rollback()  # already committed (or never prepared: the log knows)
            except psycopg.Error as exc:
                raise self._error("commit", txid, exc) from exc

    async def abort(self, txid: str) -> None:
        await self._open()
        for _ in range(20):
            async with self._pool.connection() as conn:
                try:
                    await conn.tpc_rollback(conn.xid(sql.FORMAT_ID, txid, self._name))
                except errors.UndefinedObject:
                    await conn.rollback()
                except psycopg.Error as exc:
                    raise self._error("abort", txid, exc) from exc
                try:
                    await conn.execute(f"SET lock_timeout = '{self._lock_timeout_ms}ms'")
                    await conn.execute(
                        "INSERT INTO lockstep_markers VALUES (%s, 'aborted', %s) "
                        "ON CONFLICT (txid) DO NOTHING",
                        (txid, time.time()),
                    )
                    await conn.commit()
                    return
                except errors.LockNotAvailable:
                    # A prepare of this txid is running right now: roll it back once it
                    # has prepared, then fence.
                    await conn.rollback()
                except psycopg.Error as exc:
                    raise self._error("abort", txid, exc) from exc
            await asleep(0.05)
        raise ParticipantError(
            "could not fence the transaction: its prepare keeps running",
            txid=txid,
            participant=self._name,
        )

    async def recover(self) -> list[str]:
        await self._open()
        async with self._pool.connection() as conn:
            try:
                found = await conn.tpc_recover()
                await conn.rollback()
            except psycopg.Error as exc:
                raise self._error("recover", None, exc) from exc
        return sorted(
            x.gtrid
            for x in found
            if x.format_id == sql.FORMAT_ID
            and x.bqual == self._name
            and x.database == self._database
        )

    async def commit_one_phase(self, txid: str, writes: Sequence[Write]) -> None:
        await self._commit_locally(txid, writes, None)

    async def commit_with_decision(
        self, txid: str, writes: Sequence[Write], participants: Sequence[str]
    ) -> None:
        """The last-resource commit: these writes and the COMMIT decision, one transaction.

        Use it with a :class:`PostgresDecisionLog` on this same database. A recovery that
        fenced the txid first (its ABORT row exists) makes this raise
        ``TransactionAborted``; one racing this transaction waits on the decision row's
        lock and then obeys whichever insert won.
        """
        await self._commit_locally(txid, writes, participants)

    async def stage_with_decision(
        self, txid: str, writes: Sequence[Write], participants: Sequence[str]
    ) -> AsyncStagedPostgresCommit:
        """The last-resource commit, staged: these writes and the COMMIT decision written
        in one local transaction that stays open (holding its row locks and a pooled
        connection) until the returned handle commits or rolls it back. The coordinator
        stages it while the other participants prepare, and commits it once they all voted
        yes. A recovery deciding the same txid meanwhile waits on the decision row's lock.
        """
        await self._open()
        conn = await self._pool.getconn()
        try:
            await self._stage_locally(conn, txid, writes, participants)
        except BaseException:
            with ashielded():  # a cancelled stage still hands its connection back
                await _rollback_local(conn)
                await self._pool.putconn(conn)
            raise
        return AsyncStagedPostgresCommit(self, conn, txid, tuple(participants))

    async def _commit_locally(
        self, txid: str, writes: Sequence[Write], decision_for: Sequence[str] | None
    ) -> None:
        """Stage and commit in one local transaction (with the COMMIT decision, if asked)."""
        await self._open()
        async with self._pool.connection() as conn:
            await self._stage_locally(conn, txid, writes, decision_for)
            await self._commit_staged(conn, txid)

    async def _stage_locally(
        self,
        conn: AsyncConnection[Any],
        txid: str,
        writes: Sequence[Write],
        decision_for: Sequence[str] | None,
    ) -> None:
        """Check and write ``writes`` (and the COMMIT decision, if asked) in ``conn``'s
        transaction, left open; on a refusal, roll it back and raise."""
        facts, statements = facts_and_sql(self._name, writes)
        meta = transaction_meta(writes)
        try:
            await self._stage(conn, txid, facts, statements, meta, decision_for)
        except LockstepError:
            await _rollback_local(conn)
            raise
        except psycopg.Error as exc:
            await _rollback_local(conn)  # the connection may be gone: then so is the work
            raise self._refusal(txid, exc) from exc

    async def _commit_staged(self, conn: AsyncConnection[Any], txid: str) -> None:
        try:
            await conn.commit()
        except psycopg.OperationalError as exc:
            raise TransactionInDoubt(
                f"the connection to Postgres failed during COMMIT: {exc}",
                txid=txid,
                participant=self._name,
            ) from exc

    # -- reads (committed data only) ----------------------------------------------------

    async def get(self, fact_id: str) -> FactRecord | None:
        rows = await self._read("SELECT record FROM lockstep_facts WHERE id = %s", (fact_id,))
        return sql.record_of(rows[0][0]) if rows else None

    async def head(self, fact_id: str) -> tuple[FactRecord | None, int]:
        rows = await self._read(sql.SELECT_HEAD, {"id": fact_id})
        record, newest = rows[0]
        return (None if record is None else sql.record_of(record)), int(newest or 0)

    async def get_many(self, fact_ids: Sequence[str]) -> dict[str, FactRecord]:
        rows = await self._read(
            "SELECT record FROM lockstep_facts WHERE id = ANY(%s)", (list(fact_ids),)
        )
        facts = [sql.record_of(row[0]) for row in rows]
        return {f.id: f for f in facts}

    async def query(
        self,
        typename: str | None,
        filters: Mapping[str, JSONValue],
        session_id: str | None,
    ) -> list[FactRecord]:
        statement, params = sql.query_sql(typename, filters, session_id)
        return [sql.record_of(row[0]) for row in await self._read(statement, params)]

    async def history(self, fact_id: str) -> list[FactRecord]:
        rows = await self._read(
            "SELECT record FROM lockstep_fact_history WHERE id = %s ORDER BY version",
            (fact_id,),
        )
        return [sql.record_of(row[0]) for row in rows]

    async def versions(self, keys: Sequence[tuple[str, int]]) -> list[FactRecord]:
        pairs = list(keys)
        rows = await self._read(
            "SELECT h.record FROM lockstep_fact_history h "
            "JOIN unnest(%s::text[], %s::integer[]) AS k(id, version) USING (id, version)",
            ([fact_id for fact_id, _ in pairs], [version for _, version in pairs]),
        )
        return [sql.record_of(row[0]) for row in rows]

    async def written_by(self, txids: Sequence[str]) -> list[FactRecord]:
        rows = await self._read(
            "SELECT record FROM lockstep_fact_history WHERE txid = ANY(%s) ORDER BY id, version",
            (list(txids),),
        )
        return [sql.record_of(row[0]) for row in rows]

    async def undo_reads(self, txids: Sequence[str]) -> UndoReads:
        before: dict[str, FactRecord] = {}
        heads: dict[str, tuple[FactRecord | None, int]] = {}
        for part, fact_id, version, record in await self._read(
            sql.SELECT_UNDO_READS, (list(txids),)
        ):
            if part == "before":
                if record is not None:  # a history without that version: nothing to go back to
                    before[fact_id] = sql.record_of(record)
            else:
                heads[fact_id] = (None if record is None else sql.record_of(record)), int(version)
        return UndoReads(before, heads)

    async def transactions(self, session_id: str | None, limit: int) -> list[TransactionEntry]:
        if session_id is None:
            rows = await self._read(sql.SELECT_UNDOABLE, (limit,))
        else:
            rows = await self._read(sql.SELECT_UNDOABLE_IN_SESSION, (session_id, limit))
        return [
            TransactionEntry(r[0], r[1], r[2], r[3], tuple(r[4]), r[5], r[6], r[7], r[8])
            for r in rows
        ]

    async def all_facts(self) -> list[FactRecord]:
        rows = await self._read("SELECT record FROM lockstep_facts ORDER BY id", ())
        return [sql.record_of(row[0]) for row in rows]

    async def close(self) -> None:
        await self._pool.close()

    # -- internals ----------------------------------------------------------------------

    async def _connect(self) -> AsyncBoundedConnection:
        try:
            conn = await AsyncBoundedConnection.connect(
                self._conninfo, connect_timeout=max(1, int(self._connect_timeout))
            )
        except psycopg.Error as exc:
            raise self._error("connect", None, exc) from exc
        await self._bound(conn)
        return conn

    async def _bound(self, conn: AsyncBoundedConnection) -> None:
        conn.answer_timeout = self._answer_timeout

    async def _open(self) -> None:
        if self._ready:
            return
        async with self._opening:
            if not self._ready:
                await self._open_once()

    async def _open_once(self) -> None:
        try:
            await self._pool.open(wait=True, timeout=self._connect_timeout)
        except Exception as exc:
            raise ParticipantError(
                f"cannot reach Postgres within {self._connect_timeout} s: {exc}",
                participant=self._name,
            ) from exc
        async with self._pool.connection() as conn:
            try:
                # DDL on a table a prepared branch holds would wait for that branch, which
                # may wait for this very process's recovery: create only what is missing.
                row = await (await conn.execute(sql.SCHEMA_PRESENT)).fetchone()
                tables, later_indexes = row if row else (False, False)
                if not tables:
                    await conn.execute("SET LOCAL lock_timeout = '10s'")
                    await conn.execute("SELECT pg_advisory_xact_lock(4242424242)")
                    for statement in sql.SCHEMA:  # the later indexes included
                        await conn.execute(statement)
                    later_indexes = True
                prepared = await (await conn.execute("SHOW max_prepared_transactions")).fetchone()
                fsync = await (await conn.execute("SHOW fsync")).fetchone()
                await conn.commit()
            except psycopg.Error as exc:
                raise self._error("open", None, exc) from exc
            self._database = conn.info.dbname
            if not later_indexes:
                await self._add_later_indexes(conn)
        if prepared is None or int(prepared[0]) <= 0:
            raise ConfigurationError(
                "Postgres has max_prepared_transactions = 0, so it cannot take part in "
                "two-phase commits: set max_prepared_transactions > 0 (e.g. 64) in "
                "postgresql.conf and restart the server",
                participant=self._name,
            )
        if fsync is not None and fsync[0] != "on":
            logger.warning("Postgres runs with fsync=%s: a crash can lose commits (G2)", fsync[0])
        self._ready = True

    async def _add_later_indexes(self, conn: AsyncConnection[Any]) -> None:
        """Create the indexes a database made by an earlier release lacks, waiting at most
        two seconds for its tables: a prepared branch holds them until it is resolved,
        perhaps by this very process's recovery. The reads they speed up work without
        them, so a refusal (that wait, or a role that may not create indexes) is a
        warning, not a failed open."""
        try:
            await conn.execute("SET LOCAL lock_timeout = '2s'")
            await conn.execute("SELECT pg_advisory_xact_lock(4242424242)")
            for statement in sql.LATER_INDEXES:
                await conn.execute(statement)
            await conn.commit()
        except psycopg.Error as exc:
            with contextlib.suppress(psycopg.Error):
                await conn.rollback()
            held = isinstance(exc, errors.LockNotAvailable)
            logger.warning(
                "Postgres store %s: the transaction log's rollback indexes were not "
                "created (%s); rollbacks work without them, slower on a long log, and the "
                "next open tries again",
                self._database,
                "prepared branches hold lockstep_transactions" if held else exc,
            )

    async def _stage(
        self,
        conn: AsyncConnection[Any],
        txid: str,
        facts: Sequence[UpsertFact | DeleteFact],
        statements: Sequence[Execute],
        meta: TransactionMeta,
        decision_for: Sequence[str] | None = None,
    ) -> None:
        """Check and write the branch in ``conn``'s open transaction, in as few round
        trips as the checks allow (see :func:`send`): the row locks and versions; the
        singleton claims, if any; then every write, with the COMMIT decision when
        ``decision_for`` names the participants (the caller's own SQL, if any, between
        the facts' writes and the rest)."""
        now = time.time()
        ids = [w.fact_id for w in facts]
        # The marker goes first: a fenced (aborted) txid fails there, before any work.
        *_, locked = await send(
            conn,
            (f"SET LOCAL lock_timeout = '{self._lock_timeout_ms}ms'", None),
            ("INSERT INTO lockstep_markers VALUES (%s, 'committed', %s)", (txid, now)),
            (sql.SELECT_VERSIONS, (ids,)),
        )
        versions = dict(await locked.fetchall())
        for write in facts:
            actual = versions.get(write.fact_id, 0)
            if actual != write.expected_version:
                raise version_conflict(
                    self._name, txid, write.fact_id, write.expected_version, actual
                )
        upserts = [w for w in facts if isinstance(w, UpsertFact)]
        claims = await self._check_claims(conn, txid, upserts)
        gone = [w.fact_id for w in facts if isinstance(w, DeleteFact)]
        history = [(w.fact, False) for w in upserts] + [
            (w.tombstone, True) for w in facts if isinstance(w, DeleteFact) and w.tombstone
        ]
        rows = [(f.id, f.version, deleted, f.txid, f.to_json()) for f, deleted in history]
        # Each statement for all the facts at once: a transaction of thousands of facts
        # is not thousands of round trips.
        writes: list[Statement] = [
            ("DELETE FROM lockstep_claims WHERE fact_id = ANY(%s)", (ids,)),
            ("DELETE FROM lockstep_facts WHERE id = ANY(%s)", (gone,)) if gone else None,
            (sql.UPSERT_FACT, [sql.fact_row(w.fact) for w in upserts]),
            (sql.INSERT_HISTORY, rows),
            ("INSERT INTO lockstep_claims VALUES (%s, %s)", claims),
        ]
        ending: list[Statement] = [
            (sql.MARK_ROLLED_BACK, (txid, list(meta.undoes))) if meta.undoes else None,
            (
                sql.INSERT_TRANSACTION,
                (
                    txid,
                    meta.session_id,
                    meta.kind,
                    sql.undoes_json(meta.undoes),
                    now,
                    meta.actor,
                    meta.reason,
                ),
            ),
        ]
        if decision_for is not None:
            ending.append((sql.INSERT_COMMIT_DECISION, (txid, Jsonb(list(decision_for)), now)))
        if statements:  # the caller's SQL reports its own failures, after the facts'
            await self._send_writes(conn, txid, rows, writes)
            await self._run_your_sql(conn, txid, statements)
            sent = await send(conn, *ending)
        else:
            sent = await self._send_writes(conn, txid, rows, writes + ending)
        if decision_for is not None and await sent[-1].fetchone() is None:
            raise TransactionAborted(
                "recovery aborted this transaction before its COMMIT was recorded",
                txid=txid,
                participant=self._name,
            )

    async def _send_writes(
        self,
        conn: AsyncConnection[Any],
        txid: str,
        history: Sequence[tuple[Any, ...]],
        statements: Sequence[Statement],
    ) -> list[AsyncCursor[Any]]:
        """:func:`send` ``statements``, which write ``history``: a version already in a
        fact's history is a refusal that names it."""
        try:
            return await send(conn, *statements)
        except errors.UniqueViolation as exc:
            if exc.diag.constraint_name != HISTORY_KEY:
                raise
            fact_id, version = sql.clashing_history(exc, history)
            raise history_conflict(self._name, txid, fact_id, version) from exc

    async def _run_your_sql(
        self, conn: AsyncConnection[Any], txid: str, statements: Sequence[Execute]
    ) -> None:
        """Run the caller's statements in the branch (see ``_your_sql``)."""
        for i, statement in enumerate(statements):
            where = statement_failed(i, statements)
            why = your_sql.refusal(statement.sql)
            if why is not None:
                raise UsageError(f"{where}: it may not {why}", txid=txid, participant=self._name)
            try:
                async with conn.pipeline():  # the extended protocol: one statement a call
                    await conn.execute(statement.sql, statement.params)
            except (TypeError, ValueError) as exc:  # parameters that do not fit the SQL
                raise UsageError(f"{where}: {exc}", txid=txid, participant=self._name) from exc
            except psycopg.Error as exc:
                meaning = your_sql.failure(self._name, txid, where, exc)
                if meaning is None:
                    raise
                raise meaning from exc

    async def _check_claims(
        self, conn: AsyncConnection[Any], txid: str, upserts: Sequence[UpsertFact]
    ) -> list[tuple[str, str]]:
        """The ``(claim, fact_id)`` rows ``upserts`` take, once no other fact holds one
        (read with its row locked; ``fact_writes`` refused two upserts taking one)."""
        taken = {w.claim: w.fact_id for w in upserts if w.claim is not None}
        if taken:
            cursor = await conn.execute(sql.SELECT_CLAIMS, (list(taken),))
            for claim, owner in await cursor.fetchall():
                if owner != taken[claim]:
                    raise claim_conflict(self._name, txid, claim, owner)
        return list(taken.items())

    async def _is_prepared(self, txid: str) -> bool:
        return txid in await self.recover()

    async def _read(self, statement: str, params: Any) -> list[Any]:
        await self._open()
        try:  # a pool that cannot hand out a connection in time is a failed read too
            async with self._pool.connection() as conn:
                # One statement sees one snapshot either way; in autocommit it costs one
                # round trip instead of three (BEGIN, the query, ROLLBACK).
                await conn.set_autocommit(True)
                try:
                    cursor = await conn.execute(statement, params)
                    rows: list[Any] = await cursor.fetchall()
                    return rows
                finally:
                    if conn.info.transaction_status == pq.TransactionStatus.IDLE:
                        await conn.set_autocommit(False)
                    else:  # broken: it must never go back to the pool in autocommit
                        await conn.close()
        except psycopg.Error as exc:
            raise self._error("read", None, exc) from exc

    def _refusal(self, txid: str, exc: psycopg.Error) -> LockstepError:
        """Why Postgres refused a branch, in Lockstep's terms."""
        if (silent := no_answer_in(exc)) is not None:
            return PrepareTimeout(
                f"{silent}; nothing of the transaction was committed",
                txid=txid,
                participant=self._name,
            )
        if isinstance(exc, errors.LockNotAvailable):
            return VersionConflict(
                "a fact or singleton key is staged by another transaction that has not finished",
                txid=txid,
                participant=self._name,
            )
        if isinstance(exc, errors.UniqueViolation):
            if "lockstep_markers" in str(exc):
                return already_aborted(self._name, txid)
            return VersionConflict(
                f"another writer created the same fact or key first: {exc}",
                txid=txid,
                participant=self._name,
            )
        if isinstance(exc, psycopg.NotSupportedError):
            return ConfigurationError(
                "Postgres refused PREPARE TRANSACTION: set max_prepared_transactions > 0 "
                f"and restart the server ({exc})",
                txid=txid,
                participant=self._name,
            )
        if isinstance(exc, psycopg.OperationalError):
            return self._error("prepare", txid, exc)
        return TransactionAborted(
            f"Postgres refused the branch: {exc}", txid=txid, participant=self._name
        )

    def _error(self, action: str, txid: str | None, exc: Exception) -> ParticipantError:
        return ParticipantError(
            f"Postgres {action} failed: {exc}", txid=txid, participant=self._name
        )


class AsyncStagedPostgresCommit:
    """A last-resource transaction staged by the storage's ``stage_with_decision``: open on
    its own pooled connection until :meth:`commit` or :meth:`rollback` ends it."""

    def __init__(
        self,
        storage: AsyncPostgresStorage,
        conn: AsyncBoundedConnection,
        txid: str,
        participants: tuple[str, ...],
    ) -> None:
        self._storage = storage
        self._conn: AsyncBoundedConnection | None = conn
        self._txid = txid
        self._participants = participants

    async def commit(self, participants: Sequence[str]) -> None:
        """Commit (the commit point), first correcting the COMMIT record's participants
        if some of those it was staged with turned out to have nothing to commit."""
        conn = self._take()
        try:
            if tuple(participants) != self._participants:
                try:
                    await conn.execute(
                        sql.SET_DECISION_PARTICIPANTS,
                        (Jsonb(list(participants)), self._txid),
                    )
                except psycopg.Error as exc:
                    await _rollback_local(conn)
                    raise self._storage._refusal(self._txid, exc) from exc
            await self._storage._commit_staged(conn, self._txid)
        finally:
            with ashielded():
                await self._storage._pool.putconn(conn)

    async def rollback(self) -> None:
        conn = self._take()
        with ashielded():
            await _rollback_local(conn)
            await self._storage._pool.putconn(conn)

    def _take(self) -> AsyncBoundedConnection:
        conn, self._conn = self._conn, None
        if conn is None:
            raise UsageError(f"the staged commit of {self._txid} has already ended")
        return conn


async def _rollback_quietly(conn: AsyncConnection[Any]) -> None:
    """End a branch that failed before PREPARE (the server may have ended it already)."""
    try:
        await conn.tpc_rollback()
    except psycopg.Error:
        await _rollback_local(conn)


async def _rollback_local(conn: AsyncConnection[Any]) -> None:
    """Roll back a local transaction whose connection may be broken already (the server
    then rolls it back itself)."""
    try:
        await conn.rollback()
    except psycopg.Error:
        pass
