"""The memory API: what agents call (MemState's names, every method atomic)."""

from coordinator.memory._async.store import AsyncMemoryStore
from coordinator.memory._async.transaction import AsyncMemoryTransaction
from coordinator.memory._model import Constraint, Fact, SchemaRegistry, ScoredFact
from coordinator.memory._sync.store import MemoryStore
from coordinator.memory._sync.transaction import MemoryTransaction
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
