"""Comparing derived stores with the source of truth, fact by fact (pure)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

from coordinator.abc import IndexContents
from coordinator.errors import LockstepError
from coordinator.records import FactRecord, JSONValue


@dataclass(frozen=True)
class Drift:
    """How one derived store (a vector index or a mirror) differs from the storage.

    :ivar missing: facts it should hold and does not.
    :ivar extra: facts it holds that the storage does not have (or not for it).
    :ivar stale: ``(fact_id, its_version, storage_version)`` for out-of-date copies (a
        mirror's copy at the right version but with other contents counts as stale too,
        as does an index point at the right version whose configured metadata fields
        differ from the fact's: one written before a field was added to
        ``metadata_fields``, which a search filter on that field would miss).
    :ivar pending: txids with points still staged in an index.
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
    """The result of ``verify()``: the drift of each derived store (by participant name),
    and the branches still staged in each storage."""

    facts: int
    derived: dict[str, Drift]
    staged: dict[str, list[str]]

    @property
    def clean(self) -> bool:
        return all(d.clean for d in self.derived.values()) and not any(self.staged.values())

    @property
    def drifted_facts(self) -> int:
        return sum(len(d.missing) + len(d.extra) + len(d.stale) for d in self.derived.values())

    def to_json(self) -> str:
        return json.dumps(
            {"facts": self.facts, "clean": self.clean, **asdict(self)}, indent=2, sort_keys=True
        )


def compare(
    facts: Sequence[FactRecord],
    contents: IndexContents,
    holds: Callable[[FactRecord], bool],
    metadata_fields: Sequence[str] = (),
) -> Drift:
    """The drift of one index, given what it holds, which facts it should hold, and the
    payload fields its points should carry."""
    expected = {f.id: f for f in facts if _holds(holds, f)}
    held: Mapping[str, int] = contents.committed
    return Drift(
        missing=sorted(set(expected) - set(held)),
        extra=sorted(set(held) - set(expected)),
        stale=sorted(
            (fid, held[fid], fact.version)
            for fid, fact in expected.items()
            if fid in held
            and (
                held[fid] != fact.version
                or (
                    fid in contents.fields
                    and not _carries(contents.fields[fid], fact, metadata_fields)
                )
            )
        ),
        pending=list(contents.pending),
    )


def _carries(
    point: Mapping[str, JSONValue], fact: FactRecord, metadata_fields: Sequence[str]
) -> bool:
    """True when ``point`` carries each configured field as the fact's payload has it
    (a field missing or null in the payload is missing from the point; one holding a
    list or dict cannot be indexed, and is not compared)."""
    for name in metadata_fields:
        value = fact.payload.get(name)
        if value is None:
            if name in point:
                return False
        elif isinstance(value, str | int | float | bool):
            held = point.get(name, _MISSING)
            if isinstance(held, bool) != isinstance(value, bool) or held != value:
                return False
    return True


_MISSING = object()


def _holds(holds: Callable[[FactRecord], bool], fact: FactRecord) -> bool:
    try:
        return holds(fact)
    except LockstepError:
        return False  # a fact the index cannot take was never sent to it


def compare_copies(facts: Sequence[FactRecord], copies: Sequence[FactRecord]) -> Drift:
    """The drift of a mirror: every fact of the storage, copied at its version."""
    expected = {f.id: f for f in facts}
    held = {f.id: f for f in copies}
    return Drift(
        missing=sorted(set(expected) - set(held)),
        extra=sorted(set(held) - set(expected)),
        stale=sorted(
            (fid, held[fid].version, fact.version)
            for fid, fact in expected.items()
            if fid in held and _content(held[fid]) != _content(fact)
        ),
    )


def _content(fact: FactRecord) -> tuple[object, ...]:
    return (fact.version, fact.type, fact.payload, fact.session_id, fact.source)
