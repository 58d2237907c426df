"""The check a pooled Postgres connection passes before it is handed out.

psycopg_pool's own ``check_connection`` sends an empty query: a round trip on every
checkout, as long as the read that follows. A connection resting in the pool has nothing
to read, so if its socket is readable the server has spoken unasked (a shutdown's FATAL
notice, ``pg_terminate_backend``) or closed it; such a connection is closed, the pool
drops it and opens a fresh one: one ``poll`` with no wait, no round trip. A server that
vanished without a word (a cut cable) is not seen here, as an empty query would not see
it either before its own timeout; the statement that follows fails and the caller is told.
"""

from __future__ import annotations

import select
from typing import Any

import psycopg


def idle_check(conn: Any) -> None:
    """Raise if ``conn`` (idle in the pool) has heard from its server since its last use."""
    if conn.closed:
        raise psycopg.OperationalError("the pooled connection is closed")
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    if poller.poll(0):  # input, hang-up or error: the session is over or unusable
        conn.close()  # closed, the pool drops it (an open one would be handed back again)
        raise psycopg.OperationalError("the server closed or spoke on an idle connection")


async def aidle_check(conn: Any) -> None:
    """:func:`idle_check` for an ``AsyncConnectionPool``."""
    idle_check(conn)
