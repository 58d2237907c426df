"""The memory API: what agents call (MemState's names, every method atomic)."""

from coordinator.memory._async.store import AsyncMemoryStore, AsyncMemoryTransaction
from coordinator.memory._model import Constraint, Fact, SchemaRegistry, ScoredFact
from coordinator.memory._sync.store import MemoryStore, MemoryTransaction
from coordinator.memory._verify import Drift, VerifyReport

__all__ = [
    "AsyncMemoryStore",
    "AsyncMemoryTransaction",
    "Constraint",
    "Fact",
    "Drift",
    "MemoryStore",
    "MemoryTransaction",
    "SchemaRegistry",
    "ScoredFact",
    "VerifyReport",
]
