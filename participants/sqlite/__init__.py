"""SQLite participant: the embedded default storage (no extra dependency)."""

from participants.sqlite._async.storage import AsyncSQLiteStorage
from participants.sqlite._sync.storage import SQLiteStorage

__all__ = ["AsyncSQLiteStorage", "SQLiteStorage", "from_url"]


def from_url(
    url: str, *, name: str | None = None, asynchronous: bool = False, **options: object
) -> SQLiteStorage | AsyncSQLiteStorage:
    """``sqlite:///path/to/facts.db`` (entry point of the ``sqlite`` scheme)."""
    from coordinator.plugins import path_of
    from participants._checks import storage_options

    storage_options("sqlite", options)
    cls = AsyncSQLiteStorage if asynchronous else SQLiteStorage
    return cls(path_of(url), name=name or "sqlite")
