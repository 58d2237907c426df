"""What a transaction writes: fact records and the typed intents participants stage.

These are plain frozen dataclasses, shared by the pure core, the drivers and every
participant. The memory API builds them; participants stage and apply them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

JSONValue: TypeAlias = Any
"""A value that survives ``json.dumps``/``json.loads`` unchanged."""


@dataclass(frozen=True, slots=True)
class FactRecord:
    """One committed (or staged) version of a fact.

    ``version`` starts at 1 and grows by one with every committed change.
    """

    id: str
    type: str
    payload: Mapping[str, JSONValue]
    version: int
    session_id: str | None = None
    source: str | None = None
    actor: str | None = None
    reason: str | None = None
    ts: float = 0.0
    txid: str | None = None
    deleted: bool = False
    """True for the tombstone version a delete leaves in history."""

    def to_json(self) -> str:
        """Serialise to a JSON object (stable key order)."""
        return json.dumps(
            {
                "id": self.id,
                "type": self.type,
                "payload": self.payload,
                "version": self.version,
                "session_id": self.session_id,
                "source": self.source,
                "actor": self.actor,
                "reason": self.reason,
                "ts": self.ts,
                "txid": self.txid,
                "deleted": self.deleted,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> FactRecord:
        """Parse what :meth:`to_json` wrote."""
        data = json.loads(text)
        return cls(**data)


@dataclass(frozen=True, slots=True)
class UpsertFact:
    """Write ``fact`` as the fact's next version.

    The participant refuses (votes no with :class:`~coordinator.errors.VersionConflict`)
    unless the fact's committed version is ``expected_version`` (0: the fact must not exist)
    and no other transaction holds it staged.

    :ivar embedding: the vector an index stores for this version (computed before prepare,
        outside any lock); storages ignore it.
    :ivar claim: a uniqueness claim (a singleton key) that no other fact may hold; a storage
        refuses the write with ``VersionConflict`` when another fact holds or stages it.
    """

    fact: FactRecord
    expected_version: int
    embedding: tuple[float, ...] | None = None
    claim: str | None = None

    @property
    def fact_id(self) -> str:
        return self.fact.id


@dataclass(frozen=True, slots=True)
class DeleteFact:
    """Delete the fact whose committed version is ``expected_version``.

    ``tombstone`` describes the deletion (actor, reason, txid, version = expected + 1) so
    that history keeps it.
    """

    fact_id: str
    expected_version: int
    tombstone: FactRecord | None = None


@dataclass(frozen=True, slots=True)
class TransactionMeta:
    """What a storage records about the transaction itself, for history and rollback.

    :ivar session_id: the session the change was made in.
    :ivar kind: ``"write"`` for ordinary changes, ``"rollback"`` for a compensation.
    :ivar undoes: the txids a rollback compensates; the storage marks them rolled back.
    """

    session_id: str | None = None
    kind: str = "write"
    undoes: tuple[str, ...] = ()
    actor: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Execute:
    """The caller's own SQL statement, run inside the participant's branch."""

    sql: str
    params: Sequence[JSONValue] | Mapping[str, JSONValue] = field(default_factory=tuple)


Write: TypeAlias = UpsertFact | DeleteFact | TransactionMeta | Execute
"""A typed intent staged by a participant at prepare and applied at commit."""

CLAIM_SEPARATOR = "\x1f"


def singleton_claim(typename: str, key: str, value: JSONValue) -> str:
    """The claim an :class:`UpsertFact` makes for a singleton key: unique per store."""
    return CLAIM_SEPARATOR.join((typename, key, json.dumps(value, sort_keys=True)))


_NUL = "holds a NUL character, which Postgres cannot store"
_SURROGATE = (
    "holds a lone surrogate, which is not Unicode text (UTF-8 cannot encode it, so Postgres, "
    "Chroma and Qdrant's server refuse it): decode the bytes it came from with "
    "errors='replace'"
)


def unstorable_text(value: str) -> str | None:
    """Why no store keeps the str ``value`` as given (a phrase, "holds ..."), or ``None``:
    a NUL character, or a lone surrogate (half a UTF-16 pair, as decoding bytes with
    ``errors='surrogateescape'`` leaves: the one kind of str UTF-8 cannot encode). SQLite
    would keep either where Postgres refuses it, so the memory API refuses both first."""
    if "\x00" in value:
        return _NUL
    if value.isascii():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE
    return None


INT64 = range(-(2**63), 2**63)
"""The integers every store keeps and compares as given."""
_BIG_INT = (
    "is outside the signed 64-bit range: Chroma keeps such an int as a float and SQLite "
    "compares it as one, so it would not read back, or match a filter, as given; store it "
    "as a str"
)


def unstorable_int(value: int) -> str | None:
    """Why no store keeps the int ``value`` as given (a phrase, "is ..."), or ``None``."""
    return None if value in INT64 else _BIG_INT
