"""The Qdrant index participant (source of the generated sync twin).

Works against a Qdrant server (``AsyncQdrantClient(url=...)``), local mode
(``AsyncQdrantClient(path=...)``), ``:memory:`` and Qdrant Edge shards
(``participants.qdrant._edge.AsyncEdgeClient``, which answers as a server does). Staging is described in
``participants/_vectors.py``; Qdrant batches are not atomic, so every step is idempotent
and recoverable from the points alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy
from qdrant_client import AsyncQdrantClient, models

from coordinator._acompat import ALock, ablocking
from coordinator.abc import Embedder, Hit, IndexContents, Vote
from coordinator.errors import ConfigurationError, LockstepError, ParticipantError
from coordinator.records import JSONValue, Write
from participants._vectors import (
    COMMITTED,
    PENDING,
    VectorIndexBase,
    configured,
    hit_of,
    markers_last,
    replaced_bounds,
    search_filter,
    stage,
)
from participants.qdrant._catalog import (
    Entry,
    PointCatalog,
    compact,
    compaction_due,
    shared_local,
    synced_once,
    write_ahead_log,
)

if TYPE_CHECKING:
    from participants.qdrant._edge import AsyncEdgeClient

_PAGE = 512
#: A search whose conditions fewer than one point in this many meets reads those points
#: by id and ranks them; a commoner one is found among the nearest points. Neither sends
#: local mode a filter, which it would test on every point in Python.
_SPARSE = 16


class AsyncQdrantIndex(VectorIndexBase):
    """A vector index in a Qdrant collection, kept in lockstep with the fact store.

    Takes MemState's ``QdrantSyncHook`` arguments, plus ``embedder=``.

    :param client: a Qdrant client (server, local ``path=`` or ``:memory:``), or a Qdrant
        Edge client; not closed by this index unless ``owns_client``.
    :param collection_name: created (cosine distance) if missing; an existing one must
        have been created by Lockstep with the embedder's dimension.
    :param text_field: payload field to embed (default: ``content``, ``text``, or the
        whole payload as JSON).
    :param metadata_fields: payload fields copied into each point for filtering.
    :param embedder: turns text into vectors (default: :func:`default_embedder`).
    :param target_types: fact types this index holds (default: every type).
    :param name: participant name (default ``qdrant:<collection_name>``).
    :param catalog: in local mode, keep the collection's Lockstep points listed in memory
        so commits, aborts and recovery find them by id, and searches meet their
        conditions, instead of by a filter (which local mode answers by testing every
        point); ``False`` uses filters, as against a server.
    """

    def __init__(
        self,
        client: AsyncQdrantClient | AsyncEdgeClient,
        collection_name: str,
        text_field: str | None = None,
        metadata_fields: Sequence[str] | None = None,
        *,
        embedder: Embedder | None = None,
        target_types: Sequence[str] | None = None,
        name: str | None = None,
        owns_client: bool = False,
        catalog: bool = True,
    ) -> None:
        self._client: Any = client  # a Qdrant client, or Edge's answering as one
        self._collection = collection_name
        super().__init__(
            f"qdrant:{collection_name}",
            text_field,
            metadata_fields,
            embedder,
            target_types,
            name,
        )
        self._owns_client = owns_client
        # Local mode keeps points in process memory and is not safe for concurrent callers
        # (a search beside an upsert can fail); a server client is, so it is not held back.
        self._guard: Any = contextlib.nullcontext()
        self._catalog: PointCatalog | None = None
        self.in_process = _is_local(client) or getattr(client, "in_process", False) is True
        if _is_local(client):
            self._guard, known = shared_local(client, collection_name, ALock)
            self._catalog = known if catalog else None
        self._opening = ALock()
        self._ready = False

    # -- the participant contract -------------------------------------------------------

    async def prepare(self, txid: str, writes: Sequence[Write]) -> Vote:
        self._fence.check(txid)
        points = stage(self.shape, txid, writes)
        if not points:
            return Vote.READ_ONLY
        await self._ensure_collection()
        structs = [models.PointStruct(id=p.id, vector=p.vector, payload=p.payload) for p in points]
        try:
            async with self._guard:
                await self._client.upsert(self._collection, structs, wait=True)
                if self._catalog is not None:
                    for point in points:
                        self._catalog.add(point.id, point.payload)
        except Exception as exc:
            raise self._failed("prepare", txid, exc) from exc
        return Vote.YES

    async def commit(self, txid: str) -> None:
        await self._ensure_collection()
        try:
            if self._catalog is not None:
                async with self._guard:
                    await self._commit_known(self._catalog.of([txid]))
                return
            staged = await self._scroll(_match("txid", txid))
            await self._mark_committed(staged)
            if staged:  # what the new versions replace, found by the server; markers last
                await self._guarded(
                    self._client.delete,
                    self._collection,
                    models.Filter(
                        should=[_older_than(p) for p in staged],
                        must_not=[models.HasIdCondition(has_id=_markers(staged))],
                    ),
                    wait=True,
                )
                await self._delete_markers(staged)
            await self._sync_log()
        except Exception as exc:
            raise self._failed("commit", txid, exc) from exc

    async def commit_many(self, txids: Sequence[str]) -> None:
        """Commit many branches with one lookup and two writes (without a catalog: one
        scroll of the collection, since a filter with a condition per fact costs local
        mode a pass over every point each)."""
        if not txids:
            return
        await self._ensure_collection()
        try:
            if self._catalog is not None:
                async with self._guard:
                    with synced_once(self._client, self._collection):
                        await self._commit_known(self._catalog.of(txids))
                return
            chosen = set(txids)
            points = await self._scroll(None)
            staged = [p for p in points if (p.payload or {}).get("txid") in chosen]
            await self._mark_committed(staged)
            bounds = replaced_bounds(_point(p) for p in staged)
            markers = set(_markers(staged))
            older = [
                p.id
                for p in points
                if (p.payload or {}).get("fact_id") in bounds
                and int((p.payload or {})["version"]) < bounds[(p.payload or {})["fact_id"]]
                and p.id not in markers
            ]
            if older:
                await self._guarded(
                    self._client.delete,
                    self._collection,
                    models.PointIdsList(points=older),
                    wait=True,
                )
            await self._delete_markers(staged)
            await self._sync_log()
        except Exception as exc:
            raise self._failed("commit", None, exc) from exc

    async def _commit_known(self, staged: Mapping[str, Entry]) -> None:
        """(Guard held.) Mark the catalog's ``staged`` points committed and delete the
        versions they replace, by id."""
        catalog = self._catalog
        assert catalog is not None
        pending: list[models.ExtendedPointId] = [
            point_id for point_id, e in staged.items() if e.state == PENDING
        ]
        if pending:
            await self._client.set_payload(
                self._collection, {"state": COMMITTED}, points=pending, wait=True
            )
            catalog.mark_committed(map(str, pending))
        bounds = replaced_bounds((e.fact_id, e.version, e.op) for e in staged.values())
        # Local mode deletes point by point: the transaction's delete markers go last.
        markers = {p for p, e in staged.items() if e.op == "delete"}
        for ids in markers_last(catalog.replaced(bounds), markers):
            doomed: list[models.ExtendedPointId] = [*ids]
            await self._client.delete(
                self._collection, models.PointIdsList(points=doomed), wait=True
            )
            catalog.remove(ids)
        await self._compact()

    async def _compact(self) -> None:
        """(Guard held.) Drop the deleted points local mode keeps in memory, when due (see
        :func:`compact`; the async index does it in a worker thread, as a reload takes
        about as long as opening the collection)."""
        if compaction_due(self._client, self._collection):
            await ablocking(compact, self._client, self._collection)

    async def _delete_markers(self, staged: Sequence[models.Record]) -> None:
        """Delete the staged delete markers, once what they delete is gone."""
        markers = _markers(staged)
        if markers:
            await self._guarded(
                self._client.delete,
                self._collection,
                models.PointIdsList(points=markers),
                wait=True,
            )

    async def _mark_committed(self, staged: Sequence[models.Record]) -> None:
        pending = [p.id for p in staged if (p.payload or {}).get("state") == PENDING]
        if pending:
            await self._guarded(
                self._client.set_payload,
                self._collection,
                {"state": COMMITTED},
                points=pending,
                wait=True,
            )

    async def abort(self, txid: str) -> None:
        self._fence.add(txid)
        await self._ensure_collection()
        try:
            if self._catalog is not None:
                async with self._guard:
                    await self._abort_known([txid])
                return
            await self._guarded(
                self._client.delete,
                self._collection,
                models.Filter(must=[_match("txid", txid), _match("state", PENDING)]),
                wait=True,
            )
        except Exception as exc:
            raise self._failed("abort", txid, exc) from exc

    async def abort_many(self, txids: Sequence[str]) -> None:
        """Delete the pending points of many branches (one lookup, one delete by id)."""
        if not txids:
            return
        for txid in txids:
            self._fence.add(txid)
        await self._ensure_collection()
        try:
            if self._catalog is not None:
                async with self._guard:
                    with synced_once(self._client, self._collection):
                        await self._abort_known(txids)
                return
            chosen = set(txids)
            doomed = [
                p.id
                for p in await self._scroll(_match("state", PENDING))
                if (p.payload or {}).get("txid") in chosen
            ]
            if doomed:
                await self._guarded(
                    self._client.delete,
                    self._collection,
                    models.PointIdsList(points=doomed),
                    wait=True,
                )
        except Exception as exc:
            raise self._failed("abort", None, exc) from exc

    async def _abort_known(self, txids: Sequence[str]) -> None:
        """(Guard held.) Delete the catalog's pending points of ``txids``, by id."""
        catalog = self._catalog
        assert catalog is not None
        doomed: list[models.ExtendedPointId] = [
            point_id for point_id, e in catalog.of(txids).items() if e.state == PENDING
        ]
        if doomed:
            await self._client.delete(
                self._collection, models.PointIdsList(points=doomed), wait=True
            )
            catalog.remove(map(str, doomed))
            await self._compact()

    async def recover(self) -> list[str]:
        await self._ensure_collection()
        if self._catalog is not None:
            async with self._guard:
                return sorted(self._catalog.pending())
        try:
            pending = await self._scroll(_match("state", PENDING))
        except Exception as exc:
            raise self._error("recover", None, exc) from exc
        return sorted({str((p.payload or {})["txid"]) for p in pending})

    # -- reads --------------------------------------------------------------------------

    async def search(
        self, vector: Sequence[float], k: int, where: Mapping[str, JSONValue]
    ) -> list[Hit]:
        await self._ensure_collection()
        try:
            async with self._guard:  # no write between reading the catalog and the query
                return await self._search(list(vector), k, where)
        except Exception as exc:
            raise self._error("search", None, exc) from exc

    async def _search(
        self, vector: list[float], k: int, where: Mapping[str, JSONValue]
    ) -> list[Hit]:
        """The ``k`` nearest upsert points that hold ``where``'s values.

        Local mode tests a filter on every point, in Python: with 10,000 points a filtered
        search took about 190 ms through the memory API, one without a filter 3-4 ms
        (``benchmarks.search_scale``). With the catalog, a search asks for no filter: for
        as many more points as there are delete markers when it has no condition; when it
        has some, and at least one point in :data:`_SPARSE` meets them (the catalog
        knows), for enough of the nearest points to hold ``k`` such points twice over,
        and more while they do not. Rarer points are read by id, with their vectors, and
        ranked here (by a type 1% of 10,000 points have: 145 ms through local mode's
        filter, 2.9 ms so). Either way the points come without their payloads (copying
        them doubled the time of a search of 400 points, in a probe): the catalog has what
        a hit needs."""
        catalog = self._catalog
        if catalog is None or not catalog.loaded:
            conditions = [_equal(key, value) for key, value in search_filter(where).items()]
            found = await self._nearest(vector, k, conditions, with_payload=True)
            return [hit_of(p.payload, float(p.score)) for p in found if p.payload]
        wanted = catalog.matching(where) if where else None
        if wanted is not None and not wanted:
            return []  # no point meets the conditions (in an empty collection, too)
        if wanted is not None and len(wanted) * _SPARSE < len(catalog):
            return catalog.hits(await self._ranked(vector, wanted))[:k]
        total = len(catalog)
        limit = k + catalog.markers()
        if wanted is not None:
            limit = max(limit, 2 * k * total // len(wanted))
        while True:
            hits = catalog.hits(await self._nearest(vector, limit, []), wanted)
            if len(hits) >= k or limit >= total:
                return hits[:k]
            limit = min(total, 4 * limit)

    async def _ranked(self, vector: list[float], ids: set[str]) -> list[models.ScoredPoint]:
        """The points ``ids``, nearest first, scored by the index's cosine: read by id
        with their vectors (which Qdrant keeps normalised), rather than found by a filter
        that local mode would test on every point."""
        points = await self._client.retrieve(
            self._collection, ids=sorted(ids), with_payload=False, with_vectors=True
        )
        if not points:
            return []
        query = numpy.asarray(vector, dtype=numpy.float32)
        query /= float(numpy.linalg.norm(query)) or 1.0
        scores = numpy.asarray([p.vector for p in points], dtype=numpy.float32) @ query
        return [
            models.ScoredPoint(id=points[i].id, version=0, score=float(scores[i]))
            for i in numpy.argsort(-scores, kind="stable")
        ]

    async def _nearest(
        self,
        vector: list[float],
        limit: int,
        conditions: Sequence[models.Condition],
        *,
        with_payload: bool = False,
    ) -> list[models.ScoredPoint]:
        found = await self._client.query_points(
            self._collection,
            query=vector,
            query_filter=models.Filter(must=list(conditions)) if conditions else None,
            limit=limit,
            with_payload=with_payload,
        )
        return list(found.points)

    async def contents(self) -> IndexContents:
        await self._ensure_collection()
        committed: dict[str, int] = {}
        fields: dict[str, dict[str, JSONValue]] = {}
        pending: set[str] = set()
        for point in await self._scroll(None):
            payload = point.payload or {}
            if payload.get("state") == PENDING:
                pending.add(str(payload.get("txid")))
            elif payload.get("op") == "upsert":
                fact_id, version = str(payload["fact_id"]), int(payload["version"])
                if version > committed.get(fact_id, 0):
                    committed[fact_id] = version
                    fields[fact_id] = configured(self.metadata_fields, payload)
        return IndexContents(committed, tuple(sorted(pending)), fields)

    async def close(self) -> None:
        if self._owns_client:
            await self._client.close()

    # -- internals ----------------------------------------------------------------------

    async def _ensure_collection(self) -> None:
        if self._ready and (self._catalog is None or self._catalog.loaded):
            return
        async with self._opening:  # concurrent first calls create the collection once
            if not self._ready:
                await self._open_collection()
            if self._catalog is not None and not self._catalog.loaded:
                try:
                    async with self._guard:
                        points = await self._scroll(None, guarded=False)
                        self._catalog.load((str(p.id), p.payload or {}) for p in points)
                except Exception as exc:
                    raise self._error("open", None, exc) from exc

    async def _open_collection(self) -> None:
        try:
            if not await self._create_collection():
                info = await self._guarded(self._client.get_collection, self._collection)
                await self._check_schema(info)
        except LockstepError:
            raise
        except Exception as exc:
            raise self._error("open", None, exc) from exc
        if _is_local(self._client):
            async with self._guard:
                write_ahead_log(self._client, self._collection)
        self._ready = True

    async def _create_collection(self) -> bool:
        """Create the collection if it is missing; False if it exists (also when another
        process created it first)."""
        if await self._guarded(self._client.collection_exists, self._collection):
            return False
        try:
            # Local mode and Edge record the embedder in the collection's metadata (a
            # server keeps collection metadata from Qdrant 1.16 only: not asked of it).
            recorded = self.recorded_embedder() if _records_metadata(self._client) else {}
            await self._guarded(
                self._client.create_collection,
                self._collection,
                vectors_config=models.VectorParams(
                    size=self.shape.dim, distance=models.Distance.COSINE
                ),
                **({"metadata": recorded} if recorded else {}),
            )
        except Exception:
            if await self._guarded(self._client.collection_exists, self._collection):
                return False  # lost the race to another process: check what it made
            raise
        return True

    async def _check_schema(self, info: models.CollectionInfo) -> None:
        vectors = info.config.params.vectors
        if not isinstance(vectors, models.VectorParams):
            raise ConfigurationError(
                f"Qdrant collection {self._collection!r} uses named vectors; Lockstep needs "
                "one unnamed vector per point (use another collection name)",
                participant=self._name,
            )
        if vectors.size != self.shape.dim:
            raise ConfigurationError(
                f"Qdrant collection {self._collection!r} holds {vectors.size}-dimensional "
                f"vectors; the embedder makes {self.shape.dim}",
                participant=self._name,
            )
        if vectors.distance != models.Distance.COSINE:
            raise ConfigurationError(
                f"Qdrant collection {self._collection!r} uses {vectors.distance} distance; "
                "Lockstep needs cosine",
                participant=self._name,
            )
        self.check_embedder(getattr(info.config, "metadata", None), self._collection)
        sample, _ = await self._guarded(
            self._client.scroll, self._collection, limit=1, with_payload=True
        )
        if sample and not {"fact_id", "version", "state"} <= set(sample[0].payload or {}):
            raise ConfigurationError(
                f"Qdrant collection {self._collection!r} holds points Lockstep did not write "
                "(no fact_id/version/state in their payload); use another collection name",
                participant=self._name,
            )

    async def _scroll(
        self, condition: models.FieldCondition | None, *, guarded: bool = True
    ) -> list[models.Record]:
        """Every point matching ``condition``, page by page (``guarded=False``: the caller
        holds the guard)."""
        found: list[models.Record] = []
        offset = None
        query = None if condition is None else models.Filter(must=[condition])
        call = self._guarded if guarded else _direct
        while True:
            page, offset = await call(
                self._client.scroll,
                self._collection,
                scroll_filter=query,
                limit=_PAGE,
                offset=offset,
                with_payload=True,
                with_vectors=False,
            )
            found += page
            if offset is None:
                return found

    async def _sync_log(self) -> None:
        """Make a commit's writes durable where the client leaves that to the caller (the
        Qdrant Edge client: see ``participants/qdrant/_edge.py``)."""
        sync_log = getattr(self._client, "sync_log", None)
        if sync_log is not None:
            await sync_log(self._collection)

    async def _guarded(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        async with self._guard:
            return await call(*args, **kwargs)

    def _failed(self, action: str, txid: str | None, exc: Exception) -> LockstepError:
        """The error to raise after a failed write; the catalog is read again before the
        next call (the write may have been applied in part)."""
        if self._catalog is not None:
            self._catalog.loaded = False
        return self._error(action, txid, exc)

    def _error(self, action: str, txid: str | None, exc: Exception) -> LockstepError:
        if isinstance(exc, LockstepError):
            return exc
        return ParticipantError(
            f"Qdrant {action} on collection {self._collection!r} failed: {exc}",
            txid=txid,
            participant=self._name,
        )


def _markers(points: Sequence[models.Record]) -> list[models.ExtendedPointId]:
    """The delete markers among ``points``."""
    return [p.id for p in points if (p.payload or {}).get("op") == "delete"]


def _point(point: models.Record) -> tuple[str, int, str]:
    """``(fact_id, version, op)`` of a point."""
    payload = point.payload or {}
    return str(payload["fact_id"]), int(payload["version"]), str(payload.get("op", "upsert"))


def _older_than(point: models.Record) -> models.Filter:
    ((fact_id, bound),) = replaced_bounds([_point(point)]).items()
    return models.Filter(
        must=[
            _match("fact_id", fact_id),
            models.FieldCondition(key="version", range=models.Range(lt=bound)),
        ]
    )


def _match(key: str, value: JSONValue) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _equal(key: str, value: JSONValue) -> models.FieldCondition:
    """A search filter's equality, as JSON has it: Qdrant's match keeps 1 from matching a
    stored 1.0, so a number is a one-point range (which a bool does not fall in)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return models.FieldCondition(key=key, range=models.Range(gte=value, lte=value))
    return _match(key, value)


async def _direct(call: Any, *args: Any, **kwargs: Any) -> Any:
    return await call(*args, **kwargs)


def _is_local(client: object) -> bool:
    return type(getattr(client, "_client", None)).__name__.endswith("QdrantLocal")


def _records_metadata(client: object) -> bool:
    """True for a client whose collections keep Lockstep's metadata: local mode, and the
    Qdrant Edge client (``participants.qdrant._edge``)."""
    return _is_local(client) or getattr(client, "records_metadata", False) is True
