"""The Chroma index participant (source of the generated sync twin).

Works with Chroma's clients: ``PersistentClient`` (embedded), ``Client()`` (in memory),
``HttpClient`` (a ``chroma run`` server) and, in the async twin, ``AsyncHttpClient``; the
async twin runs a synchronous client's calls off the event loop. Staging is described in ``participants/_vectors.py``.

Chroma traps avoided here: ``add`` silently ignores an existing id (only ``upsert`` is
used); ``$ne``/``$nin`` match records that lack the field (only positive equality is
used); metadata values may not be ``None`` (absent keys are left out).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from coordinator._acompat import ablocking, aresolve
from coordinator.abc import Embedder, Hit, IndexContents, Vote
from coordinator.errors import ConfigurationError, LockstepError, ParticipantError
from coordinator.records import JSONValue, Write
from participants._async.combine import AsyncWriteCombiner
from participants._vectors import (
    COMMITTED,
    PENDING,
    Point,
    VectorIndexBase,
    configured,
    hit_of,
    search_filter,
    stage,
)
from participants.chroma import _engine

MARKER = "lockstep_dim"
#: Under contention, a combined write waits up to this fraction of the last turn's
#: duration for more transactions (a Chroma server writes one call at a time, so the
#: points a call carries are what sets the throughput of concurrent writers).
LINGER = 0.5
#: Records written between two persists of a collection's HNSW index, for collections
#: Lockstep creates (Chroma's default is 1,000). A write call to a Chroma 1.x collection
#: costs more the more records wait to be persisted: ``python -m benchmarks.chroma_sync``
#: (1,000 one-point upserts on fresh collections, two rounds) gave 4.64 ms mean at 200
#: against 6.67 at 1,000 embedded and 5.64 against 8.15 on a server (with 20,000 points
#: held: 5.26 against 7.47, and 7.23 against 9.85), searches showing no consistent change.
SYNC_THRESHOLD = 200


class AsyncChromaIndex(VectorIndexBase):
    """A vector index in a Chroma collection, kept in lockstep with the fact store.

    Takes MemState's ``ChromaSyncHook`` arguments, plus ``embedder=``.

    :param client: a Chroma client (``PersistentClient``, ``Client``, ``HttpClient``).
    :param collection_name: created (cosine space) if missing; an existing one must have
        been created by Lockstep with the embedder's dimension.
    :param text_field: payload field to embed (default: ``content``, ``text``, or the
        whole payload as JSON).
    :param metadata_fields: payload fields copied into each record's metadata.
    :param embedder: turns text into vectors (default: :func:`default_embedder`).
    :param target_types: fact types this index holds (default: every type).
    :param name: participant name (default ``chroma:<collection_name>``).
    :param combine_writes: let concurrent prepares stage their points in one upsert, and
        concurrent commits go in one batch (a Chroma call costs about the same for one
        point as for eight); on by default.
    :param sync_threshold: the HNSW ``sync_threshold`` of a collection this index creates
        (default :data:`SYNC_THRESHOLD`; ``None`` keeps Chroma's). An existing collection
        keeps its own: change it with ``collection.modify(configuration=...)``.
    """

    def __init__(
        self,
        client: Any,
        collection_name: str,
        text_field: str | None = None,
        metadata_fields: Sequence[str] | None = None,
        *,
        embedder: Embedder | None = None,
        target_types: Sequence[str] | None = None,
        name: str | None = None,
        combine_writes: bool = True,
        sync_threshold: int | None = SYNC_THRESHOLD,
    ) -> None:
        if sync_threshold is not None and (
            isinstance(sync_threshold, bool)
            or not isinstance(sync_threshold, int)
            or sync_threshold < 2
        ):
            raise ConfigurationError(
                f"sync_threshold must be an int >= 2 (records between two persists of the "
                f"HNSW index), got {sync_threshold!r}"
            )
        self._sync_threshold = sync_threshold
        self._client = client
        self._collection_name = collection_name
        super().__init__(
            f"chroma:{collection_name}",
            text_field,
            metadata_fields,
            embedder,
            target_types,
            name,
        )
        self._collection: Any = None
        # Chroma's engine when it runs in this process (an AsyncHttpClient passed without
        # its await, resolved later, is a server's client).
        self._engine: Any = _engine.engine_of(client)
        self.in_process = self._engine is not None
        self._most = 1  # records a write call may carry, read from the client on first use
        # What this process staged, by txid, until the branch ends: a commit then needs
        # no read to find its points (recovery and other processes' branches read them).
        self._staged: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        # Concurrent prepares share one upsert; concurrent commits one commit_many.
        self._stager: AsyncWriteCombiner[Point] | None = None
        self._finisher: AsyncWriteCombiner[str] | None = None
        if combine_writes:
            self._stager = AsyncWriteCombiner(
                self._name, self._upsert, self._fence.check, linger=LINGER
            )
            self._finisher = AsyncWriteCombiner(self._name, self._commit_batch, linger=LINGER)

    # -- the participant contract -------------------------------------------------------

    async def prepare(self, txid: str, writes: Sequence[Write]) -> Vote:
        self._fence.check(txid)
        points = stage(self.shape, txid, writes)
        if not points:
            return Vote.READ_ONLY
        await self._ensure_collection()
        if self._stager is None:
            await self._upsert(points)
        else:
            await self._stager.submit(txid, points)
        self._staged[txid] = [(p.id, dict(p.payload)) for p in points]
        if txid in self._fence:  # aborted while its upsert ran: abort() may have missed it
            self._staged.pop(txid, None)
        return Vote.YES

    async def _upsert(self, points: list[Point]) -> None:
        txids = {p.payload["txid"] for p in points}
        await self._in_batches(
            "prepare",
            str(txids.pop()) if len(txids) == 1 else None,
            self._collection.upsert,
            ids=[p.id for p in points],
            embeddings=[p.vector for p in points],
            metadatas=[p.payload for p in points],
        )

    async def commit(self, txid: str) -> None:
        if self._finisher is None:
            await self._commit_batch([txid])
        else:
            await self._finisher.submit(txid, [txid])

    async def commit_many(self, txids: Sequence[str]) -> None:
        """Commit many branches in one batch (see :meth:`_commit_batch`)."""
        if txids:
            await self._commit_batch(list(txids))

    async def _commit_batch(self, txids: list[str]) -> None:
        """Mark the branches' points committed, then delete what they replace: one call
        each (and one more for a delete's marker), plus a read of the points of branches
        this process did not stage."""
        txid = txids[0] if len(txids) == 1 else None  # named in errors when alone
        collection = await self._ensure_collection()
        points: list[tuple[str, dict[str, Any]]] = []
        unknown: list[str] = []
        for each in txids:
            known = self._staged.pop(each, None)
            if known is None:
                unknown.append(each)
            else:
                points += known
        if unknown:
            found = await self._call(
                "commit", txid, collection.get, where=_any("txid", unknown), include=["metadatas"]
            )
            points += zip(found["ids"], found["metadatas"], strict=True)
        if not points:
            return
        marked = [point for point, m in points if m.get("state") == PENDING]
        if marked:
            # Only the key that changes: Chroma keeps the others, and each key written
            # costs (a batch of 8 points took 0.84x the CPU, of 32 0.76x, embedded).
            await self._in_batches(
                "commit",
                txid,
                collection.update,
                ids=marked,
                metadatas=[{"state": COMMITTED} for _ in marked],
            )
        # Then remove what the new versions replace; a delete's marker goes last, once
        # the versions it stands for are gone.
        newest: dict[str, int] = {}
        for _, m in points:
            fact_id = str(m["fact_id"])
            newest[fact_id] = max(newest.get(fact_id, 0), int(m["version"]))
        replacing = {f: v for f, v in sorted(newest.items()) if v > 1}  # a first replaces none
        if len(replacing) >= _LOOK_UP_FROM:
            # Found by fact, then deleted by id: the same points as the filter below, in
            # half its time once a batch holds a few facts.
            found = await self._call(
                "commit",
                txid,
                collection.get,
                where=_any("fact_id", list(replacing)),
                include=["metadatas"],
            )
            replaced = [
                point
                for point, m in zip(found["ids"], found["metadatas"], strict=True)
                if int(m["version"]) < replacing[str(m["fact_id"])]
            ]
            if replaced:
                await self._in_batches("commit", txid, collection.delete, ids=replaced)
        elif replacing:
            older = [
                {"$and": [{"fact_id": fact_id}, {"version": {"$lt": version}}]}
                for fact_id, version in replacing.items()
            ]
            where = older[0] if len(older) == 1 else {"$or": older}
            await self._call("commit", txid, collection.delete, where=where)
        markers = [
            point
            for point, m in points
            if m.get("op") == "delete" and int(m["version"]) == newest[str(m["fact_id"])]
        ]
        if markers:
            await self._in_batches("commit", txid, collection.delete, ids=markers)

    async def abort(self, txid: str) -> None:
        await self._abort([txid], txid)

    async def abort_many(self, txids: Sequence[str]) -> None:
        """Delete the staged points of many branches in one call."""
        if txids:
            await self._abort(txids, None)

    async def _abort(self, txids: Sequence[str], txid: str | None) -> None:
        for each in txids:
            self._fence.add(each)
            self._staged.pop(each, None)
        collection = await self._ensure_collection()
        await self._call(
            "abort",
            txid,
            collection.delete,
            where={"$and": [_any("txid", txids), {"state": PENDING}]},
        )

    async def recover(self) -> list[str]:
        collection = await self._ensure_collection()
        # A remembered branch's points were written before it was remembered: if the
        # listing does not show them, another process ended the branch, and this one
        # (its coordinator interrupted, say) would otherwise remember it until it exits.
        remembered = set(self._staged)
        staged = await self._call(
            "recover", None, collection.get, where={"state": PENDING}, include=["metadatas"]
        )
        listed = {str(m["txid"]) for m in staged["metadatas"]}
        for ended in remembered - listed:
            self._staged.pop(ended, None)
        return sorted(listed)

    # -- reads --------------------------------------------------------------------------

    async def search(
        self, vector: Sequence[float], k: int, where: Mapping[str, JSONValue]
    ) -> list[Hit]:
        collection = await self._ensure_collection()
        if not where:
            # Chroma answers a query with a filter far slower than one without (a probe,
            # 5,000 points, embedded: 38-52 ms against 5-6), and a plain search's only
            # condition is to leave out delete markers: it asks for the nearest points, and
            # again with the filter only when a marker was among them. A memory-API search
            # of 5,000 memories went from 24.6 to 5.5 ms (``benchmarks.search_scale``).
            found = await self._query(collection, vector, k, None)
            if all(m.get("op") == "upsert" for m in found["metadatas"][0]):
                return _hits(found)
        conditions = [{key: value} for key, value in search_filter(where).items()]
        clause = {"$and": conditions} if len(conditions) > 1 else conditions[0]
        return _hits(await self._query(collection, vector, k, clause))

    async def _query(
        self, collection: Any, vector: Sequence[float], k: int, where: dict[str, Any] | None
    ) -> Any:
        return await self._call(
            "search",
            None,
            collection.query,
            query_embeddings=[list(vector)],
            n_results=k,
            where=where,
            include=["metadatas", "distances"],
        )

    async def contents(self) -> IndexContents:
        collection = await self._ensure_collection()
        everything = await self._call("contents", None, collection.get, include=["metadatas"])
        committed: dict[str, int] = {}
        fields: dict[str, dict[str, JSONValue]] = {}
        pending: set[str] = set()
        for metadata in everything["metadatas"]:
            if metadata.get("state") == PENDING:
                pending.add(str(metadata.get("txid")))
            elif metadata.get("op") == "upsert":
                fact_id, version = str(metadata["fact_id"]), int(metadata["version"])
                if version > committed.get(fact_id, 0):
                    committed[fact_id] = version
                    fields[fact_id] = configured(self.metadata_fields, metadata)
        return IndexContents(committed, tuple(sorted(pending)), fields)

    async def close(self) -> None:
        """The client belongs to the caller; nothing to release here."""

    # -- internals ----------------------------------------------------------------------

    async def _ensure_collection(self) -> Any:
        if self._collection is not None:
            return self._collection
        # `chromadb.AsyncHttpClient()` may be passed without its `await`.
        client = self._client = await aresolve(self._client)
        hnsw: dict[str, Any] = {"space": "cosine"}  # for a collection created here
        if self._sync_threshold is not None:
            hnsw["sync_threshold"] = self._sync_threshold
        try:
            collection = await self._call(
                "open",
                None,
                client.get_or_create_collection,
                self._collection_name,
                embedding_function=None,
                metadata={MARKER: self.shape.dim, **self.recorded_embedder()},
                configuration={"hnsw": hnsw},
            )
        except ParticipantError as exc:
            from chromadb.errors import InvalidArgumentError

            if isinstance(exc.__cause__, InvalidArgumentError):  # the name, as Chroma checks it
                raise ConfigurationError(
                    f"Chroma refused the collection name {self._collection_name!r} "
                    f"({exc.__cause__}); name another collection",
                    participant=self._name,
                ) from exc.__cause__
            raise
        metadata = collection.metadata or {}
        if MARKER not in metadata:
            count = await self._call("open", None, collection.count)
            if count:
                raise ConfigurationError(
                    f"Chroma collection {self._collection_name!r} was not created by Lockstep "
                    f"and holds {count} records; use another collection name",
                    participant=self._name,
                )
        elif metadata[MARKER] != self.shape.dim:
            raise ConfigurationError(
                f"Chroma collection {self._collection_name!r} holds {metadata[MARKER]}-"
                f"dimensional vectors; the embedder makes {self.shape.dim}",
                participant=self._name,
            )
        self.check_embedder(metadata, self._collection_name)
        space = ((getattr(collection, "configuration_json", None) or {}).get("hnsw") or {}).get(
            "space"
        )
        if space not in (None, "cosine"):  # scores are read as cosine similarities
            raise ConfigurationError(
                f"Chroma collection {self._collection_name!r} uses the {space!r} space; "
                "Lockstep needs 'cosine': use another collection name",
                participant=self._name,
            )
        # Chroma refuses a write of more records than this in one call.
        self._most = int(await self._call("open", None, client.get_max_batch_size))
        self._collection = collection
        return collection

    async def _in_batches(
        self, action: str, txid: str | None, fn: Any, **columns: Sequence[Any]
    ) -> None:
        """``fn(**columns)`` in as many calls as Chroma's batch limit needs (a transaction,
        or the transactions one call combines, may hold more records than the limit). Each
        call is idempotent, so a retry after a failure part of the way is safe."""
        length = len(columns["ids"])
        for start in range(0, length, self._most):
            part = {key: values[start : start + self._most] for key, values in columns.items()}
            await self._call(action, txid, fn, **part)

    async def _call(self, action: str, txid: str | None, fn: Any, *args: Any, **kwargs: Any) -> Any:
        _engine.check(self._engine, self._name)
        try:
            if inspect.iscoroutinefunction(fn):  # chromadb.AsyncHttpClient: awaited as is
                return await fn(*args, **kwargs)
            return await ablocking(fn, *args, **kwargs)
        except LockstepError:
            raise
        except Exception as exc:
            _engine.note(self._engine, exc, self._name)
            raise ParticipantError(
                f"Chroma {action} on collection {self._collection_name!r} failed: {exc}",
                txid=txid,
                participant=self._name,
            ) from exc


# From this many facts in one commit batch, the versions they replace are looked up and
# deleted by id rather than deleted by a filter of one clause a fact. Probes alternating
# the two: on a server the filter took 0.85x the two calls' time with 1 fact, 0.9x with 2,
# 1.15x with 8 and 2x with 40; embedded 1.05x with 1 and 2.4x with 40.
_LOOK_UP_FROM = 4


def _hits(found: Any) -> list[Hit]:
    """The hits of a query's answer (cosine space: distance = 1 - similarity)."""
    return [
        hit_of(m, 1.0 - float(d))
        for m, d in zip(found["metadatas"][0], found["distances"][0], strict=True)
    ]


def _any(key: str, values: Sequence[str]) -> dict[str, Any]:
    """A ``where`` clause: ``key`` equals one of ``values``."""
    if len(values) == 1:
        return {key: values[0]}
    return {key: {"$in": list(values)}}
