"""Redis participant: facts in Redis, staged and applied by Lua scripts.

Needs the ``redis`` extra (``redis``), and for durability a server with
``appendonly yes`` and ``appendfsync always``. A Redis storage keeps its decisions in the
same Redis (:class:`RedisDecisionLog`) unless given another log.
"""

from __future__ import annotations

from participants.redis._async.storage import AsyncRedisStorage
from participants.redis._log import (
    AsyncRedisDecisionLog,
    RedisDecisionLog,
    decision_log_from_url,
    where,
)
from participants.redis._sync.storage import RedisStorage

__all__ = [
    "AsyncRedisDecisionLog",
    "AsyncRedisStorage",
    "RedisDecisionLog",
    "RedisStorage",
    "decision_log_from_url",
    "from_url",
]


def from_url(
    url: str, *, name: str | None = None, asynchronous: bool = False, **options: object
) -> RedisStorage | AsyncRedisStorage:
    """``redis://host:port/db[?prefix=...]`` (entry point of the ``redis`` scheme)."""
    from participants._checks import storage_options

    storage_options("redis", options)
    server, prefix = where(url)
    cls = AsyncRedisStorage if asynchronous else RedisStorage
    return cls(server, name=name or "redis", prefix=prefix)
