"""Redis participant: facts in Redis, staged and applied by Lua scripts.

Needs the ``redis`` extra (``redis``), and for durability a server with
``appendonly yes`` and ``appendfsync always``.
"""

from __future__ import annotations

from participants.redis._async.storage import AsyncRedisStorage
from participants.redis._sync.storage import RedisStorage

__all__ = ["AsyncRedisStorage", "RedisStorage", "from_url"]


def from_url(
    url: str, *, name: str | None = None, asynchronous: bool = False, **options: object
) -> RedisStorage | AsyncRedisStorage:
    """``redis://host:port/db`` (entry point of the ``redis`` scheme)."""
    from coordinator.errors import ConfigurationError

    options.pop("embedder", None)  # an index option: a storage embeds nothing
    if options:
        raise ConfigurationError(f"redis:// takes no options {sorted(options)}")
    cls = AsyncRedisStorage if asynchronous else RedisStorage
    return cls(url, name=name or "redis")
