"""Qdrant Edge collections behind the part of the Qdrant client API the index calls.

Qdrant Edge (``qdrant-edge-py``) is Qdrant's own engine run inside the process: segments,
write-ahead log, payload indexes, filters evaluated in Rust. It has no server and no
collections, only shards, so :class:`EdgeClient` keeps one shard per collection under a
directory::

    <path>/<collection>/shard/            the Edge shard (its WAL and segments)
    <path>/<collection>/collection.json   vector size, distance, Lockstep's metadata

and answers the calls :class:`~participants.qdrant.QdrantIndex` makes of a client
(``upsert``, ``set_payload``, ``delete``, ``scroll``, ``query_points``, ...), translating
``qdrant_client.models`` to Edge's types. The index treats it as it treats a server: it
finds its points with filters, which Edge evaluates with the payload indexes each
collection is created with.

Durability: an Edge update is in the shard's write-ahead log when it returns, which a
killed process keeps (the page cache holds it), but the log is not synced to the disk.
With ``durable=True`` (the default) an ``upsert`` (a prepare) is followed by an
``fdatasync`` of the log's files, so a prepared point survives a power cut as a SQLite
commit does; the alternative, :meth:`EdgeShard.flush`, writes every segment and cost ten
times as much (4.3 ms against 0.45 ms a write, in a probe of 384-dimensional points).
``set_payload`` and ``delete`` are not synced on their own: the index's commit calls
:meth:`EdgeClient.sync_log` once after its writes, before the coordinator records the
transaction's end, and an abort lost to a power cut is done again by recovery (the
pending points come back, and the decision log says ABORT, or says nothing). Concurrent
writers share syncs: one sync covers every write made before it began. A sync also
flushes the segments once every :data:`FLUSH_EVERY` writes, which lets Edge drop the log
they cover.

An Edge shard's log is locked by the process that opened it: a second process, or a
second client in this one, is refused with a :class:`ParticipantError` that says so.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import qdrant_edge as edge
from qdrant_client import models

from coordinator._acompat import ablocking
from coordinator.errors import ConfigurationError, ParticipantError

#: The payload keys the index's filters use, indexed in every collection it creates.
_INDEXED = {
    "fact_id": edge.PayloadSchemaType.Keyword,
    "txid": edge.PayloadSchemaType.Keyword,
    "state": edge.PayloadSchemaType.Keyword,
    "op": edge.PayloadSchemaType.Keyword,
    "version": edge.PayloadSchemaType.Integer,
    "type": edge.PayloadSchemaType.Keyword,
    "session_id": edge.PayloadSchemaType.Keyword,
}
#: Writes between two flushes of a shard's segments. Edge drops the write-ahead log's
#: segments only once the writes they hold are in flushed segments, and flushes only when
#: told: unflushed, the log kept every write (178 MB after 30,000 writes of 2,048
#: dimensions, and growing, in a probe; 50 MB flushed every 4,096), and a process that
#: died left all of it to replay. A flush of 4,096 writes of 384 dimensions took 39 ms
#: on average, 191 ms at most (0.01 ms a write).
FLUSH_EVERY = 4096
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_CONFIG = "collection.json"


@dataclass(frozen=True)
class EdgeRecord:
    """A point as the index reads it (``models.Record``'s fields it uses)."""

    id: str
    payload: dict[str, Any] | None
    vector: list[float] | None = None


@dataclass(frozen=True)
class EdgeScoredPoint:
    """A search hit (``models.ScoredPoint``'s fields the index uses)."""

    id: str
    score: float
    payload: dict[str, Any] | None


@dataclass(frozen=True)
class EdgeQueryResponse:
    points: list[EdgeScoredPoint]


@dataclass(frozen=True)
class _Params:
    vectors: models.VectorParams


@dataclass(frozen=True)
class _CollectionConfig:
    params: _Params
    metadata: dict[str, Any] | None


@dataclass(frozen=True)
class EdgeCollectionInfo:
    """What the index checks of an existing collection (``info.config.params.vectors``,
    ``info.config.metadata``)."""

    config: _CollectionConfig


class _Shard:
    """One open Edge shard and the files its write-ahead log keeps.

    Writers share syncs (a group commit): a sync covers every write made before it
    started, so a writer whose write a sync in progress or just finished covers returns
    without syncing again, and writers arriving during a sync wait for it, then one of
    them syncs for all of them.
    """

    def __init__(self, shard: edge.EdgeShard, directory: Path, durable: bool) -> None:
        self.shard = shard
        self._wal = directory / "wal"
        self._durable = durable
        self._synced_names: frozenset[str] = frozenset()
        self._count_lock = threading.Lock()
        self._written = 0  # writes made through this client
        self._sync_lock = threading.Lock()
        self._synced = 0  # of those, the ones a finished sync covers
        self._flushed = 0  # of those, the ones the last flush covers
        self.syncs = 0  # syncs made (for tests and probes)

    def update(self, operation: edge.UpdateOperation, *, sync: bool = True) -> None:
        self.shard.update(operation)
        with self._count_lock:
            self._written += 1
        if sync:
            self.sync()

    def sync(self) -> None:
        """Make every write made so far durable, unless a sync already did. Once every
        :data:`FLUSH_EVERY` writes, write the segments first; then, if the client is
        durable, sync the log's files (and the log's directory when it gained a file)."""
        wanted = self._written  # the caller's writes are done, so they are counted
        with self._sync_lock:
            if self._synced >= wanted:
                return
            covered = self._written  # every write counted here returned before the sync
            if covered - self._flushed >= FLUSH_EVERY:
                self.shard.flush()
                self._flushed = covered
            if self._durable:
                self._sync_log()
                self.syncs += 1
            self._synced = covered

    def _sync_log(self) -> None:
        for _ in range(3):
            try:
                names = frozenset(os.listdir(self._wal))
            except FileNotFoundError:  # a release that keeps its log elsewhere
                break
            try:
                for name in names:
                    _sync_file(self._wal / name, os.fdatasync)
            except FileNotFoundError:
                # Edge renames its log files from a thread of its own (a segment made
                # ready, ``tmp-open-N`` to ``open-N``; a full one closed): list them again.
                continue
            if names != self._synced_names:
                _sync_file(self._wal, os.fsync)
                self._synced_names = names
            return
        self.shard.flush()  # the log could not be listed steadily: write everything


class EdgeClient:
    """Qdrant Edge shards under ``path``, one a collection, answering as a Qdrant client.

    :param durable: sync the write-ahead log after a prepare's upsert and a commit's
        writes (see the module's text).
    """

    #: The index records its embedder in the collection's metadata (see ``get_collection``).
    records_metadata = True
    #: Its engine runs inside this process (see ``QdrantIndex.in_process``).
    in_process = True

    def __init__(self, path: str | os.PathLike[str], *, durable: bool = True) -> None:
        # Absolute now: shards open at their first use, which a change of the working
        # directory in between would otherwise send elsewhere.
        self.path = Path(path).absolute()
        self.durable = durable
        self._shards: dict[str, _Shard] = {}
        self._lock = threading.Lock()
        self._closed = False

    # -- collections --------------------------------------------------------------------

    def collection_exists(self, collection_name: str) -> bool:
        return (self._directory(collection_name) / _CONFIG).exists()

    def create_collection(
        self,
        collection_name: str,
        vectors_config: models.VectorParams,
        metadata: Mapping[str, Any] | None = None,
    ) -> bool:
        """Create the collection's shard, index the payload keys the index filters on, and
        record its configuration last (a shard without it, left by a crash, is taken up by
        the next creation)."""
        if vectors_config.distance != models.Distance.COSINE:
            raise ConfigurationError("Lockstep's Qdrant Edge collections use cosine distance")
        directory = self._directory(collection_name)
        with self._lock:
            if (directory / _CONFIG).exists():
                raise ParticipantError(f"Qdrant Edge collection {collection_name!r} exists")
            shard_dir = directory / "shard"
            config = edge.EdgeConfig(
                vectors=edge.EdgeVectorParams(
                    size=vectors_config.size, distance=edge.Distance.Cosine
                )
            )
            if shard_dir.exists():  # checked against the configuration asked for
                shard = self._load(collection_name, shard_dir, config)
            else:
                shard = _Shard(
                    edge.EdgeShard.create(str(shard_dir), config), shard_dir, self.durable
                )
            for field, schema in _INDEXED.items():
                shard.update(edge.UpdateOperation.create_field_index(field, schema))
            _write_json(
                directory / _CONFIG,
                {
                    "size": vectors_config.size,
                    "distance": "Cosine",
                    "metadata": dict(metadata or {}),
                },
            )
            self._shards[collection_name] = shard
        return True

    def get_collection(self, collection_name: str) -> EdgeCollectionInfo:
        recorded = self._config(collection_name)
        vectors = models.VectorParams(size=int(recorded["size"]), distance=models.Distance.COSINE)
        return EdgeCollectionInfo(_CollectionConfig(_Params(vectors), recorded.get("metadata")))

    # -- writes -------------------------------------------------------------------------

    def upsert(
        self,
        collection_name: str,
        points: Sequence[models.PointStruct],
        wait: bool = True,
        *,
        synced: bool = True,
    ) -> None:
        """Write ``points``; with ``synced`` (as the index calls it), sync the log too."""
        self._shard(collection_name).update(
            edge.UpdateOperation.upsert_points(
                [edge.Point(str(p.id), _vector(p.vector), p.payload or {}) for p in points]
            ),
            sync=synced,
        )

    def set_payload(
        self,
        collection_name: str,
        payload: Mapping[str, Any],
        points: Sequence[models.ExtendedPointId],
        wait: bool = True,
    ) -> None:
        self._shard(collection_name).update(
            edge.UpdateOperation.set_payload([str(p) for p in points], dict(payload)), sync=False
        )

    def delete(
        self,
        collection_name: str,
        points_selector: models.PointIdsList | models.Filter,
        wait: bool = True,
    ) -> None:
        if isinstance(points_selector, models.PointIdsList):
            operation = edge.UpdateOperation.delete_points([str(p) for p in points_selector.points])
        else:
            operation = edge.UpdateOperation.delete_points_by_filter(_filter(points_selector))
        self._shard(collection_name).update(operation, sync=False)

    def sync_log(self, collection_name: str) -> None:
        """Make the collection's writes so far durable (see the module's text)."""
        self._shard(collection_name).sync()

    # -- reads --------------------------------------------------------------------------

    def scroll(
        self,
        collection_name: str,
        scroll_filter: models.Filter | None = None,
        limit: int = 10,
        offset: models.ExtendedPointId | None = None,
        with_payload: bool = True,
        with_vectors: bool = False,
    ) -> tuple[list[EdgeRecord], str | None]:
        page, following = self._shard(collection_name).shard.scroll(
            edge.ScrollRequest(
                offset=None if offset is None else str(offset),
                limit=limit,
                filter=None if scroll_filter is None else _filter(scroll_filter),
                with_payload=with_payload,
                with_vector=with_vectors,
            )
        )
        records = [EdgeRecord(str(r.id), r.payload, _plain(r.vector)) for r in page]
        return records, None if following is None else str(following)

    def query_points(
        self,
        collection_name: str,
        query: Sequence[float],
        query_filter: models.Filter | None = None,
        limit: int = 10,
        with_payload: bool = False,
    ) -> EdgeQueryResponse:
        """The ``limit`` nearest points that meet ``query_filter``.

        qdrant-edge-py 0.9 passes a boolean ``MatchValue`` to the engine as the integer 1
        or 0, which matches no stored boolean: a search condition on a boolean field is met
        here, over the points that meet the others, and the query is then asked of those
        points by id."""
        shard = self._shard(collection_name).shard
        flags: dict[str, bool] = {}
        if query_filter is not None:
            query_filter, flags = _without_flags(query_filter)
        translated = None if query_filter is None else _filter(query_filter)
        if flags:
            ids = {
                r.id
                for r in self._all(shard, translated)
                if all(
                    isinstance(value := (r.payload or {}).get(k), bool) and value is v
                    for k, v in flags.items()
                )
            }
            if not ids:
                return EdgeQueryResponse([])
            chosen = edge.HasIdCondition(set(ids))
            translated = edge.Filter(must=[chosen] if translated is None else [translated, chosen])
        found = shard.query(
            edge.QueryRequest(
                limit=limit,
                query=edge.Query.Nearest(list(query)),
                filter=translated,
                with_payload=with_payload,
            )
        )
        return EdgeQueryResponse(
            [EdgeScoredPoint(str(p.id), float(p.score), p.payload) for p in found]
        )

    def close(self) -> None:
        with self._lock:
            shards, self._shards = list(self._shards.values()), {}
            self._closed = True
        for shard in shards:
            shard.shard.close()

    # -- internals ----------------------------------------------------------------------

    @staticmethod
    def _all(shard: edge.EdgeShard, condition: edge.Filter | None) -> list[Any]:
        found: list[Any] = []
        offset = None
        while True:
            page, offset = shard.scroll(
                edge.ScrollRequest(offset=offset, limit=512, filter=condition, with_payload=True)
            )
            found += page
            if offset is None:
                return found

    def _directory(self, collection_name: str) -> Path:
        if not _NAME.fullmatch(collection_name) or collection_name.strip(".") == "":
            raise ConfigurationError(
                f"Qdrant Edge collection name {collection_name!r}: expected letters, digits, "
                "'_', '.' and '-', starting with a letter or digit (it names a directory)"
            )
        return self.path / collection_name

    def _config(self, collection_name: str) -> dict[str, Any]:
        path = self._directory(collection_name) / _CONFIG
        try:
            recorded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ParticipantError(
                f"Qdrant Edge collection {collection_name!r} does not exist in {self.path}"
            ) from None
        return recorded

    def _shard(self, collection_name: str) -> _Shard:
        shard = self._shards.get(collection_name)
        if shard is not None:
            return shard
        with self._lock:
            if self._closed:
                raise ParticipantError(f"the Qdrant Edge client of {self.path} is closed")
            shard = self._shards.get(collection_name)
            if shard is None:
                self._config(collection_name)  # it exists
                shard_dir = self._directory(collection_name) / "shard"
                shard = self._shards[collection_name] = self._load(collection_name, shard_dir)
        return shard

    def _load(
        self, collection_name: str, shard_dir: Path, config: edge.EdgeConfig | None = None
    ) -> _Shard:
        try:
            return _Shard(edge.EdgeShard.load(str(shard_dir), config), shard_dir, self.durable)
        except Exception as exc:
            if "WouldBlock" not in str(exc):
                raise
            raise ParticipantError(
                f"the Qdrant Edge collection {collection_name!r} in {self.path} is open in "
                "another client (another process, or another store in this one); an Edge "
                "shard serves one at a time: close that one first, or keep the vectors in a "
                "Qdrant server (qdrant+http://) for several processes"
            ) from exc


class AsyncEdgeClient:
    """:class:`EdgeClient` for the async index. Edge's calls run on the event loop, as
    local mode's do: they hold the interpreter while they run (well under a millisecond
    for a write), so a worker thread would only add its hand-over. The write-ahead log's
    sync waits on the disk, with the interpreter released, and runs in a worker thread,
    as does a collection's creation (which syncs). Each method takes what
    :class:`EdgeClient`'s of the same name takes."""

    records_metadata = True
    #: Its engine runs inside this process (see ``QdrantIndex.in_process``).
    in_process = True

    def __init__(self, path: str | os.PathLike[str], *, durable: bool = True) -> None:
        self.client = EdgeClient(path, durable=durable)

    async def collection_exists(self, collection_name: str) -> bool:
        return self.client.collection_exists(collection_name)

    async def create_collection(self, *args: Any, **kwargs: Any) -> bool:
        return await ablocking(self.client.create_collection, *args, **kwargs)

    async def get_collection(self, collection_name: str) -> EdgeCollectionInfo:
        return self.client.get_collection(collection_name)

    async def upsert(
        self, collection_name: str, points: Sequence[models.PointStruct], wait: bool = True
    ) -> None:
        self.client.upsert(collection_name, points, synced=False)
        await self.sync_log(collection_name)

    async def set_payload(self, *args: Any, **kwargs: Any) -> None:
        self.client.set_payload(*args, **kwargs)

    async def delete(self, *args: Any, **kwargs: Any) -> None:
        self.client.delete(*args, **kwargs)

    async def scroll(self, *args: Any, **kwargs: Any) -> tuple[list[EdgeRecord], str | None]:
        return self.client.scroll(*args, **kwargs)

    async def query_points(self, *args: Any, **kwargs: Any) -> EdgeQueryResponse:
        return self.client.query_points(*args, **kwargs)

    async def sync_log(self, collection_name: str) -> None:
        await ablocking(self.client.sync_log, collection_name)

    async def close(self) -> None:
        self.client.close()


def _without_flags(query_filter: models.Filter) -> tuple[models.Filter | None, dict[str, bool]]:
    """``query_filter`` without its top-level boolean equalities, and those."""
    must = query_filter.must
    conditions = must if isinstance(must, list) else [] if must is None else [must]
    flags: dict[str, bool] = {}
    kept: list[Any] = []
    for condition in conditions:
        if (
            isinstance(condition, models.FieldCondition)
            and isinstance(condition.match, models.MatchValue)
            and isinstance(condition.match.value, bool)
        ):
            flags[condition.key] = condition.match.value
        else:
            kept.append(condition)
    if not flags:
        return query_filter, {}
    rest = query_filter.model_copy(update={"must": kept or None})
    empty = not kept and not rest.should and not rest.must_not
    return (None if empty else rest), flags


def _filter(query: models.Filter) -> edge.Filter:
    def each(part: Any) -> list[Any] | None:
        if part is None:
            return None
        return [_condition(c) for c in (part if isinstance(part, list) else [part])]

    return edge.Filter(
        must=each(query.must), should=each(query.should), must_not=each(query.must_not)
    )


def _condition(condition: Any) -> Any:
    if isinstance(condition, models.Filter):
        return _filter(condition)
    if isinstance(condition, models.HasIdCondition):
        return edge.HasIdCondition({str(i) for i in condition.has_id})
    if isinstance(condition, models.FieldCondition):
        if isinstance(condition.match, models.MatchValue):
            value = condition.match.value
            if isinstance(value, bool):  # see query_points
                raise ParticipantError(
                    f"Qdrant Edge cannot filter on the boolean field {condition.key!r} here"
                )
            return edge.FieldCondition(key=condition.key, match=edge.MatchValue(value))
        if isinstance(condition.range, models.Range):
            r = condition.range
            return edge.FieldCondition(
                key=condition.key, range=edge.RangeFloat(gte=r.gte, gt=r.gt, lte=r.lte, lt=r.lt)
            )
    raise ParticipantError(f"Qdrant Edge: no translation for the condition {condition!r}")


def _vector(vector: Any) -> list[float]:
    if not isinstance(vector, list):
        raise ParticipantError("Lockstep's Qdrant Edge points hold one unnamed vector")
    return vector


def _plain(vector: Any) -> list[float] | None:
    return None if vector is None else list(vector)


def _sync_file(path: Path, sync: Any) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        sync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, value: Mapping[str, Any]) -> None:
    """Write ``path`` whole or not at all, synced, with its directory and that one's."""
    temporary = path.with_suffix(".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(value, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    for directory in (path.parent, path.parent.parent):
        _sync_file(directory, os.fsync)
