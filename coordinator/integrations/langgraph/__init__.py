"""LangGraph on a Lockstep memory store (``pip install 'lockstep[langgraph]'``): checkpoint
savers for a graph's threads, and ``LockstepStore`` for its long-term memory.

::

    from coordinator import MemoryStore
    from coordinator.integrations.langgraph import LockstepSaver, LockstepStore

    mem = MemoryStore.open("agent-memory/")
    graph = builder.compile(checkpointer=LockstepSaver(mem), store=LockstepStore(mem))

``AsyncLockstepSaver`` and ``AsyncLockstepStore`` take an ``AsyncMemoryStore``, for
``ainvoke``/``astream``.
"""

try:
    import langgraph.checkpoint.base  # noqa: F401
except ImportError as missing:  # pragma: no cover - depends on the installation
    raise ImportError(
        "coordinator.integrations.langgraph needs LangGraph: pip install 'lockstep[langgraph]'"
    ) from missing

from coordinator.integrations.langgraph._async.saver import (
    BLOB,
    CHECKPOINT,
    HEAD,
    THREAD_SESSION,
    WRITE,
    WRITES_SESSION,
)
from coordinator.integrations.langgraph.saver import AsyncLockstepSaver, LockstepSaver
from coordinator.integrations.langgraph.store import UNINDEXED, AsyncLockstepStore, LockstepStore

__all__ = [
    "BLOB",
    "CHECKPOINT",
    "HEAD",
    "THREAD_SESSION",
    "WRITE",
    "WRITES_SESSION",
    "UNINDEXED",
    "AsyncLockstepSaver",
    "AsyncLockstepStore",
    "LockstepSaver",
    "LockstepStore",
]
