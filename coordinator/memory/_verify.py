"""Comparing derived stores with the source of truth, fact by fact (pure)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

from coordinator.abc import IndexContents
from coordinator.errors import LockstepError
from coordinator.records import FactRecord


@dataclass(frozen=True)
class IndexDrift:
    """How one index differs from the fact store.

    :ivar missing: facts the index should hold and does not.
    :ivar extra: facts the index holds that the store does not have (or not for it).
    :ivar stale: ``(fact_id, index_version, store_version)`` for out-of-date points.
    :ivar pending: txids with points still staged in the index.
    """

    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    stale: list[tuple[str, int, int]] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.stale or self.pending)


@dataclass(frozen=True)
class VerifyReport:
    """The result of ``verify()``: per index drift, and branches still staged anywhere."""

    facts: int
    indexes: dict[str, IndexDrift]
    staged: dict[str, list[str]]

    @property
    def clean(self) -> bool:
        return all(d.clean for d in self.indexes.values()) and not any(self.staged.values())

    @property
    def drifted_facts(self) -> int:
        return sum(len(d.missing) + len(d.extra) + len(d.stale) for d in self.indexes.values())

    def to_json(self) -> str:
        return json.dumps(
            {"facts": self.facts, "clean": self.clean, **asdict(self)}, indent=2, sort_keys=True
        )


def compare(
    facts: Sequence[FactRecord],
    contents: IndexContents,
    holds: Callable[[FactRecord], bool],
) -> IndexDrift:
    """The drift of one index, given what it holds and which facts it should hold."""
    expected = {f.id: f.version for f in facts if _holds(holds, f)}
    held: Mapping[str, int] = contents.committed
    return IndexDrift(
        missing=sorted(set(expected) - set(held)),
        extra=sorted(set(held) - set(expected)),
        stale=sorted(
            (fid, held[fid], version)
            for fid, version in expected.items()
            if fid in held and held[fid] != version
        ),
        pending=list(contents.pending),
    )


def _holds(holds: Callable[[FactRecord], bool], fact: FactRecord) -> bool:
    try:
        return holds(fact)
    except LockstepError:
        return False  # a fact the index cannot take was never sent to it
