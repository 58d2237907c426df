"""The in-process store behind ``InMemoryStorage`` (thread-safe, synchronous)."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from coordinator.abc import TransactionEntry, UndoReads, Vote, versions_before
from coordinator.filters import check_filters, matches
from coordinator.records import (
    DeleteFact,
    FactRecord,
    JSONValue,
    TransactionMeta,
    UpsertFact,
    Write,
)
from participants._checks import (
    FactWrite,
    already_aborted,
    claim_conflict,
    fact_writes,
    history_conflict,
    locked_conflict,
    transaction_meta,
    version_conflict,
)


@dataclass(frozen=True)
class _Staged:
    writes: tuple[FactWrite, ...]
    meta: TransactionMeta


class MemoryBackend:
    """Committed facts, their history, the transaction log and staged branches, in dicts.

    The backend outlives the participant objects that use it, the way a database outlives
    its clients: tests drop a coordinator and its participants (a simulated crash) and
    recover through new ones over the same backend.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.facts: dict[str, FactRecord] = {}
        self.history: dict[str, list[FactRecord]] = {}
        self.transactions: list[TransactionEntry] = []
        self.staged: dict[str, _Staged] = {}
        self.locks: dict[str, str] = {}
        self.claims: dict[str, str] = {}  # claim -> fact id
        self.claim_locks: dict[str, str] = {}  # claim -> txid
        self.aborted: set[str] = set()

    # -- the participant contract -------------------------------------------------------

    def prepare(self, name: str, txid: str, writes: Sequence[Write]) -> Vote:
        checked = fact_writes(name, writes)
        with self._lock:
            if txid in self.staged:
                return Vote.YES
            if txid in self.aborted:
                raise already_aborted(name, txid)
            self._check(name, txid, checked)
            self.staged[txid] = _Staged(tuple(checked), transaction_meta(writes))
            for write in checked:
                self.locks[write.fact_id] = txid
                if isinstance(write, UpsertFact) and write.claim is not None:
                    self.claim_locks[write.claim] = txid
        return Vote.YES

    def commit(self, txid: str) -> None:
        with self._lock:
            staged = self.staged.pop(txid, None)
            if staged is None:
                return
            self._apply(txid, staged.writes, staged.meta)
            self._release(txid, staged.writes)

    def abort(self, txid: str) -> None:
        with self._lock:
            self.aborted.add(txid)  # fences out a prepare that arrives late
            staged = self.staged.pop(txid, None)
            if staged is not None:
                self._release(txid, staged.writes)

    def recover(self) -> list[str]:
        with self._lock:
            return sorted(self.staged)

    def commit_one_phase(self, name: str, txid: str, writes: Sequence[Write]) -> None:
        checked = fact_writes(name, writes)
        with self._lock:
            self._check(name, txid, checked)
            self._apply(txid, checked, transaction_meta(writes))

    # -- reads --------------------------------------------------------------------------

    def get(self, fact_id: str) -> FactRecord | None:
        with self._lock:
            return self.facts.get(fact_id)

    def get_many(self, fact_ids: Sequence[str]) -> dict[str, FactRecord]:
        with self._lock:
            return {i: self.facts[i] for i in fact_ids if i in self.facts}

    def query(
        self, typename: str | None, filters: Mapping[str, JSONValue], session_id: str | None
    ) -> list[FactRecord]:
        checked = check_filters(filters)
        with self._lock:
            facts = list(self.facts.values())
        return sorted(
            (
                f
                for f in facts
                if (typename is None or f.type == typename)
                and (session_id is None or f.session_id == session_id)
                and matches(f, checked)
            ),
            key=lambda f: (f.ts, f.id),
        )

    def head(self, fact_id: str) -> tuple[FactRecord | None, int]:
        with self._lock:
            history = self.history.get(fact_id)
            return self.facts.get(fact_id), history[-1].version if history else 0

    def history_of(self, fact_id: str) -> list[FactRecord]:
        with self._lock:
            return list(self.history.get(fact_id, ()))

    def versions(self, keys: Sequence[tuple[str, int]]) -> list[FactRecord]:
        with self._lock:
            return [
                record
                for fact_id, version in keys
                for record in self.history.get(fact_id, ())
                if record.version == version
            ]

    def written_by(self, txids: Sequence[str]) -> list[FactRecord]:
        wanted = set(txids)
        with self._lock:
            return [v for versions in self.history.values() for v in versions if v.txid in wanted]

    def undo_reads(self, txids: Sequence[str]) -> UndoReads:
        # Three reads, as the contract allows (history never changes; the heads are
        # checked at commit).
        written = self.written_by(txids)
        before = {record.id: record for record in self.versions(versions_before(written))}
        heads = {fact_id: self.head(fact_id) for fact_id in {record.id for record in written}}
        return UndoReads(before, heads)

    def transaction_log(self, session_id: str | None, limit: int) -> list[TransactionEntry]:
        with self._lock:
            entries = [
                t
                for t in reversed(self.transactions)
                if t.kind == "write"
                and t.rolled_back_by is None
                and (session_id is None or t.session_id == session_id)
            ]
        return entries[:limit]

    def all_facts(self) -> list[FactRecord]:
        with self._lock:
            return sorted(self.facts.values(), key=lambda f: f.id)

    # -- internals ----------------------------------------------------------------------

    def _check(self, name: str, txid: str, writes: Sequence[FactWrite]) -> None:
        for write in writes:
            holder = self.locks.get(write.fact_id)
            if holder is not None and holder != txid:
                raise locked_conflict(name, txid, write.fact_id)
            current = self.facts.get(write.fact_id)
            actual = 0 if current is None else current.version
            if actual != write.expected_version:
                raise version_conflict(name, txid, write.fact_id, write.expected_version, actual)
            if isinstance(write, UpsertFact) and write.expected_version == 0:
                version = write.fact.version
                if any(r.version == version for r in self.history.get(write.fact_id, ())):
                    raise history_conflict(name, txid, write.fact_id, version)
            if isinstance(write, UpsertFact) and write.claim is not None:
                owner = self.claims.get(write.claim)
                if owner is not None and owner != write.fact_id:
                    raise claim_conflict(name, txid, write.claim, owner)
                locker = self.claim_locks.get(write.claim)
                if locker is not None and locker != txid:
                    raise claim_conflict(name, txid, write.claim, "staged by another transaction")

    def _apply(self, txid: str, writes: Sequence[FactWrite], meta: TransactionMeta) -> None:
        for write in writes:
            for claim in [c for c, owner in self.claims.items() if owner == write.fact_id]:
                del self.claims[claim]
            if isinstance(write, UpsertFact):
                self.facts[write.fact_id] = write.fact
                self.history.setdefault(write.fact_id, []).append(write.fact)
                if write.claim is not None:
                    self.claims[write.claim] = write.fact_id
            elif isinstance(write, DeleteFact):
                self.facts.pop(write.fact_id, None)
                if write.tombstone is not None:
                    self.history.setdefault(write.fact_id, []).append(write.tombstone)
        for undone in meta.undoes:
            self.transactions = [
                replace(t, rolled_back_by=txid) if t.txid == undone else t
                for t in self.transactions
            ]
        seq = self.transactions[-1].seq + 1 if self.transactions else 1
        self.transactions.append(
            TransactionEntry(
                seq,
                txid,
                meta.session_id,
                meta.kind,
                meta.undoes,
                None,
                time.time(),
                meta.actor,
                meta.reason,
            )
        )

    def _release(self, txid: str, writes: Sequence[FactWrite]) -> None:
        for write in writes:
            if self.locks.get(write.fact_id) == txid:
                del self.locks[write.fact_id]
            claim = write.claim if isinstance(write, UpsertFact) else None
            if claim is not None and self.claim_locks.get(claim) == txid:
                del self.claim_locks[claim]
