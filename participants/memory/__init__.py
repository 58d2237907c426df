"""In-process participant for tests and examples (no durability beyond the process)."""

from participants.memory._async.storage import AsyncInMemoryStorage
from participants.memory._backend import MemoryBackend
from participants.memory._sync.storage import InMemoryStorage

__all__ = ["AsyncInMemoryStorage", "InMemoryStorage", "MemoryBackend"]
