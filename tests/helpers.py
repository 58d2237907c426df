"""Fault injection for tests: simulated crashes and participants that misbehave on cue."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from coordinator import FactRecord, UpsertFact, Vote, Write
from coordinator.abc import Participant
from coordinator.errors import ParticipantError


class SimulatedCrash(BaseException):
    """The process 'dies' here: nothing in the driver catches or cleans up after it."""


class CrashAt:
    """A fault hook that raises :class:`SimulatedCrash` the first time ``point`` is reached."""

    def __init__(self, point: str | None) -> None:
        self.point = point
        self.seen: list[str] = []
        self.fired = False

    def __call__(self, point: str) -> None:
        self.seen.append(point)
        if not self.fired and point == self.point:
            self.fired = True
            raise SimulatedCrash(point)


@dataclass
class Script:
    """What a :class:`Flaky` participant does next; tests flip these between steps."""

    vote_no: bool = False
    prepare_error: bool = False
    prepare_delay: float = 0.0
    commit_failures: int = 0
    commit_always_fails: bool = False
    recover_fails: bool = False
    calls: list[str] = field(default_factory=list)


class Flaky:
    """Wraps a participant and misbehaves as its :class:`Script` says."""

    def __init__(self, inner: Participant, script: Script | None = None) -> None:
        self.inner = inner
        self.script = script or Script()
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.inner.name

    def prepare(self, txid: str, writes: Sequence[Write]) -> Vote:
        self.script.calls.append(f"prepare:{txid}")
        if self.script.prepare_delay:
            time.sleep(self.script.prepare_delay)
        if self.script.prepare_error:
            raise ParticipantError("injected prepare failure", participant=self.name)
        if self.script.vote_no:
            raise ParticipantError("injected NO vote", participant=self.name)
        return self.inner.prepare(txid, writes)

    def commit(self, txid: str) -> None:
        self.script.calls.append(f"commit:{txid}")
        with self._lock:
            if self.script.commit_always_fails:
                raise ParticipantError("injected commit failure", participant=self.name)
            if self.script.commit_failures > 0:
                self.script.commit_failures -= 1
                raise ParticipantError("injected transient commit failure", participant=self.name)
        self.inner.commit(txid)

    def abort(self, txid: str) -> None:
        self.script.calls.append(f"abort:{txid}")
        self.inner.abort(txid)

    def recover(self) -> list[str]:
        if self.script.recover_fails:
            raise ParticipantError("injected recover failure", participant=self.name)
        return self.inner.recover()

    def close(self) -> None:
        self.inner.close()


def fact(fact_id: str, version: int, **payload: object) -> FactRecord:
    return FactRecord(fact_id, "note", dict(payload), version)


def upsert(fact_id: str, version: int, **payload: object) -> UpsertFact:
    return UpsertFact(fact(fact_id, version, **payload), version - 1)
