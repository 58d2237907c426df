"""LangGraph checkpoint savers on a Lockstep memory store (``pip install 'lockstep[langgraph]'``).

::

    from coordinator import MemoryStore
    from coordinator.integrations.langgraph import LockstepSaver

    mem = MemoryStore.open("agent-memory/")
    graph = builder.compile(checkpointer=LockstepSaver(mem))

``AsyncLockstepSaver`` takes an ``AsyncMemoryStore``, for ``ainvoke``/``astream``.
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
    AsyncLockstepSaver,
)
from coordinator.integrations.langgraph._sync.saver import LockstepSaver

__all__ = [
    "BLOB",
    "CHECKPOINT",
    "HEAD",
    "THREAD_SESSION",
    "WRITE",
    "WRITES_SESSION",
    "AsyncLockstepSaver",
    "LockstepSaver",
]
