"""The caller's own SQL (``tx.execute``) inside a SQLite storage's local commit.

SQLite has no prepared transactions: a statement cannot be run at prepare and kept, its
effects durable but undecided, until the decision. So the caller's statements run only
where the storage commits in one local transaction that *is* the commit point — as the
last resource (the COMMIT record in the same transaction) or in a one-phase commit — and
a statement that fails rolls that transaction back, so nothing of the transaction lands
anywhere. A prepare is refused (:func:`refuse_prepare`).

The statements share the transaction with Lockstep's own writes (and, under group commit,
with other transactions'), so an authorizer keeps them from ending it, changing the
connection (``PRAGMA``, ``ATTACH``, the ``temp`` schema, where a table could hide one of
Lockstep's) or writing Lockstep's tables; reading them is allowed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from coordinator.errors import LockstepError, ParticipantError, TransactionAborted, UsageError
from coordinator.records import Execute
from participants._checks import statement_failed

_PREFIX = "lockstep_"
_NEVER = {
    sqlite3.SQLITE_TRANSACTION: "begin, commit or roll back the transaction",
    sqlite3.SQLITE_SAVEPOINT: "use savepoints (the transaction is Lockstep's)",
    sqlite3.SQLITE_ATTACH: "attach a database",
    sqlite3.SQLITE_DETACH: "detach a database",
    sqlite3.SQLITE_PRAGMA: "run a PRAGMA (it would change Lockstep's connection)",
    # A trigger's statements are authorized when they run, not when it is made: one made
    # here would later run, unguarded, in every connection that writes its table.
    sqlite3.SQLITE_CREATE_TRIGGER: "create a trigger",
}
_TEMP = {
    sqlite3.SQLITE_CREATE_TEMP_INDEX,
    sqlite3.SQLITE_CREATE_TEMP_TABLE,
    sqlite3.SQLITE_CREATE_TEMP_TRIGGER,
    sqlite3.SQLITE_CREATE_TEMP_VIEW,
    sqlite3.SQLITE_DROP_TEMP_INDEX,
    sqlite3.SQLITE_DROP_TEMP_TABLE,
    sqlite3.SQLITE_DROP_TEMP_TRIGGER,
    sqlite3.SQLITE_DROP_TEMP_VIEW,
}
# Actions that change a table (or make an object) named in their first argument, and
# those that name the table in their second.
_FIRST = {
    sqlite3.SQLITE_INSERT,
    sqlite3.SQLITE_UPDATE,
    sqlite3.SQLITE_DELETE,
    sqlite3.SQLITE_CREATE_TABLE,
    sqlite3.SQLITE_DROP_TABLE,
    sqlite3.SQLITE_CREATE_VIEW,
    sqlite3.SQLITE_DROP_VIEW,
    sqlite3.SQLITE_CREATE_VTABLE,
    sqlite3.SQLITE_DROP_VTABLE,
    sqlite3.SQLITE_CREATE_INDEX,
    sqlite3.SQLITE_DROP_INDEX,
    sqlite3.SQLITE_DROP_TRIGGER,
    sqlite3.SQLITE_REINDEX,
    sqlite3.SQLITE_ANALYZE,
}
_SECOND = {
    sqlite3.SQLITE_CREATE_INDEX,
    sqlite3.SQLITE_DROP_INDEX,
    sqlite3.SQLITE_DROP_TRIGGER,
    sqlite3.SQLITE_ALTER_TABLE,
}


def refuse_prepare(name: str, txid: str) -> UsageError:
    """The error for a prepare that carries the caller's SQL."""
    return UsageError(
        f"SQLite storage {name!r} runs your SQL only when it commits in one local "
        "transaction: as the last resource (its own file holds the decision log, as when "
        "a MemoryStore is given no log=) or as the only store the transaction writes. This "
        "transaction prepares it in two phases, and SQLite cannot keep a statement's "
        "effects prepared until the decision",
        txid=txid,
        participant=name,
    )


class _Guard:
    """The authorizer: remembers why it refused, for the error message."""

    def __init__(self) -> None:
        self.refused: str | None = None

    def __call__(self, action: int, first: str | None, second: str | None, *_: str | None) -> int:
        why = _NEVER.get(action)
        if why is None and action in _TEMP:
            why = "create or drop objects in the temp schema"
        if why is None:
            names = ([first] if action in _FIRST else []) + ([second] if action in _SECOND else [])
            ours = [n for n in names if n is not None and n.lower().startswith(_PREFIX)]
            if ours:
                why = f"change Lockstep's {ours[0]}"
        if why is None:
            return sqlite3.SQLITE_OK
        self.refused = why
        return sqlite3.SQLITE_DENY


def run_statements(
    conn: sqlite3.Connection, name: str, txid: str, statements: Sequence[Execute]
) -> None:
    """Run ``statements`` in ``conn``'s open transaction, in order.

    :raises UsageError: a statement is malformed, names what does not exist, binds its
        parameters wrongly, or does what the authorizer refuses.
    :raises TransactionAborted: a constraint of your tables refused a statement.
    :raises ParticipantError: SQLite failed (disk, I/O).
    """
    guard = _Guard()
    conn.set_authorizer(guard)
    try:
        for i, statement in enumerate(statements):
            guard.refused = None
            try:
                conn.execute(statement.sql, statement.params).close()
            except (sqlite3.Error, OverflowError, TypeError, ValueError) as exc:
                where = statement_failed(i, statements)
                raise _failure(name, txid, where, exc, guard.refused) from exc
    finally:
        conn.set_authorizer(None)


def _failure(
    name: str, txid: str, where: str, exc: Exception, refused: str | None
) -> LockstepError:
    if refused is not None:
        return UsageError(
            f"{where}: it may not {refused}; run that on a connection of your own",
            txid=txid,
            participant=name,
        )
    code = getattr(exc, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    if primary in (sqlite3.SQLITE_CONSTRAINT, sqlite3.SQLITE_MISMATCH):
        # Your tables' own rules refused the data: nothing of the transaction committed.
        return TransactionAborted(f"{where}: {exc}", txid=txid, participant=name)
    if primary in (None, sqlite3.SQLITE_ERROR, sqlite3.SQLITE_RANGE, sqlite3.SQLITE_AUTH):
        # Syntax, a missing table or column, parameters that do not bind.
        return UsageError(f"{where}: {exc}", txid=txid, participant=name)
    return ParticipantError(f"{where}: {exc}", txid=txid, participant=name)
