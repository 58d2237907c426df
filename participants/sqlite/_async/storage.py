"""The SQLite participant (source of the generated sync twin)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from coordinator._acompat import ablocking
from coordinator.abc import AsyncDecisionLog, TransactionEntry, UndoReads, Vote
from coordinator.ids import check_participant_name
from coordinator.log import AsyncSQLiteDecisionLog, SQLiteDecisionLog
from coordinator.records import FactRecord, JSONValue, Write
from participants.sqlite._store import SQLiteStore


class AsyncSQLiteStorage:
    """Facts in a SQLite file: the embedded default storage (the source of truth).

    Staged rows and per-fact locks are committed durably at prepare (WAL,
    ``synchronous=FULL``); commit applies them in one local transaction. Several
    processes may share the file.

    :param path: the database file; created if missing.
    :param name: the participant name (recorded in the decision log; keep it stable).
    :param busy_timeout: seconds to wait for another writer's lock.
    :param group_commit: let concurrent one-phase and last-resource commits share one
        local transaction (one fsync); a refused one still fails alone.

    Your own SQL (``tx.execute(name, sql, params)``, ``?`` or ``:name`` parameters) runs
    in the same local transaction as the memory when this storage commits last with the
    decision (its file holds the decision log: the default without ``log=``) or alone;
    a transaction that would prepare it in two phases (a decision log elsewhere, with an
    index or mirror written too) is refused with a ``UsageError``. The statements may
    read Lockstep's tables but not write them, and may not end the transaction or run
    ``PRAGMA``, ``ATTACH`` or ``temp`` DDL.
    """

    runs_sql = True
    """``Execute`` writes (``tx.execute()``) run inside its local commits."""

    in_process = True
    """Its calls run inside this process, with no server to stop answering: the
    synchronous coordinator calls it on its own thread."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        name: str = "sqlite",
        busy_timeout: float = 30.0,
        group_commit: bool = True,
    ) -> None:
        self._name = check_participant_name(name)
        self.store = SQLiteStore(path, self._name, busy_timeout, group_commit)

    @property
    def name(self) -> str:
        return self._name

    async def prepare(self, txid: str, writes: Sequence[Write]) -> Vote:
        return await ablocking(self.store.prepare, txid, writes)

    async def commit(self, txid: str) -> None:
        await ablocking(self.store.commit, txid)

    async def abort(self, txid: str) -> None:
        await ablocking(self.store.abort, txid)

    async def commit_many(self, txids: Sequence[str]) -> None:
        await ablocking(self.store.commit_many, txids)

    async def abort_many(self, txids: Sequence[str]) -> None:
        await ablocking(self.store.abort_many, txids)

    async def recover(self) -> list[str]:
        return await ablocking(self.store.recover)

    async def commit_one_phase(self, txid: str, writes: Sequence[Write]) -> None:
        await ablocking(self.store.commit_one_phase, txid, writes)

    async def commit_with_decision(
        self, txid: str, writes: Sequence[Write], participants: Sequence[str]
    ) -> None:
        """Apply ``writes`` and record COMMIT for ``txid`` in one local transaction; this
        file must hold the decision log (see :meth:`default_decision_log`)."""
        await ablocking(self.store.commit_with_decision, txid, writes, participants)

    async def get(self, fact_id: str) -> FactRecord | None:
        return await ablocking(self.store.get, fact_id)

    async def head(self, fact_id: str) -> tuple[FactRecord | None, int]:
        return await ablocking(self.store.head, fact_id)

    async def get_many(self, fact_ids: Sequence[str]) -> dict[str, FactRecord]:
        return await ablocking(self.store.get_many, fact_ids)

    async def query(
        self,
        typename: str | None,
        filters: Mapping[str, JSONValue],
        session_id: str | None,
    ) -> list[FactRecord]:
        return await ablocking(self.store.query, typename, filters, session_id)

    async def history(self, fact_id: str) -> list[FactRecord]:
        return await ablocking(self.store.history, fact_id)

    async def versions(self, keys: Sequence[tuple[str, int]]) -> list[FactRecord]:
        return await ablocking(self.store.versions, keys)

    async def written_by(self, txids: Sequence[str]) -> list[FactRecord]:
        return await ablocking(self.store.written_by, txids)

    async def undo_reads(self, txids: Sequence[str]) -> UndoReads:
        return await ablocking(self.store.undo_reads, txids)

    async def transactions(self, session_id: str | None, limit: int) -> list[TransactionEntry]:
        return await ablocking(self.store.transactions, session_id, limit)

    async def all_facts(self) -> list[FactRecord]:
        return await ablocking(self.store.all_facts)

    def default_decision_log(self) -> AsyncDecisionLog:
        """A SQLite decision log in this store's own file, so the storage can commit last
        together with the decision; a log file left beside it by an earlier version
        (``<file>.decisions``, while this file holds no log of its own) is kept in use."""
        beside = self.store.path + ".decisions"
        if os.path.exists(beside) and not self.store.has_decision_table():
            return AsyncSQLiteDecisionLog(beside)
        return AsyncSQLiteDecisionLog(self.store.path)

    def has_decision_table(self) -> bool:
        """True when a decision log was opened on this store's own file."""
        return self.store.has_decision_table()

    def holds_decisions(self) -> bool:
        """True when this store's own file holds decision records."""
        return self.store.holds_decisions()

    async def decision_log_for(self, url: str) -> str | None:
        """The log URL to recover this store with, when its own file holds decisions and
        ``url`` names another log; ``None`` when ``url`` will do."""
        return await ablocking(self.store.decision_log_for, url)

    def holds_decision_log(self, log: object) -> bool:
        """True when ``log`` keeps its records in this store's own file."""
        inner = getattr(log, "sync", log)  # an async log wraps the synchronous one
        if not isinstance(inner, SQLiteDecisionLog):
            return False
        try:
            return os.path.samefile(inner.path, self.store.path)
        except OSError:
            return False

    async def close(self) -> None:
        await ablocking(self.store.close)
