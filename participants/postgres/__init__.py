"""Postgres participant: facts as JSONB, committed with prepared transactions (2PC).

Needs the ``postgres`` extra (``psycopg``, ``psycopg-pool``) and a server with
``max_prepared_transactions > 0``.
"""

from __future__ import annotations

from participants.postgres._async.storage import AsyncPostgresStorage
from participants.postgres._log import AsyncPostgresDecisionLog, PostgresDecisionLog
from participants.postgres._sync.storage import PostgresStorage

__all__ = [
    "AsyncPostgresDecisionLog",
    "AsyncPostgresStorage",
    "PostgresDecisionLog",
    "PostgresStorage",
    "from_url",
]


def from_url(
    url: str, *, name: str | None = None, asynchronous: bool = False, **options: object
) -> PostgresStorage | AsyncPostgresStorage:
    """``postgresql://user@host:port/dbname`` (entry point of the ``postgresql`` scheme)."""
    from participants._checks import storage_options

    storage_options("postgresql", options)
    cls = AsyncPostgresStorage if asynchronous else PostgresStorage
    return cls(url.replace("postgres://", "postgresql://", 1), name=name or "postgres")
