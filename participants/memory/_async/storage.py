"""The in-process participant (source of the generated sync twin)."""

from __future__ import annotations

from collections.abc import Sequence

from coordinator.abc import Vote
from coordinator.ids import check_participant_name
from coordinator.records import FactRecord, Write
from participants.memory._backend import MemoryBackend


class AsyncInMemoryStorage:
    """A fact store in process memory: for tests, examples and prototypes.

    :param name: the participant name.
    :param backend: the store to use; share one backend between participant objects to
        model several clients of one database.
    """

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

    async def all_facts(self) -> list[FactRecord]:
        return self.backend.all_facts()

    async def close(self) -> None:
        """Nothing to release."""
