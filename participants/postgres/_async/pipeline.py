"""Statements sent together: one round trip for many (the source of the generated twin).

psycopg waits for each statement's answer before it sends the next unless a connection is
in pipeline mode; there, statements go out at once and one Sync collects their answers. A
commit of one fact on Postgres alone went from ten round trips to five
(``tests/integration/test_postgres_round_trips.py``) and one writer's commits a second
1.45x; with eight writer threads, whose time goes to the interpreter and the index,
nothing changed.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import AsyncConnection, AsyncCursor

#: One statement for :func:`send`: SQL and its parameters (``None``: none; a list: the
#: statement once for each row, and with no row not sent); ``None``: no statement.
Statement = tuple[str, Any] | None


async def send(conn: AsyncConnection[Any], *statements: Statement) -> list[AsyncCursor[Any]]:
    """Run ``statements`` on ``conn`` in one round trip and return a cursor for each
    (``None`` statements left out), its rows fetched: the statements of an open
    transaction, or of one they begin and commit themselves. The first statement that
    fails raises its own error once the pipeline has ended, and the server skips the rest
    (a ``COMMIT`` among them: the caller ends the transaction)."""
    cursors: list[AsyncCursor[Any]] = []
    failure: psycopg.Error | None = None
    try:
        async with conn.pipeline():
            try:
                for statement in statements:
                    if statement is None:
                        continue
                    text, params = statement
                    cursor = conn.cursor()
                    if isinstance(params, list):
                        if params:
                            await cursor.executemany(text, params)
                    else:
                        await cursor.execute(text, params)
                    cursors.append(cursor)
            except psycopg.Error as exc:
                # Raised by a later statement's send, which reads what has arrived. Left
                # to escape, psycopg would end the pipeline logging what it then ignores.
                failure = exc
    except psycopg.Error:
        # The pipeline's end reports the failure again (PipelineAborted), or, when the
        # connection went with it (no answer in time), that it is closed: the first says why.
        if failure is None:
            raise
    if failure is not None:
        raise failure
    return cursors
