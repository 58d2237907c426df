"""A test's own look at a SQLite file, beside the store that writes it."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def sqlite_file(path: str | Path) -> Iterator[sqlite3.Connection]:
    """A connection to the file that commits what the block did and is closed after it
    (sqlite3's own ``with`` commits but leaves the connection open)."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        yield conn


def rows(path: str | Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The rows a query returns, read on a connection of its own."""
    with sqlite_file(path) as conn:
        return conn.execute(sql, params).fetchall()


def descriptors_open_on(path: str | Path) -> list[int]:
    """This process's file descriptors open on ``path`` (Linux's /proc)."""
    target = str(Path(path).resolve())
    found = []
    for entry in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # a descriptor closed while we look
            if str(entry.readlink()) == target:
                found.append(int(entry.name))
    return found
