"""The in-process store behind ``InMemoryStorage`` (thread-safe, synchronous)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from coordinator.abc import Vote
from coordinator.records import DeleteFact, FactRecord, UpsertFact, Write
from participants._checks import (
    FactWrite,
    already_aborted,
    fact_writes,
    locked_conflict,
    version_conflict,
)


class MemoryBackend:
    """Committed facts, their history, and staged branches, in dicts.

    The backend outlives the participant objects that use it, the way a database outlives
    its clients: tests drop a coordinator and its participants (a simulated crash) and
    recover through new ones over the same backend.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.facts: dict[str, FactRecord] = {}
        self.history: dict[str, list[FactRecord]] = {}
        self.staged: dict[str, tuple[FactWrite, ...]] = {}
        self.locks: dict[str, str] = {}
        self.aborted: set[str] = set()

    def prepare(self, name: str, txid: str, writes: Sequence[Write]) -> Vote:
        checked = fact_writes(name, writes)
        with self._lock:
            if txid in self.staged:
                return Vote.YES
            if txid in self.aborted:
                raise already_aborted(name, txid)
            self._check(name, txid, checked)
            self.staged[txid] = tuple(checked)
            for write in checked:
                self.locks[write.fact_id] = txid
        return Vote.YES

    def commit(self, txid: str) -> None:
        with self._lock:
            writes = self.staged.pop(txid, ())
            self._apply(writes)
            for write in writes:
                self.locks.pop(write.fact_id, None)

    def abort(self, txid: str) -> None:
        with self._lock:
            self.aborted.add(txid)  # fences out a prepare that arrives late
            for write in self.staged.pop(txid, ()):
                self.locks.pop(write.fact_id, None)

    def recover(self) -> list[str]:
        with self._lock:
            return sorted(self.staged)

    def commit_one_phase(self, name: str, txid: str, writes: Sequence[Write]) -> None:
        checked = fact_writes(name, writes)
        with self._lock:
            self._check(name, txid, checked)
            self._apply(checked)

    def get(self, fact_id: str) -> FactRecord | None:
        with self._lock:
            return self.facts.get(fact_id)

    def all_facts(self) -> list[FactRecord]:
        with self._lock:
            return sorted(self.facts.values(), key=lambda f: f.id)

    def _check(self, name: str, txid: str, writes: Sequence[FactWrite]) -> None:
        for write in writes:
            holder = self.locks.get(write.fact_id)
            if holder is not None and holder != txid:
                raise locked_conflict(name, txid, write.fact_id)
            current = self.facts.get(write.fact_id)
            actual = 0 if current is None else current.version
            if actual != write.expected_version:
                raise version_conflict(name, txid, write.fact_id, write.expected_version, actual)

    def _apply(self, writes: Sequence[FactWrite]) -> None:
        for write in writes:
            if isinstance(write, UpsertFact):
                self.facts[write.fact_id] = write.fact
                self.history.setdefault(write.fact_id, []).append(write.fact)
            elif isinstance(write, DeleteFact):
                self.facts.pop(write.fact_id, None)
                if write.tombstone is not None:
                    self.history.setdefault(write.fact_id, []).append(write.tombstone)
