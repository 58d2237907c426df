"""The SQLite participant (source of the generated sync twin)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from coordinator._acompat import ablocking
from coordinator.abc import Vote
from coordinator.ids import check_participant_name
from coordinator.records import FactRecord, Write
from participants.sqlite._store import SQLiteStore


class AsyncSQLiteStorage:
    """Facts in a SQLite file: the embedded default storage (the source of truth).

    Staged rows and per-fact locks are committed durably at prepare (WAL,
    ``synchronous=FULL``); commit applies them in one local transaction. Several
    processes may share the file.

    :param path: the database file; created if missing.
    :param name: the participant name (recorded in the decision log; keep it stable).
    :param busy_timeout: seconds to wait for another writer's lock.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, name: str = "sqlite", busy_timeout: float = 30.0
    ) -> None:
        self._name = check_participant_name(name)
        self.store = SQLiteStore(path, self._name, busy_timeout)

    @property
    def name(self) -> str:
        return self._name

    async def prepare(self, txid: str, writes: Sequence[Write]) -> Vote:
        return await ablocking(self.store.prepare, txid, writes)

    async def commit(self, txid: str) -> None:
        await ablocking(self.store.commit, txid)

    async def abort(self, txid: str) -> None:
        await ablocking(self.store.abort, txid)

    async def recover(self) -> list[str]:
        return await ablocking(self.store.recover)

    async def commit_one_phase(self, txid: str, writes: Sequence[Write]) -> None:
        await ablocking(self.store.commit_one_phase, txid, writes)

    async def get(self, fact_id: str) -> FactRecord | None:
        return await ablocking(self.store.get, fact_id)

    async def all_facts(self) -> list[FactRecord]:
        return await ablocking(self.store.all_facts)

    async def close(self) -> None:
        await ablocking(self.store.close)
