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
    "decision_log_from_url",
    "from_url",
]

#: Query parameters of a ``postgresql://`` URL that are Lockstep's, not libpq's.
OWN_PARAMETERS = ("answer_timeout",)


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
    answer_timeout = 30.0
    if not given:
        return url, answer_timeout  # libpq's as written
    answer_timeout = seconds_option("postgresql", "answer_timeout", given[-1])
    # libpq decodes %XX only: a space must not become "+".
    rest = urlencode(
        [(key, value) for key, value in query if key not in OWN_PARAMETERS], quote_via=quote
    )
    return urlunsplit(parts._replace(query=rest)), answer_timeout
