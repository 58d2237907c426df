"""The Postgres participant's tables and the SQL that is the same for sync and async."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from coordinator.filters import check_filters
from coordinator.records import FactRecord, JSONValue

FORMAT_ID = 0x4C6B
"""XA format id of every Lockstep branch: recovery touches only branches with it."""

#: Indexes added after the tables were first released. A new database gets them with the
#: tables; an existing one on open, unless it cannot (a prepared branch holds the table, or
#: the role does not own it): they only speed reads up, so the open then goes on without
#: them and tries again next time.
LATER_INDEXES = (
    # What a rollback may undo, newest first, without walking the whole log.
    """CREATE INDEX IF NOT EXISTS lockstep_transactions_undoable ON lockstep_transactions
        (seq) WHERE kind = 'write' AND rolled_back_by IS NULL""",
    """CREATE INDEX IF NOT EXISTS lockstep_transactions_undoable_session
        ON lockstep_transactions (session_id, seq)
        WHERE kind = 'write' AND rolled_back_by IS NULL""",
)

TABLES = (
    """CREATE TABLE IF NOT EXISTS lockstep_facts (
        id text PRIMARY KEY, type text NOT NULL, session_id text, version integer NOT NULL,
        ts double precision NOT NULL, record jsonb NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS lockstep_facts_type ON lockstep_facts (type)",
    "CREATE INDEX IF NOT EXISTS lockstep_facts_session ON lockstep_facts (session_id)",
    "CREATE INDEX IF NOT EXISTS lockstep_facts_record ON lockstep_facts USING gin (record)",
    """CREATE TABLE IF NOT EXISTS lockstep_fact_history (
        id text NOT NULL, version integer NOT NULL, deleted boolean NOT NULL, txid text,
        record jsonb NOT NULL, PRIMARY KEY (id, version))""",
    "CREATE INDEX IF NOT EXISTS lockstep_fact_history_txid ON lockstep_fact_history (txid)",
    """CREATE TABLE IF NOT EXISTS lockstep_transactions (
        seq bigserial PRIMARY KEY, txid text NOT NULL UNIQUE, session_id text,
        kind text NOT NULL, undoes jsonb NOT NULL, rolled_back_by text,
        committed_at double precision NOT NULL, actor text, reason text)""",
    *LATER_INDEXES,
    """CREATE TABLE IF NOT EXISTS lockstep_claims (
        claim text PRIMARY KEY, fact_id text NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS lockstep_claims_fact ON lockstep_claims (fact_id)",
    # One row per transaction this database took part in: written inside the prepared
    # branch ('committed' once it commits) or by an abort ('aborted', a fence).
    """CREATE TABLE IF NOT EXISTS lockstep_markers (
        txid text PRIMARY KEY, state text NOT NULL, at double precision NOT NULL)""",
)

DECISIONS_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS lockstep_decisions (
        txid text PRIMARY KEY,
        decision text NOT NULL CHECK (decision IN ('commit', 'abort')),
        participants jsonb NOT NULL,
        decided_at double precision NOT NULL,
        ended boolean NOT NULL DEFAULT false)""",
    """CREATE INDEX IF NOT EXISTS lockstep_decisions_unended
        ON lockstep_decisions (decided_at) WHERE NOT ended""",
)
INSERT_COMMIT_DECISION = (
    "INSERT INTO lockstep_decisions (txid, decision, participants, decided_at) "
    "VALUES (%s, 'commit', %s, %s) ON CONFLICT (txid) DO NOTHING RETURNING txid"
)
SET_DECISION_PARTICIPANTS = "UPDATE lockstep_decisions SET participants = %s WHERE txid = %s"
SCHEMA = TABLES + DECISIONS_SCHEMA
#: Two columns: the tables are there; the later indexes are there too.
SCHEMA_PRESENT = (
    "SELECT to_regclass('lockstep_markers') IS NOT NULL "
    "AND to_regclass('lockstep_claims_fact') IS NOT NULL "
    "AND to_regclass('lockstep_decisions_unended') IS NOT NULL, "
    "to_regclass('lockstep_transactions_undoable') IS NOT NULL "
    "AND to_regclass('lockstep_transactions_undoable_session') IS NOT NULL"
)
SELECT_HEAD = (
    "SELECT (SELECT record FROM lockstep_facts WHERE id = %(id)s), "
    "(SELECT max(version) FROM lockstep_fact_history WHERE id = %(id)s)"
)
# What a rollback of some transactions reads, in one statement: for each fact they wrote,
# the version before the earliest one they wrote, and the fact's head (its committed
# state and the newest version its history holds). Parts by name. Every lookup is a
# scalar subquery, run per fact on the primary key: as a join, a generic plan (psycopg
# prepares a statement from its fifth run) hashed the whole history table.
SELECT_UNDO_READS = """
WITH f AS (SELECT id, min(version) AS first FROM lockstep_fact_history
           WHERE txid = ANY(%s) GROUP BY id)
SELECT 'before', f.id, f.first - 1,
       (SELECT record FROM lockstep_fact_history WHERE id = f.id AND version = f.first - 1)
  FROM f WHERE f.first > 1
UNION ALL
SELECT 'head', f.id,
       (SELECT max(version) FROM lockstep_fact_history WHERE id = f.id),
       (SELECT record FROM lockstep_facts WHERE id = f.id)
  FROM f
ORDER BY 1, 2, 3"""
SELECT_VERSIONS = "SELECT id, version FROM lockstep_facts WHERE id = ANY(%s) FOR UPDATE NOWAIT"
SELECT_CLAIMS = "SELECT claim, fact_id FROM lockstep_claims WHERE claim = ANY(%s) FOR UPDATE NOWAIT"
UPSERT_FACT = (
    "INSERT INTO lockstep_facts (id, type, session_id, version, ts, record) "
    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET type = excluded.type, "
    "session_id = excluded.session_id, version = excluded.version, ts = excluded.ts, "
    "record = excluded.record"
)
INSERT_HISTORY = "INSERT INTO lockstep_fact_history VALUES (%s, %s, %s, %s, %s)"
INSERT_TRANSACTION = (
    "INSERT INTO lockstep_transactions (txid, session_id, kind, undoes, committed_at, actor, "
    "reason) VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
MARK_ROLLED_BACK = "UPDATE lockstep_transactions SET rolled_back_by = %s WHERE txid = ANY(%s)"
# Two statements, not one with "(%s IS NULL OR session_id = %s)": a generic plan for that
# form cannot use the session's index.
SELECT_UNDOABLE = (
    "SELECT seq, txid, session_id, kind, undoes, rolled_back_by, committed_at, actor, reason "
    "FROM lockstep_transactions WHERE kind = 'write' AND rolled_back_by IS NULL "
    "ORDER BY seq DESC LIMIT %s"
)
SELECT_UNDOABLE_IN_SESSION = SELECT_UNDOABLE.replace("ORDER BY", "AND session_id = %s ORDER BY")


def clashing_history(exc: Exception, rows: Sequence[tuple[Any, ...]]) -> tuple[str, int]:
    """The ``(fact_id, version)`` of ``rows`` whose history row the unique violation
    ``exc`` refused, as its detail names it (``Key (id, version)=(a, 2) already
    exists.``); the first row when the detail does not say."""
    detail = getattr(getattr(exc, "diag", None), "message_detail", None) or ""
    for row in rows:
        if f"=({row[0]}, {row[1]})" in detail:
            return str(row[0]), int(row[1])
    return str(rows[0][0]), int(rows[0][1])


def fact_row(fact: FactRecord) -> tuple[Any, ...]:
    return (fact.id, fact.type, fact.session_id, fact.version, fact.ts, fact.to_json())


def record_of(value: Any) -> FactRecord:
    """A FactRecord from a jsonb column (psycopg returns it parsed)."""
    data = value if isinstance(value, Mapping) else json.loads(value)
    return FactRecord(**data)


def query_sql(
    typename: str | None, filters: Mapping[str, JSONValue], session_id: str | None
) -> tuple[str, list[Any]]:
    """A parameterised SELECT: checked key names become path *parameters*, never SQL."""
    clauses: list[str] = []
    params: list[Any] = []
    if typename is not None:
        clauses.append("type = %s")
        params.append(typename)
    if session_id is not None:
        clauses.append("session_id = %s")
        params.append(session_id)
    for path, value in check_filters(filters).items():
        if value is None:
            clauses.append("(record #> %s::text[] IS NULL OR record #> %s::text[] = 'null'::jsonb)")
            params += [list(path), list(path)]
        else:
            clauses.append("record #> %s::text[] = %s::jsonb")
            params += [list(path), json.dumps(value)]
    where = " AND ".join(clauses) or "true"
    return f"SELECT record FROM lockstep_facts WHERE {where} ORDER BY ts, id", params


def undoes_json(undoes: Sequence[str]) -> str:
    return json.dumps(list(undoes))
