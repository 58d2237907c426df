"""Decision logs: where the outcome of every transaction is recorded, decide-once.

* :class:`SQLiteDecisionLog` — the default: a SQLite file in WAL mode with
  ``synchronous=FULL``, safe for several processes sharing it, with group commit.
* :class:`MemoryDecisionLog` — in-process, for tests and examples.

``Async*`` variants run the same log off the event loop.
"""

from coordinator.log._adapter import AsyncDecisionLogAdapter as AsyncDecisionLogAdapter
from coordinator.log._memory import AsyncMemoryDecisionLog as AsyncMemoryDecisionLog
from coordinator.log._memory import MemoryDecisionLog as MemoryDecisionLog
from coordinator.log._sqlite import AsyncSQLiteDecisionLog as AsyncSQLiteDecisionLog
from coordinator.log._sqlite import SQLiteDecisionLog as SQLiteDecisionLog

__all__ = [
    "AsyncDecisionLogAdapter",
    "AsyncMemoryDecisionLog",
    "AsyncSQLiteDecisionLog",
    "MemoryDecisionLog",
    "SQLiteDecisionLog",
]
