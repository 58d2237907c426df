"""A participant wrapper that misbehaves on cue (source of the generated sync twin)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from coordinator import Decision, DecisionRecord, Vote, Write
from coordinator._acompat import asleep
from coordinator.abc import AsyncDecisionLog, AsyncParticipant
from coordinator.errors import DecisionLogError, ParticipantError


@dataclass
class Script:
    """What a flaky participant does next; tests flip these between steps."""

    vote_no: bool = False
    prepare_delay: float = 0.0
    commit_failures: int = 0
    commit_always_fails: bool = False
    recover_fails: bool = False
    calls: list[str] = field(default_factory=list)


class AsyncFlaky:
    """Wraps a participant; refuses, stalls or fails as its :class:`Script` says."""

    def __init__(self, inner: AsyncParticipant, script: Script | None = None) -> None:
        self.inner = inner
        self.script = script or Script()

    @property
    def name(self) -> str:
        return self.inner.name

    async def prepare(self, txid: str, writes: Sequence[Write]) -> Vote:
        self.script.calls.append("prepare")
        if self.script.prepare_delay:
            await asleep(self.script.prepare_delay)
        if self.script.vote_no:
            raise ParticipantError("injected NO vote", participant=self.name)
        return await self.inner.prepare(txid, writes)

    async def commit(self, txid: str) -> None:
        self.script.calls.append("commit")
        if self.script.commit_always_fails:
            raise ParticipantError("injected commit failure", participant=self.name)
        if self.script.commit_failures > 0:
            self.script.commit_failures -= 1
            raise ParticipantError("injected transient commit failure", participant=self.name)
        await self.inner.commit(txid)

    async def abort(self, txid: str) -> None:
        self.script.calls.append("abort")
        await self.inner.abort(txid)

    async def recover(self) -> list[str]:
        if self.script.recover_fails:
            raise ParticipantError("injected recover failure", participant=self.name)
        return await self.inner.recover()

    async def close(self) -> None:
        await self.inner.close()


class AsyncFailingLog:
    """Wraps a decision log; ``decide`` fails while ``failing`` is set (the log is down)."""

    def __init__(self, inner: AsyncDecisionLog) -> None:
        self.inner = inner
        self.failing = False

    async def decide(self, txid: str, decision: Decision, participants: Sequence[str]) -> Decision:
        if self.failing:
            raise DecisionLogError("injected: decision log unreachable")
        return await self.inner.decide(txid, decision, participants)

    async def decide_many(
        self, decisions: Sequence[tuple[str, Decision, Sequence[str]]]
    ) -> dict[str, Decision]:
        if self.failing:
            raise DecisionLogError("injected: decision log unreachable")
        return await self.inner.decide_many(decisions)

    async def records(self, txids: Iterable[str]) -> dict[str, DecisionRecord]:
        return await self.inner.records(txids)

    async def unended(self) -> list[DecisionRecord]:
        return await self.inner.unended()

    async def end(self, txids: Iterable[str]) -> None:
        await self.inner.end(txids)

    async def close(self) -> None:
        await self.inner.close()
