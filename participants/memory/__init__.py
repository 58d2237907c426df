"""In-process participant for tests and examples (no durability beyond the process)."""

from participants.memory._async.storage import AsyncInMemoryStorage
from participants.memory._backend import MemoryBackend
from participants.memory._sync.storage import InMemoryStorage

__all__ = ["AsyncInMemoryStorage", "InMemoryStorage", "MemoryBackend", "from_url"]


def from_url(
    url: str, *, name: str | None = None, asynchronous: bool = False, **options: object
) -> InMemoryStorage | AsyncInMemoryStorage:
    """``memory://`` (entry point of the ``memory`` scheme): a fresh in-process store."""
    from participants._checks import storage_options

    storage_options("memory", options)
    cls = AsyncInMemoryStorage if asynchronous else InMemoryStorage
    return cls(name or "memory")
