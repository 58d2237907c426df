"""The Postgres participant's connections: a bound on every wait for the server, and the
check a pooled connection passes before it is handed out.

**No wait without an end.** psycopg waits for a server's answer for as long as the
connection lives: a server that stops answering (a hung host, a connection black-holed on
the way; TCP keepalives do not end a wait on a peer whose kernel still acknowledges) keeps
the caller waiting for ever. :class:`BoundedConnection` gives up on any one exchange with
the server (a statement, a pipeline's results, a COMMIT) after ``answer_timeout`` seconds,
closes the connection (its state is unknown) and raises :class:`NoAnswer`. What that means
is the caller's to say: before a COMMIT was sent nothing was committed; after, the
outcome is in doubt.

**The idle check.** psycopg_pool's own ``check_connection`` sends an empty query: a round
trip on every checkout, as long as the read that follows. A connection resting in the pool
has nothing to read, so if its socket is readable the server has spoken unasked (a
shutdown's FATAL notice, ``pg_terminate_backend``) or closed it; such a connection is
closed, the pool drops it and opens a fresh one: one ``poll`` with no wait, no round trip.
A server that vanished without a word is not seen there; the statement that follows runs
into the bound above.
"""

from __future__ import annotations

import select
from collections.abc import Generator
from typing import Any, TypeVar

import psycopg
from psycopg import errors

RV = TypeVar("RV")

#: psycopg's own interval between checks of an interrupted wait (its default).
INTERVAL = 0.1
#: Seconds an exchange with the server may wait for its answer, unless told otherwise.
ANSWER_TIMEOUT = 30.0


class NoAnswer(psycopg.OperationalError):
    """The server did not answer within the connection's ``answer_timeout``; the
    connection is closed."""


def no_answer_in(exc: BaseException) -> NoAnswer | None:
    """The :class:`NoAnswer` behind ``exc``, if any: psycopg may report the closed
    connection in its place (a pipeline that ends after the bound closed it)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, NoAnswer):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _no_answer(conn: BoundedConnection | AsyncBoundedConnection) -> NoAnswer:
    conn.pgconn.finish()  # half an exchange behind it: never to be used again
    return NoAnswer(f"Postgres did not answer within {conn.answer_timeout} s")


class BoundedConnection(psycopg.Connection[Any]):
    """A connection whose every wait for the server ends after ``answer_timeout``
    seconds (``None``: no bound) with :class:`NoAnswer`."""

    answer_timeout: float | None = None

    def wait(
        self,
        gen: Generator[Any, Any, RV],
        interval: float = INTERVAL,
        timeout: float | None = None,
    ) -> RV:
        if timeout is not None:  # psycopg's own bound (it handles its expiry)
            return super().wait(gen, interval, timeout)
        try:
            return super().wait(gen, interval, self.answer_timeout)
        except errors._WaitTimeout as exc:  # psycopg's own error, raised by our bound
            raise _no_answer(self) from exc


class AsyncBoundedConnection(psycopg.AsyncConnection[Any]):
    """:class:`BoundedConnection` for asyncio: the bound ends the wait itself, so no
    cancellation is involved (psycopg answers one with a cancel request of its own, which
    a silent path swallows for seconds more)."""

    answer_timeout: float | None = None

    async def wait(
        self,
        gen: Generator[Any, Any, RV],
        interval: float = INTERVAL,
        timeout: float | None = None,  # noqa: ASYNC109 - psycopg's signature, overridden
    ) -> RV:
        if timeout is not None:
            return await super().wait(gen, interval, timeout)
        try:
            return await super().wait(gen, interval, self.answer_timeout)
        except errors._WaitTimeout as exc:
            raise _no_answer(self) from exc


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
