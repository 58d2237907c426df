"""How vector indexes stage a transaction as points (pure: no client, no I/O).

Every version of a fact is its own point, with a deterministic id derived from
``(fact_id, version, txid)``, so every retry of a transaction hits the same point, and two
transactions racing for the same version (one of which the storage will refuse) never
overwrite each other's staging. The point's payload carries
``fact_id``, ``version``, ``state`` (``pending`` until commit, then ``committed``),
``txid`` and ``op`` (``upsert``, or ``delete`` for the marker a staged delete leaves),
beside ``type``, ``session_id`` and the configured metadata fields, so operators and tools
can read an index directly.

Commit marks the transaction's points committed, then removes older versions of each
fact (and, for a delete, every version up to the marker). That phase 2 may be deferred:
searches return staged and committed upsert points, and the memory API keeps a point only
when it is the fact's committed version (by version, and for a staged point by txid).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from coordinator.abc import Embedder, Hit, embedder_name
from coordinator.embeddings import default_embedder, embedder_from_spec
from coordinator.errors import ConfigurationError, UsageError
from coordinator.ids import check_participant_name
from coordinator.plugins import query_flag
from coordinator.records import DeleteFact, FactRecord, JSONValue, UpsertFact, Write
from participants._checks import seconds_option
from participants._fence import AbortFence

T = TypeVar("T")
NAMESPACE = uuid.UUID("5d0c2b1e-8f2a-4d6b-9c1e-6c0f4e2a7b31")
PENDING = "pending"
COMMITTED = "committed"
RESERVED = ("fact_id", "version", "state", "txid", "op", "type", "session_id")


EMBEDDER_KEY = "lockstep_embedder"
"""The collection metadata key that records the embedder's name."""


def point_id(fact_id: str, version: int, txid: str) -> str:
    """The point ``txid`` stages for version ``version`` of ``fact_id`` (a UUID string)."""
    return str(uuid.uuid5(NAMESPACE, f"{fact_id}\x1f{version}\x1f{txid}"))


@dataclass(frozen=True)
class IndexShape:
    """What an index embeds and stores, as configured by its constructor."""

    name: str
    dim: int
    text_field: str | None = None
    metadata_fields: tuple[str, ...] = ()
    target_types: frozenset[str] | None = None

    def __post_init__(self) -> None:
        clash = sorted(set(self.metadata_fields) & set(RESERVED))
        if clash:
            raise ConfigurationError(
                f"metadata_fields {clash} clash with the index's own payload keys {RESERVED}"
            )

    def text_of(self, fact: FactRecord) -> str | None:
        """The text to embed, or ``None`` when this index does not hold facts of this type.

        :raises UsageError: the configured ``text_field`` is missing or not a string.
        """
        if self.target_types is not None and fact.type not in self.target_types:
            return None
        payload = fact.payload
        if self.text_field is not None:
            text = payload.get(self.text_field)
            if not isinstance(text, str) or not text.strip():
                raise UsageError(
                    f"fact {fact.id!r}: the index {self.name!r} embeds payload field "
                    f"{self.text_field!r}, which is missing or not a non-empty string"
                )
            return text
        for key in ("content", "text"):
            value = payload.get(key)
            if isinstance(value, str) and value.strip():
                return value
        return json.dumps(payload, sort_keys=True, ensure_ascii=False)

    def metadata_of(self, fact: FactRecord) -> dict[str, JSONValue]:
        """The configured metadata fields of ``fact`` (scalars only; missing ones left out)."""
        found: dict[str, JSONValue] = {}
        for field in self.metadata_fields:
            value = fact.payload.get(field)
            if value is None:
                continue
            if not isinstance(value, str | int | float | bool):
                raise UsageError(
                    f"fact {fact.id!r}: metadata field {field!r} must be a str, number or bool "
                    f"for the index {self.name!r}, got {type(value).__name__}"
                )
            found[field] = value
        return found


