"""Simulated crashes, and small builders of facts and writes for tests."""

from __future__ import annotations

from coordinator import FactRecord, UpsertFact


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


def fact(fact_id: str, version: int, **payload: object) -> FactRecord:
    return FactRecord(fact_id, "note", dict(payload), version)


def upsert(fact_id: str, version: int, **payload: object) -> UpsertFact:
    return UpsertFact(fact(fact_id, version, **payload), version - 1)
