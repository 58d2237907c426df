"""An in-process decision log for tests and examples (not durable across processes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence

from coordinator.abc import Decision, DecisionRecord
from coordinator.log._adapter import AsyncDecisionLogAdapter
from coordinator.log._base import DecisionLogBase, check_decisions


class MemoryDecisionLog(DecisionLogBase):
    """Decide-once outcomes kept in a dict; thread-safe.

    It outlives the coordinators that use it, so tests can drop a coordinator mid-commit
    (a simulated crash) and recover with another.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, DecisionRecord] = {}

    def decide_many(
        self, decisions: Sequence[tuple[str, Decision, Sequence[str]]]
    ) -> dict[str, Decision]:
        check_decisions(decisions)
        now = time.time()
        with self._lock:
            for txid, decision, participants in decisions:
                if txid not in self._records:
                    self._records[txid] = DecisionRecord(
                        txid, Decision(decision), tuple(participants), now
                    )
            return {txid: self._records[txid].decision for txid, _, _ in decisions}

    def records(self, txids: Iterable[str]) -> dict[str, DecisionRecord]:
        with self._lock:
            return {t: self._records[t] for t in txids if t in self._records}

    def unended(self) -> list[DecisionRecord]:
        with self._lock:
            return [r for r in self._records.values() if not r.ended]

    def end(self, txids: Iterable[str]) -> None:
        with self._lock:
            for txid in txids:
                record = self._records.get(txid)
                if record is not None and not record.ended:
                    self._records[txid] = DecisionRecord(
                        record.txid, record.decision, record.participants, record.decided_at, True
                    )

    def close(self) -> None:
        """Nothing to release; the records stay readable."""


class AsyncMemoryDecisionLog(AsyncDecisionLogAdapter):
    """:class:`MemoryDecisionLog` with an async face."""

    def __init__(self, log: MemoryDecisionLog | None = None) -> None:
        super().__init__(log or MemoryDecisionLog())