@dataclass(frozen=True)
class Point:
    id: str
    vector: list[float]
    payload: dict[str, JSONValue]


def stage(shape: IndexShape, txid: str, writes: Sequence[Write]) -> list[Point]:
    """The pending points that stage ``writes`` (checked before anything is written).

    :raises UsageError: an upsert without an embedding, or one of the wrong dimension;
        a metadata field that is not a scalar.
    """
    points: list[Point] = []
    for write in writes:
        if isinstance(write, UpsertFact):
            fact = write.fact
            if write.embedding is None:
                raise UsageError(
                    f"fact {fact.id!r} reached the index {shape.name!r} without an embedding",
                    participant=shape.name,
                )
            if len(write.embedding) != shape.dim:
                raise UsageError(
                    f"fact {fact.id!r}: embedding has {len(write.embedding)} dimensions; the "
                    f"index {shape.name!r} holds {shape.dim}",
                    participant=shape.name,
                )
            payload = base_payload(
                fact.id, fact.version, txid, "upsert", fact.type, fact.session_id
            )
            payload.update(shape.metadata_of(fact))
            points.append(
                Point(point_id(fact.id, fact.version, txid), list(write.embedding), payload)
            )
        elif isinstance(write, DeleteFact):
            version = write.expected_version + 1
            kind = write.tombstone.type if write.tombstone is not None else ""
            payload = base_payload(write.fact_id, version, txid, "delete", kind, None)
            points.append(
                Point(point_id(write.fact_id, version, txid), marker_vector(shape.dim), payload)
            )
    return points


def base_payload(
    fact_id: str, version: int, txid: str, op: str, kind: str, session_id: str | None
) -> dict[str, JSONValue]:
    payload: dict[str, JSONValue] = {
        "fact_id": fact_id,
        "version": version,
        "state": PENDING,
        "txid": txid,
        "op": op,
        "type": kind,
    }
    if session_id is not None:
        payload["session_id"] = session_id
    return payload


def marker_vector(dim: int) -> list[float]:
    """The vector of a delete marker (never returned by search: ``op`` is ``delete``)."""
    return [1.0] + [0.0] * (dim - 1)


def search_filter(where: Mapping[str, JSONValue]) -> dict[str, JSONValue]:
    """Equality conditions a search adds to ``where``: upsert points (staged or committed;
    the caller keeps the current ones)."""
    return {**where, "op": "upsert"}


def replaced_bounds(points: Iterable[tuple[str, int, str]]) -> dict[str, int]:
    """``fact_id -> bound`` for committed ``(fact_id, version, op)`` points: committing
    them replaces each fact's versions below its bound (an upsert: the older versions; a
    delete marker: every version up to and including itself)."""
    bounds: dict[str, int] = {}
    for fact_id, version, op in points:
        bound = version + 1 if op == "delete" else version
        bounds[fact_id] = max(bounds.get(fact_id, 0), bound)
    return bounds


def markers_last(ids: Sequence[T], markers: Collection[T]) -> list[list[T]]:
    """``ids`` to delete in two rounds, the transaction's own delete ``markers`` last: a
    store that deletes point by point and is cut short still holds the marker, from which
    committing again finishes the delete."""
    rounds = [[i for i in ids if i not in markers], [i for i in ids if i in markers]]
    return [r for r in rounds if r]


def configured(names: Sequence[str], payload: Mapping[str, Any]) -> dict[str, JSONValue]:
    """The configured metadata fields ``names`` a point's ``payload`` carries."""
    return {name: payload[name] for name in names if name in payload}


def hit_of(payload: Mapping[str, JSONValue], score: float) -> Hit:
    """The :class:`Hit` of a point found by a search."""
    return Hit(
        str(payload["fact_id"]),
        int(str(payload["version"])),
        score,
        str(payload["txid"]) if payload.get("txid") is not None else None,
        payload.get("state") == COMMITTED,
    )


