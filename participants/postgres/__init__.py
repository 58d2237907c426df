"""Postgres participant: facts as JSONB, committed with prepared transactions (2PC).

Needs the ``postgres`` extra (``psycopg``, ``psycopg-pool``) and a server with
``max_prepared_transactions > 0``.
"""

from __future__ import annotations

from participants.postgres._async.storage import AsyncPostgresStorage
from participants.postgres._connections import ANSWER_TIMEOUT
from participants.postgres._log import AsyncPostgresDecisionLog, PostgresDecisionLog
from participants.postgres._sync.storage import PostgresStorage

__all__ = [
    "AsyncPostgresDecisionLog",
    "AsyncPostgresStorage",
    "PostgresDecisionLog",
    "PostgresStorage",
    "decision_log_from_url",
    "from_url",
]


def from_url(
    url: str, *, name: str | None = None, asynchronous: bool = False, **options: object
) -> PostgresStorage | AsyncPostgresStorage:
    """``postgresql://user@host:port/dbname`` (entry point of the ``postgresql`` scheme);
    ``?answer_timeout=`` (seconds) is the storage's, every other parameter libpq's."""
    from participants._checks import storage_options

    storage_options("postgresql", options)
    conninfo, answer_timeout = _split(url)
    cls = AsyncPostgresStorage if asynchronous else PostgresStorage
    return cls(conninfo, name=name or "postgres", answer_timeout=answer_timeout)


def decision_log_from_url(url: str) -> PostgresDecisionLog:
    """``postgresql://user@host:port/dbname`` (entry point of the ``postgresql`` log
    scheme); ``?answer_timeout=`` as for the storage."""
    conninfo, answer_timeout = _split(url)
    return PostgresDecisionLog(conninfo, answer_timeout=answer_timeout)


def _split(url: str) -> tuple[str, float]:
    """The libpq URL, and the ``answer_timeout`` its query gave (30 s if none).

    :raises ConfigurationError: ``answer_timeout`` is not a number of seconds > 0.
    """
    from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

    from participants._checks import seconds_option

    url = url.replace("postgres://", "postgresql://", 1)
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    given = [value for key, value in query if key == "answer_timeout"]
    if not given:
        return url, ANSWER_TIMEOUT  # libpq's as written
    # libpq decodes %XX only: a space must not become "+".
    rest = urlencode([(k, v) for k, v in query if k != "answer_timeout"], quote_via=quote)
    answer_timeout = seconds_option("postgresql://", "answer_timeout", given[-1])
    return urlunsplit(parts._replace(query=rest)), answer_timeout
