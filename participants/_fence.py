"""An in-process record of aborted txids, for stores with no room for tombstones.

Vector indexes cannot keep an abort tombstone beside their points cheaply, so they fence
late prepares arriving in the same process (the usual case: a call the coordinator gave
up on at its timeout). A late prepare from another process is removed by recovery.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from participants._checks import already_aborted


class AbortFence:
    """Remembers the last ``size`` aborted txids."""

    def __init__(self, name: str, size: int = 10_000) -> None:
        self._name = name
        self._size = size
        self._aborted: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, txid: str) -> None:
        with self._lock:
            self._aborted[txid] = None
            while len(self._aborted) > self._size:
                self._aborted.popitem(last=False)

    def __contains__(self, txid: object) -> bool:
        with self._lock:
            return txid in self._aborted

    def check(self, txid: str) -> None:
        """Raise ``TransactionAborted`` if ``txid`` was aborted here."""
        with self._lock:
            if txid in self._aborted:
                raise already_aborted(self._name, txid)
