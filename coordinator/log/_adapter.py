"""An asynchronous face for a synchronous decision log (its calls run off the loop)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from coordinator._acompat import ablocking
from coordinator.abc import Decision, DecisionLog, DecisionRecord


class AsyncDecisionLogAdapter:
    """Implements :class:`~coordinator.abc.AsyncDecisionLog` over a thread-safe sync log.

    :ivar sync: the wrapped log, for code that needs the synchronous face too.
    """

    def __init__(self, log: DecisionLog) -> None:
        self.sync = log

    async def decide(self, txid: str, decision: Decision, participants: Sequence[str]) -> Decision:
        return await ablocking(self.sync.decide, txid, decision, participants)

    async def decide_many(
        self, decisions: Sequence[tuple[str, Decision, Sequence[str]]]
    ) -> dict[str, Decision]:
        return await ablocking(self.sync.decide_many, decisions)

    async def records(self, txids: Iterable[str]) -> dict[str, DecisionRecord]:
        return await ablocking(self.sync.records, list(txids))

    async def unended(self) -> list[DecisionRecord]:
        return await ablocking(self.sync.unended)

    async def end(self, txids: Iterable[str]) -> None:
        await ablocking(self.sync.end, list(txids))

    async def close(self) -> None:
        await ablocking(self.sync.close)
