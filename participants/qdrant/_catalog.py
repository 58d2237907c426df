"""A local-mode collection's Lockstep points, by fact, by transaction and by the values of
their payload fields, kept in memory.

Qdrant's local mode keeps every point in process memory and answers a filter by testing
every point, so a commit that finds its points by ``txid`` and the versions they replace
by ``fact_id`` costs two passes over the collection: commits grow slower with every fact
stored. The catalog answers those lookups from dictionaries instead, and the writes go by
point id. A search, too, learns from it how many points meet its conditions (and which),
so that it can do without a filter, whose every condition local mode tests on every point
in Python. It is valid because local mode locks its directory to one process, and the
catalog and the guard that serialises every call on the client are shared by every index
on the same client. It is loaded with one scroll when the collection is opened, updated
after each write succeeded, and loaded again after any write failed.

Local mode also keeps each collection's points in a SQLite file that it commits once per
point, in SQLite's default rollback-journal mode (several fsyncs a commit).
:func:`write_ahead_log` switches that file to WAL with ``synchronous=FULL``: one fsync a
commit, just as durable (the setting stays with the file). A batch of phase-2 work
(recovery, deferred finishing) goes further with :func:`synced_once`: its point commits
are appended to the WAL unsynced and made durable together by one checkpoint before the
batch returns, so before the decision log records the batch's END. A crash in between
loses at most a tail of the batch (the WAL keeps its prefix), which is redone from the log.

Local mode deletes a point from its file but only marks it deleted in memory, where its
vector and payload stay, and every search goes over it again. Each update of a memory
writes a new point and deletes the old one, so a process that lives long holds every
version it ever wrote: :func:`compact` drops the deleted points once they are most of
what it holds in memory.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from coordinator.abc import Hit
from participants._vectors import COMMITTED, PENDING

log = logging.getLogger("lockstep.qdrant")


@dataclass
class Entry:
    fact_id: str
    version: int
    txid: str
    op: str
    state: str
    #: The payload's other keys (type, session_id, metadata fields): what searches filter on.
    fields: Mapping[str, Any] = field(default_factory=dict)


class PointCatalog:
    """Lockstep's points of one collection: ``id -> Entry``, with indexes by fact, by txid
    and, for upsert points, by the values of their other payload fields."""

    def __init__(self) -> None:
        self.loaded = False
        self._points: dict[str, Entry] = {}
        self._by_fact: dict[str, set[str]] = {}
        self._by_txid: dict[str, set[str]] = {}
        self._markers: set[str] = set()  # delete markers' ids
        self._by_value: dict[tuple[str, str, Any], set[str]] = {}  # see _value_key

    def load(self, points: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        """Start from what the collection holds: ``(point id, payload)`` pairs."""
        self._points.clear()
        self._by_fact.clear()
        self._by_txid.clear()
        self._markers.clear()
        self._by_value.clear()
        for point_id, payload in points:
            self.add(point_id, payload)
        self.loaded = True

    def add(self, point_id: str, payload: Mapping[str, Any]) -> None:
        if "fact_id" not in payload or "txid" not in payload:
            return  # not a Lockstep point
        self.remove([point_id])
        entry = Entry(
            str(payload["fact_id"]),
            int(payload["version"]),
            str(payload["txid"]),
            str(payload.get("op", "upsert")),
            str(payload.get("state", PENDING)),
            {key: value for key, value in payload.items() if key not in _OWN},
        )
        self._points[point_id] = entry
        self._by_fact.setdefault(entry.fact_id, set()).add(point_id)
        self._by_txid.setdefault(entry.txid, set()).add(point_id)
        if entry.op == "delete":
            self._markers.add(point_id)
        for value_key in _value_keys(entry):
            self._by_value.setdefault(value_key, set()).add(point_id)

    def remove(self, point_ids: Iterable[str]) -> None:
        for point_id in point_ids:
            entry = self._points.pop(point_id, None)
            if entry is None:
                continue
            self._markers.discard(point_id)
            for index, key in ((self._by_fact, entry.fact_id), (self._by_txid, entry.txid)):
                _drop(index, key, point_id)
            for value_key in _value_keys(entry):
                _drop(self._by_value, value_key, point_id)

    def mark_committed(self, point_ids: Iterable[str]) -> None:
        for point_id in point_ids:
            entry = self._points.get(point_id)
            if entry is not None:
                entry.state = COMMITTED

    def of(self, txids: Iterable[str]) -> dict[str, Entry]:
        """The points the transactions staged (or committed)."""
        return {
            point_id: self._points[point_id]
            for txid in txids
            for point_id in self._by_txid.get(txid, ())
        }

    def replaced(self, bounds: Mapping[str, int]) -> list[str]:
        """Points of each fact whose version is below its bound."""
        return [
            point_id
            for fact_id, bound in bounds.items()
            for point_id in self._by_fact.get(fact_id, ())
            if self._points[point_id].version < bound
        ]

    def markers(self) -> int:
        """How many delete markers the collection holds."""
        return len(self._markers)

    def __len__(self) -> int:
        return len(self._points)

    def matching(self, where: Mapping[str, Any]) -> set[str]:
        """Upsert points whose payload holds each of ``where``'s values, compared as JSON
        (and as Qdrant's match does): ``1`` is ``1.0``, ``True`` is not ``1``."""
        found: list[set[str]] = []
        for key, value in where.items():
            value_key = _value_key(key, value)
            ids = None if value_key is None else self._by_value.get(value_key)
            if not ids:
                return set()
            found.append(ids)
        found.sort(key=len)
        return found[0].intersection(*found[1:])

    def hits(self, points: Iterable[Any], among: set[str] | None = None) -> list[Hit]:
        """The hits of the upsert points among ``points`` (Qdrant's scored points, in
        order; only those ``among``, when given), from what the catalog holds."""
        hits: list[Hit] = []
        for point in points:
            point_id = str(point.id)
            entry = self._points.get(point_id)
            if (
                entry is None
                or entry.op != "upsert"
                or (among is not None and point_id not in among)
            ):
                continue
            committed = entry.state == COMMITTED
            hits.append(
                Hit(entry.fact_id, entry.version, float(point.score), entry.txid, committed)
            )
        return hits

    def pending(self) -> set[str]:
        """Txids with points still staged."""
        return {e.txid for e in self._points.values() if e.state == PENDING}


_OWN = ("fact_id", "version", "txid", "op", "state")


def _value_key(key: str, value: Any) -> tuple[str, str, Any] | None:
    """The index key of field ``key`` holding ``value``, equal for values JSON holds equal
    (``1`` and ``1.0``; ``True`` apart from ``1``); ``None`` for a value no search matches."""
    if isinstance(value, bool):
        return key, "bool", value
    if isinstance(value, int | float):
        return key, "number", value
    if isinstance(value, str):
        return key, "str", value
    return None


def _value_keys(entry: Entry) -> list[tuple[str, str, Any]]:
    """The value index keys of an upsert point (a marker is never searched for)."""
    if entry.op != "upsert":
        return []
    keys = (_value_key(key, value) for key, value in entry.fields.items())
    return [key for key in keys if key is not None]


def _drop(index: dict[Any, set[str]], key: Any, point_id: str) -> None:
    ids = index[key]
    ids.discard(point_id)
    if not ids:
        del index[key]


@dataclass
class _Local:
    guard: Any
    catalogs: dict[str, PointCatalog]


_SHARED: weakref.WeakKeyDictionary[Any, _Local] = weakref.WeakKeyDictionary()


def shared_local(client: Any, collection: str, make_lock: Any) -> tuple[Any, PointCatalog]:
    """The guard of a local-mode ``client`` (it is not safe for concurrent callers) and the
    catalog of ``collection`` on it, both shared by every index that uses them."""
    local = _SHARED.get(client)
    if local is None:
        local = _SHARED[client] = _Local(make_lock(), {})
    return local.guard, local.catalogs.setdefault(collection, PointCatalog())


def write_ahead_log(client: Any, collection: str) -> bool:
    """Put the points file of a local-mode ``collection`` in WAL mode, ``synchronous=FULL``
    (call with the client's guard held). False, and nothing changed, when the client does
    not keep the file where this version of qdrant-client does."""
    connection = points_file(client, collection)
    if connection is None:
        return False
    try:
        mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        connection.execute("PRAGMA synchronous=FULL")
    except sqlite3.Error as exc:  # e.g. a connection bound to another thread
        log.info("Qdrant local collection %r keeps its journal mode: %s", collection, exc)
        return False
    return str(mode).lower() == "wal"


@contextlib.contextmanager
def synced_once(client: Any, collection: str) -> Iterator[None]:
    """(Guard held.) The point writes inside share one fsync, taken before this returns.

    :raises sqlite3.OperationalError: the closing checkpoint could not copy every frame
        (another connection reading the file); the batch is then not known to be durable.
    """
    connection = points_file(client, collection)
    if connection is None or connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        yield
        return
    connection.execute("PRAGMA synchronous=NORMAL")
    try:
        yield
    finally:
        connection.execute("PRAGMA synchronous=FULL")
    # Syncs the WAL, copies it into the file and syncs that: every commit above is durable.
    busy, frames, copied = connection.execute("PRAGMA wal_checkpoint(FULL)").fetchone()
    if busy or frames != copied:
        raise sqlite3.OperationalError(
            f"checkpoint of Qdrant collection {collection!r} copied {copied} of {frames} "
            "frames (the file is being read elsewhere); the batch is redone from the log"
        )


def points_file(client: Any, collection: str) -> sqlite3.Connection | None:
    """The SQLite connection in which a local-mode client keeps ``collection``'s points."""
    connection = getattr(
        getattr(_local_collection(client, collection), "storage", None), "storage", None
    )
    return connection if isinstance(connection, sqlite3.Connection) else None


def _local_collection(client: Any, collection: str) -> Any:
    """The object in which a local-mode client keeps ``collection`` (``None``: not one)."""
    return getattr(getattr(client, "_client", None), "collections", {}).get(collection)


COMPACT_AFTER = 1024
"""Deleted points a local-mode collection may hold in memory before :func:`compact`
drops them, once they also outnumber its live points."""


def compaction_due(client: Any, collection: str) -> bool:
    """(Guard held; cheap.) True when a local-mode ``collection`` holds at least
    :data:`COMPACT_AFTER` deleted points in memory and more deleted points than live
    ones, and is kept in a file this version of qdrant-client can reload it from."""
    old = _local_collection(client, collection)
    deleted = getattr(old, "deleted", None)
    if deleted is None or not getattr(old, "persistent", False):
        return False
    if not hasattr(client._client, "_collection_path"):
        return False
    dead = int(deleted.sum())
    return dead >= COMPACT_AFTER and dead > len(deleted) - dead


def compact(client: Any, collection: str) -> bool:
    """(Guard held; when :func:`compaction_due`.) Drop a local-mode ``collection``'s
    deleted points from memory: in place when it is laid out as this version of
    qdrant-client lays it out (a copy of its live rows: milliseconds, and no new objects),
    else by reloading it from its points file, as the client does when it opens (about a
    live point's load for each deleted point dropped). False, and nothing changed, when
    the reload failed."""
    local = client._client
    collections = local.collections
    old = collections[collection]
    dead = int(old.deleted.sum())
    if _drop_deleted_rows(old):
        log.info("Qdrant local collection %r: %d deleted points dropped", collection, dead)
        return True
    reopen = local._collection_path
    try:
        fresh = type(old)(
            old.config,
            reopen(collection),
            force_disable_check_same_thread=bool(
                getattr(local, "force_disable_check_same_thread", False)
            ),
        )
    except Exception as exc:  # the collection in memory is as it was: only slower
        log.warning("Qdrant local collection %r could not be reloaded: %s", collection, exc)
        return False
    fresh.text_indexes = old.text_indexes
    old.close()
    collections[collection] = fresh
    write_ahead_log(client, collection)
    log.info("Qdrant local collection %r reloaded: %d deleted points dropped", collection, dead)
    return True


#: Every attribute of a local collection, as this version of qdrant-client has them: the
#: per-point ones are the ids (both ways), payloads, dense vectors and deletion flags.
_LAYOUT = frozenset(
    {
        "vectors_config",
        "multivectors_config",
        "vectors",
        "sparse_vectors",
        "sparse_vectors_idf",
        "multivectors",
        "payload",
        "text_indexes",
        "deleted",
        "_all_vectors_keys",
        "deleted_per_vector",
        "ids",
        "ids_inv",
        "persistent",
        "storage",
        "config",
    }
)


def _drop_deleted_rows(local_collection: Any) -> bool:
    """Keep only the live rows of a local collection laid out as :data:`_LAYOUT` says,
    with dense vectors only (Lockstep's); False, and nothing changed, otherwise."""
    c = local_collection
    if set(vars(c)) != _LAYOUT or c.sparse_vectors or c.multivectors:
        return False
    live = (c.deleted == 0).nonzero()[0]
    ids_inv = [c.ids_inv[i] for i in live]
    # Computed before anything is replaced: a failure leaves the collection as it was.
    replaced = (
        ids_inv,
        {point_id: row for row, point_id in enumerate(ids_inv)},
        [c.payload[i] for i in live],
        {name: vectors[live] for name, vectors in c.vectors.items()},
        {name: flags[live] for name, flags in c.deleted_per_vector.items()},
        c.deleted[live],
    )
    c.ids_inv, c.ids, c.payload, c.vectors, c.deleted_per_vector, c.deleted = replaced
    return True
