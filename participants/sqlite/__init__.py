"""SQLite participant: the embedded default storage (no extra dependency)."""

from coordinator.errors import ConfigurationError
from participants.sqlite._async.storage import AsyncSQLiteStorage
from participants.sqlite._sync.storage import SQLiteStorage

__all__ = ["AsyncSQLiteStorage", "SQLiteStorage", "from_url"]


def from_url(
    url: str, *, name: str | None = None, asynchronous: bool = False, **options: object
) -> SQLiteStorage | AsyncSQLiteStorage:
    """``sqlite:///path/to/facts.db`` (entry point of the ``sqlite`` scheme);
    ``?group_commit=0`` commits every transaction in its own local transaction."""
    from urllib.parse import parse_qs, urlsplit

    from coordinator.plugins import path_of, query_flag
    from participants._checks import storage_options

    storage_options("sqlite", options)
    unknown = sorted(set(parse_qs(urlsplit(url).query)) - {"group_commit"})
    if unknown:
        raise ConfigurationError(f"sqlite:// takes no URL option {unknown} (known: group_commit)")
    cls = AsyncSQLiteStorage if asynchronous else SQLiteStorage
    return cls(path_of(url), name=name or "sqlite", group_commit=query_flag(url, "group_commit"))
