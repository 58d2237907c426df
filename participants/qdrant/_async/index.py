"""The Qdrant index participant (source of the generated sync twin).

Works against a Qdrant server (``AsyncQdrantClient(url=...)``), local mode
(``AsyncQdrantClient(path=...)``) and ``:memory:``. Staging is described in
``participants/_vectors.py``; Qdrant batches are not atomic, so every step is idempotent
and recoverable from the points alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from qdrant_client import AsyncQdrantClient, models

from coordinator._acompat import ALock
from coordinator.abc import Embedder, Hit, IndexContents, Vote
from coordinator.errors import ConfigurationError, LockstepError, ParticipantError
from coordinator.records import JSONValue, Write
from participants._vectors import (
    COMMITTED,
    PENDING,
    VectorIndexBase,
    hit_of,
    search_filter,
    stage,
)

_PAGE = 512


class AsyncQdrantIndex(VectorIndexBase):
    """A vector index in a Qdrant collection, kept in lockstep with the fact store.

    Takes MemState's ``QdrantSyncHook`` arguments, plus ``embedder=``.

    :param client: a Qdrant client (server, local ``path=`` or ``:memory:``); not closed
        by this index unless ``owns_client``.
    :param collection_name: created (cosine distance) if missing; an existing one must
        have been created by Lockstep with the embedder's dimension.
    :param text_field: payload field to embed (default: ``content``, ``text``, or the
        whole payload as JSON).
    :param metadata_fields: payload fields copied into each point for filtering.
    :param embedder: turns text into vectors (default: :func:`default_embedder`).
    :param target_types: fact types this index holds (default: every type).
    :param name: participant name (default ``qdrant:<collection_name>``).
    """

    def __init__(
        self,
        client: AsyncQdrantClient,
        collection_name: str,
        text_field: str | None = None,
        metadata_fields: Sequence[str] | None = None,
        *,
        embedder: Embedder | None = None,
        target_types: Sequence[str] | None = None,
        name: str | None = None,
        owns_client: bool = False,
    ) -> None:
        self._client = client
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
        self._guard: Any = ALock() if _is_local(client) else contextlib.nullcontext()
        self._opening = ALock()
        self._ready = False

    # -- the participant contract -------------------------------------------------------

    async def prepare(self, txid: str, writes: Sequence[Write]) -> Vote:
        self._fence.check(txid)
        points = stage(self.shape, txid, writes)
        if not points:
            return Vote.READ_ONLY
        await self._ensure_collection()
        try:
            await self._guarded(
                self._client.upsert,
                self._collection,
                [models.PointStruct(id=p.id, vector=p.vector, payload=p.payload) for p in points],
                wait=True,
            )
        except Exception as exc:
            raise self._error("prepare", txid, exc) from exc
        return Vote.YES

    async def commit(self, txid: str) -> None:
        await self._ensure_collection()
        try:
            staged = await self._scroll(_match("txid", txid))
            await self._mark_committed(staged)
            if staged:  # what the new versions replace, found by the server
                await self._guarded(
                    self._client.delete,
                    self._collection,
                    models.Filter(should=[_older_than(p) for p in staged]),
                    wait=True,
                )
        except Exception as exc:
            raise self._error("commit", txid, exc) from exc

    async def commit_many(self, txids: Sequence[str]) -> None:
        """Commit many branches with one scroll of the collection and two writes (a
        filter with a condition per fact costs local mode a pass over every point each)."""
        if not txids:
            return
        await self._ensure_collection()
        chosen = set(txids)
        try:
            points = await self._scroll(None)
            staged = [p for p in points if (p.payload or {}).get("txid") in chosen]
            await self._mark_committed(staged)
            bounds: dict[str, int] = {}
            for point in staged:
                fact_id, bound = _replaced_below(point)
                bounds[fact_id] = max(bounds.get(fact_id, 0), bound)
            older = [
                p.id
                for p in points
                if (p.payload or {}).get("fact_id") in bounds
                and int((p.payload or {})["version"]) < bounds[(p.payload or {})["fact_id"]]
            ]
            if older:
                await self._guarded(
                    self._client.delete,
                    self._collection,
                    models.PointIdsList(points=older),
                    wait=True,
                )
        except Exception as exc:
            raise self._error("commit", None, exc) from exc

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
            await self._guarded(
                self._client.delete,
                self._collection,
                models.Filter(must=[_match("txid", txid), _match("state", PENDING)]),
                wait=True,
            )
        except Exception as exc:
            raise self._error("abort", txid, exc) from exc

    async def abort_many(self, txids: Sequence[str]) -> None:
        """Delete the pending points of many branches (one scroll, one delete by id)."""
        if not txids:
            return
        chosen = set(txids)
        for txid in txids:
            self._fence.add(txid)
        await self._ensure_collection()
        try:
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
            raise self._error("abort", None, exc) from exc

    async def recover(self) -> list[str]:
        await self._ensure_collection()
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
        conditions: list[models.Condition] = [
            _match(key, value) for key, value in search_filter(where).items()
        ]
        try:
            found = await self._guarded(
                self._client.query_points,
                self._collection,
                query=list(vector),
                query_filter=models.Filter(must=conditions),
                limit=k,
                with_payload=True,
            )
        except Exception as exc:
            raise self._error("search", None, exc) from exc
        return [hit_of(p.payload, float(p.score)) for p in found.points if p.payload]

    async def contents(self) -> IndexContents:
        await self._ensure_collection()
        committed: dict[str, int] = {}
        pending: set[str] = set()
        for point in await self._scroll(None):
            payload = point.payload or {}
            if payload.get("state") == PENDING:
                pending.add(str(payload.get("txid")))
            elif payload.get("op") == "upsert":
                fact_id = str(payload["fact_id"])
                committed[fact_id] = max(committed.get(fact_id, 0), int(payload["version"]))
        return IndexContents(committed, tuple(sorted(pending)))

    async def close(self) -> None:
        if self._owns_client:
            await self._client.close()

    # -- internals ----------------------------------------------------------------------

    async def _ensure_collection(self) -> None:
        if self._ready:
            return
        async with self._opening:  # concurrent first calls create the collection once
            if not self._ready:
                await self._open_collection()

    async def _open_collection(self) -> None:
        try:
            if not await self._create_collection():
                info = await self._guarded(self._client.get_collection, self._collection)
                await self._check_schema(info)
        except LockstepError:
            raise
        except Exception as exc:
            raise self._error("open", None, exc) from exc
        self._ready = True

    async def _create_collection(self) -> bool:
        """Create the collection if it is missing; False if it exists (also when another
        process created it first)."""
        if await self._guarded(self._client.collection_exists, self._collection):
            return False
        try:
            await self._guarded(
                self._client.create_collection,
                self._collection,
                vectors_config=models.VectorParams(
                    size=self.shape.dim, distance=models.Distance.COSINE
                ),
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
        sample, _ = await self._guarded(
            self._client.scroll, self._collection, limit=1, with_payload=True
        )
        if sample and not {"fact_id", "version", "state"} <= set(sample[0].payload or {}):
            raise ConfigurationError(
                f"Qdrant collection {self._collection!r} holds points Lockstep did not write "
                "(no fact_id/version/state in their payload); use another collection name",
                participant=self._name,
            )

    async def _scroll(self, condition: models.FieldCondition | None) -> list[models.Record]:
        found: list[models.Record] = []
        offset = None
        query = None if condition is None else models.Filter(must=[condition])
        while True:
            page, offset = await self._guarded(
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

    async def _guarded(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        async with self._guard:
            return await call(*args, **kwargs)

    def _error(self, action: str, txid: str | None, exc: Exception) -> LockstepError:
        if isinstance(exc, LockstepError):
            return exc
        return ParticipantError(
            f"Qdrant {action} on collection {self._collection!r} failed: {exc}",
            txid=txid,
            participant=self._name,
        )


def _replaced_below(point: models.Record) -> tuple[str, int]:
    """``(fact_id, bound)``: committing ``point`` replaces the fact's versions below
    ``bound`` (an upsert: older versions; a delete: every version up to its marker)."""
    payload = point.payload or {}
    version = int(payload["version"])
    return str(payload["fact_id"]), version + 1 if payload.get("op") == "delete" else version


def _older_than(point: models.Record) -> models.Filter:
    fact_id, bound = _replaced_below(point)
    return models.Filter(
        must=[
            _match("fact_id", fact_id),
            models.FieldCondition(key="version", range=models.Range(lt=bound)),
        ]
    )


def _match(key: str, value: JSONValue) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _is_local(client: object) -> bool:
    return type(getattr(client, "_client", None)).__name__.endswith("QdrantLocal")