class VectorIndexBase:
    """What every vector index participant shares: its name, embedder and shape.

    :param default_name: ``<backend>:<collection>`` when no ``name`` is given.
    """

    in_process = False
    """True for an engine inside this process (Qdrant local mode or Edge, Chroma
    embedded), with no server to stop answering: the synchronous coordinator calls it on
    its own thread."""

    def __init__(
        self,
        default_name: str,
        text_field: str | None,
        metadata_fields: Sequence[str] | None,
        embedder: Embedder | None,
        target_types: Sequence[str] | None,
        name: str | None,
    ) -> None:
        self._name = check_participant_name(name or default_name)
        self._embedder = embedder or default_embedder()
        self.shape = IndexShape(
            self._name,
            self._embedder.dim,
            text_field,
            tuple(metadata_fields or ()),
            None if target_types is None else frozenset(target_types),
        )
        self._fence = AbortFence(self._name)

    @property
    def name(self) -> str:
        return self._name

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    @property
    def metadata_fields(self) -> tuple[str, ...]:
        return self.shape.metadata_fields

    def text_of(self, fact: FactRecord) -> str | None:
        return self.shape.text_of(fact)

    def recorded_embedder(self) -> dict[str, JSONValue]:
        """What a new collection records of the embedder (nothing when it has no name)."""
        name = embedder_name(self._embedder)
        return {} if name is None else {EMBEDDER_KEY: name}

    def check_embedder(self, recorded: Mapping[str, Any] | None, collection: str) -> None:
        """Refuse a collection whose points another model embedded.

        :raises ConfigurationError: the collection records an embedder of another name.
        """
        theirs = (recorded or {}).get(EMBEDDER_KEY)
        ours = embedder_name(self._embedder)
        if theirs is not None and ours is not None and theirs != ours:
            raise ConfigurationError(
                f"collection {collection!r} holds vectors embedded by {theirs!r}; this index "
                f"embeds with {ours!r}, whose vectors cannot be compared with them. Open it "
                "with the same embedder, or write the memories to a new collection",
                participant=self._name,
            )


@dataclass(frozen=True)
class UrlOptions:
    """An index URL's query parameters (``collection``, ``text_field``,
    ``metadata_fields``, ``types``, ``embedder``, and for Chroma ``combine_writes``,
    ``sync_threshold`` and ``answer_timeout``), parsed once for every backend."""

    collection: str
    text_field: str | None
    metadata_fields: list[str]
    target_types: list[str] | None
    embedder: Embedder | None
    combine_writes: bool = True
    sync_threshold: int | None = None  # None: the participant's default
    answer_timeout: float | None = None  # None: the participant's default


def url_options(url: str, embedder: Embedder | None) -> UrlOptions:
    """Parse an index URL's query; an ``embedder=`` spec (``hashing:32``) applies when no
    embedder object is given, so the CLI and the daemon can open an index made with it."""
    from urllib.parse import parse_qs, urlsplit

    params = {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
    if embedder is None and "embedder" in params:
        embedder = embedder_from_spec(params["embedder"])
    return UrlOptions(
        collection=params.get("collection", "memories"),
        text_field=params.get("text_field"),
        metadata_fields=[f for f in params.get("metadata_fields", "").split(",") if f],
        target_types=[t for t in params.get("types", "").split(",") if t] or None,
        embedder=embedder,
        combine_writes=query_flag(url, "combine_writes"),
        sync_threshold=_whole_number(params, "sync_threshold"),
        answer_timeout=(
            seconds_option("index", "answer_timeout", params["answer_timeout"])
            if "answer_timeout" in params
            else None
        ),
    )


def _whole_number(params: dict[str, str], key: str) -> int | None:
    if key not in params:
        return None
    try:
        return int(params[key])
    except ValueError:
        raise ConfigurationError(
            f"the index URL's {key} must be a whole number, got {params[key]!r}"
        ) from None
