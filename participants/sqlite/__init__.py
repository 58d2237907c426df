"""SQLite participant: the embedded default storage (no extra dependency)."""

from participants.sqlite._async.storage import AsyncSQLiteStorage
from participants.sqlite._sync.storage import SQLiteStorage

__all__ = ["AsyncSQLiteStorage", "SQLiteStorage"]
