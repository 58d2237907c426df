"""The caller's own SQL (``tx.execute``) inside a Postgres branch: what is refused before
it runs, and what its errors mean.

The statements run inside Lockstep's transaction (a prepared branch, or the last-resource
commit that records the decision), so one that ends it would break atomicity: a
``COMMIT`` would make the staged facts visible before the decision, a ``ROLLBACK`` would
leave nothing to prepare while the other stores commit, a ``PREPARE TRANSACTION`` would
hand them to a branch Lockstep does not know. Postgres has no authorizer, so those are
refused by their leading keywords, and each statement is sent with the extended query
protocol, which takes one statement a call (no ``SELECT 1; COMMIT``). A session ``SET``
is refused too: the last-resource commit runs on a pooled connection that Lockstep reuses
(``SET LOCAL`` is fine).
"""

from __future__ import annotations

import psycopg
from psycopg import errors

from coordinator.errors import LockstepError, TransactionAborted, UsageError, VersionConflict

_ENDS = {"BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT", "SAVEPOINT", "RELEASE"}
_SESSION = {"SET", "RESET", "DISCARD"}


def refusal(sql: str) -> str | None:
    """Why ``sql`` may not run inside a branch (``None``: it may)."""
    words = leading_words(sql, 2)
    first, second = [*words, "", ""][:2]
    if first in _ENDS or (first == "PREPARE" and second == "TRANSACTION"):
        return "begin, commit or roll back the transaction (it is Lockstep's)"
    if first in _SESSION and not (first == "SET" and second in ("LOCAL", "CONSTRAINTS")):
        return (
            f"change a session setting with {first} (it would outlive the transaction, on a "
            "connection Lockstep reuses): use SET LOCAL"
        )
    return None


def leading_words(sql: str, count: int) -> list[str]:
    """The first ``count`` keywords of ``sql``, upper-cased, comments skipped."""
    words: list[str] = []
    i, n = 0, len(sql)
    while i < n and len(words) < count:
        if sql[i].isspace():
            i += 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            i = _after_comment(sql, i)
        elif sql[i].isalpha() or sql[i] == "_":
            start = i
            while i < n and (sql[i].isalnum() or sql[i] == "_"):
                i += 1
            words.append(sql[start:i].upper())
        else:
            break  # a quote, a parenthesis: no more keywords to read
    return words


def _after_comment(sql: str, i: int) -> int:
    """The index after the (nested, as Postgres allows) block comment starting at ``i``."""
    depth = 0
    while i < len(sql):
        if sql.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif sql.startswith("*/", i):
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    return i


def failure(name: str, txid: str, where: str, exc: psycopg.Error) -> LockstepError | None:
    """What a failed statement of yours means to the caller (``None``: a failure of
    Postgres or the connection, reported as such by the storage)."""
    if isinstance(exc, errors.LockNotAvailable):
        return VersionConflict(
            f"{where}: another transaction holds a row it needs ({exc})",
            txid=txid,
            participant=name,
        )
    if isinstance(exc, psycopg.IntegrityError | errors.TransactionRollback):
        # Your tables' rules refused the data, or a concurrent transaction won.
        return TransactionAborted(f"{where}: {exc}", txid=txid, participant=name)
    if isinstance(
        exc,
        psycopg.ProgrammingError
        | psycopg.DataError
        | errors.InvalidTransactionTermination  # a procedure or DO block ending it
        | errors.ActiveSqlTransaction,  # VACUUM and the like
    ):
        # Syntax, a missing table or column, a bad value, several statements in one call.
        return UsageError(f"{where}: {exc}", txid=txid, participant=name)
    return None
