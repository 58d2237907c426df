"""The in-process participant (source of the generated sync twin)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from coordinator.abc import AsyncDecisionLog, TransactionEntry, UndoReads, Vote
from coordinator.ids import check_participant_name
from coordinator.log import AsyncMemoryDecisionLog
from coordinator.records import FactRecord, JSONValue, Write
from participants.memory._backend import MemoryBackend


class AsyncInMemoryStorage:
    """A fact store in process memory: for tests, examples and prototypes.

    :param name: the participant name.
    :param backend: the store to use; share one backend between participant objects to
        model several clients of one database.
    """

    in_process = True
    """Its calls run inside this process, with no server to stop answering: the
    synchronous coordinator calls it on its own thread."""

    def __init__(self, name: str = "memory", backend: MemoryBackend | None = None) -> None:
        self._name = check_participant_name(name)
        self.backend = backend if backend is not None else MemoryBackend()

    @property
    def name(self) -> str:
        return self._name

    async def prepare(self, txid: str, writes: Sequence[Write]) -> Vote:
        return self.backend.prepare(self._name, txid, writes)

    async def commit(self, txid: str) -> None:
        self.backend.commit(txid)

    async def abort(self, txid: str) -> None:
        self.backend.abort(txid)

    async def recover(self) -> list[str]:
        return self.backend.recover()

    async def commit_one_phase(self, txid: str, writes: Sequence[Write]) -> None:
        self.backend.commit_one_phase(self._name, txid, writes)

    async def get(self, fact_id: str) -> FactRecord | None:
        return self.backend.get(fact_id)

    async def head(self, fact_id: str) -> tuple[FactRecord | None, int]:
        return self.backend.head(fact_id)

    async def get_many(self, fact_ids: Sequence[str]) -> dict[str, FactRecord]:
        return self.backend.get_many(fact_ids)

    async def query(
        self,
        typename: str | None,
        filters: Mapping[str, JSONValue],
        session_id: str | None,
    ) -> list[FactRecord]:
        return self.backend.query(typename, filters, session_id)

    async def history(self, fact_id: str) -> list[FactRecord]:
        return self.backend.history_of(fact_id)

    async def versions(self, keys: Sequence[tuple[str, int]]) -> list[FactRecord]:
        return self.backend.versions(keys)

    async def written_by(self, txids: Sequence[str]) -> list[FactRecord]:
        return self.backend.written_by(txids)

    async def undo_reads(self, txids: Sequence[str]) -> UndoReads:
        return self.backend.undo_reads(txids)

    async def transactions(self, session_id: str | None, limit: int) -> list[TransactionEntry]:
        return self.backend.transaction_log(session_id, limit)

    async def all_facts(self) -> list[FactRecord]:
        return self.backend.all_facts()

    def default_decision_log(self) -> AsyncDecisionLog:
        """An in-process log: this store does not outlive the process either."""
        return AsyncMemoryDecisionLog()

    async def close(self) -> None:
        """Nothing to release."""
