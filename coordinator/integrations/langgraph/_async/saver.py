"""A LangGraph checkpoint saver on a Lockstep memory store.

A graph's checkpoints, channel values and pending writes become facts of the store's
storage (the types below), written through the memory API: each call that writes is one
atomic transaction, so a checkpoint is never read without the channel values it needs, on
every storage and mirror, through crashes. No index holds these facts (their types begin
with ``lockstep:``): they cost no embedding and never turn up in ``search``.

Reads go by id or by session, so a step costs the same however long the thread: a thread's
checkpoints, values and heads are in the session :data:`THREAD_SESSION` + the thread id;
a head names each namespace's latest checkpoint (written with it); the writes against one
checkpoint are in a session of their own.
"""

from __future__ import annotations

import base64
import json
import random
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from coordinator.abc import OWN_TYPE_PREFIX
from coordinator.errors import UsageError, VersionConflict
from coordinator.integrations import check_store
from coordinator.memory._model import Fact

if TYPE_CHECKING:
    from coordinator.memory._async.store import AsyncMemoryStore
    from coordinator.memory._async.transaction import AsyncMemoryTransaction

CHECKPOINT = OWN_TYPE_PREFIX + "checkpoint"
"""A checkpoint, without its channel values (they are :data:`BLOB` facts)."""
BLOB = OWN_TYPE_PREFIX + "checkpoint_blob"
"""One channel's value at one version, shared by the checkpoints that hold it."""
HEAD = OWN_TYPE_PREFIX + "checkpoint_head"
"""The id of the latest checkpoint of one namespace of a thread."""
WRITE = OWN_TYPE_PREFIX + "checkpoint_write"
"""One pending write of a task, against the checkpoint it follows."""
THREAD_SESSION = OWN_TYPE_PREFIX + "langgraph:"
"""A thread's checkpoints, values and heads are in the session named this followed by the
thread id, apart from the agent's own sessions."""
WRITES_SESSION = OWN_TYPE_PREFIX + "langgraph-writes:"
"""The writes against one checkpoint are in the session named this followed by a hash of
the checkpoint's thread, namespace and id."""

# The payload fields that name each kind of fact (its id is made from them).
_KEYS = {
    CHECKPOINT: ("thread_id", "checkpoint_ns", "checkpoint_id"),
    BLOB: ("thread_id", "checkpoint_ns", "channel", "version"),
    HEAD: ("thread_id", "checkpoint_ns"),
    WRITE: ("thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx"),
}
_NAMESPACE = uuid.UUID("0b6f3d2e-5a41-4c8e-9f57-2d1c7e8a9b10")
_ATTEMPTS = 5  # a put that lost a race for a head re-reads it and writes again
_Records: TypeAlias = list[dict[str, Any]]  # (the sync twin's class has a method named list)


class AsyncSaverCore(BaseCheckpointSaver[str]):
    """LangGraph's checkpointer on a Lockstep memory store: what the savers in
    ``langgraph/saver.py`` do, in the methods of their own kind (the async ones here, the
    synchronous ones in the generated twin)."""

    def __init__(self, store: AsyncMemoryStore, *, serde: SerializerProtocol | None = None):
        from coordinator.memory._async.store import AsyncMemoryStore

        check_store(type(self).__name__, store, AsyncMemoryStore)
        super().__init__(serde=serde)
        self.store = store

    # -- writes -------------------------------------------------------------------------

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store ``checkpoint`` and the channel values ``new_versions`` names, atomically."""
        thread_id, ns = _thread_and_ns(config)
        merged = get_checkpoint_metadata(config, metadata)
        run_id = merged.get("run_id")
        record = {
            "thread_id": thread_id,
            "checkpoint_ns": ns,
            "checkpoint_id": checkpoint["id"],
            "parent_checkpoint_id": get_checkpoint_id(config),
            "checkpoint": self._dump(
                {k: v for k, v in checkpoint.items() if k != "channel_values"}
            ),
            "metadata": self._dump(merged),
            # In the clear, for what reads them without the serializer:
            "channel_versions": {c: str(v) for c, v in checkpoint["channel_versions"].items()},
            "run_id": None if run_id is None else str(run_id),
        }
        values = checkpoint["channel_values"]
        for attempt in range(_ATTEMPTS):
            try:
                async with self.store.transaction() as tx:
                    for channel, version in new_versions.items():
                        blob: dict[str, Any] = {
                            "thread_id": thread_id,
                            "checkpoint_ns": ns,
                            "channel": channel,
                            "version": str(version),
                        }
                        if await tx.get(_fact_id(BLOB, blob)) is not None:
                            continue  # a version's value never changes: a retried put
                        blob["value"] = self._dump(values[channel]) if channel in values else None
                        await _write(tx, BLOB, blob)
                    await _write(tx, CHECKPOINT, record)
                    head = {"thread_id": thread_id, "checkpoint_ns": ns}
                    current = await tx.get(_fact_id(HEAD, head))
                    if current is None or current["payload"]["checkpoint_id"] < checkpoint["id"]:
                        await _write(tx, HEAD, {**head, "checkpoint_id": checkpoint["id"]})
                break
            except VersionConflict:
                if attempt == _ATTEMPTS - 1:
                    raise
        return _config(thread_id, ns, checkpoint["id"])

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's writes against the checkpoint ``config`` names, atomically.

        A write already stored for the same task and index is kept (a retried task writes
        it again); the special channels (errors, interrupts, …) are replaced.
        """
        thread_id, ns = _thread_and_ns(config)
        checkpoint_id = get_checkpoint_id(config)
        if not checkpoint_id:
            raise UsageError("put_writes(): config['configurable'] has no checkpoint_id")
        async with self.store.transaction() as tx:
            for position, (channel, value) in enumerate(writes):
                write: dict[str, Any] = {
                    "thread_id": thread_id,
                    "checkpoint_ns": ns,
                    "checkpoint_id": checkpoint_id,
                    "task_id": task_id,
                    "idx": WRITES_IDX_MAP.get(channel, position),
                }
                if write["idx"] >= 0 and await tx.get(_fact_id(WRITE, write)) is not None:
                    continue
                write.update(task_path=task_path, channel=channel, value=self._dump(value))
                await _write(tx, WRITE, write)

    async def adelete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint, value and write of the thread, in one transaction."""
        facts = await self._thread_facts(str(thread_id))
        if facts:
            async with self.store.transaction() as tx:
                for fact in facts:
                    await tx.delete(fact["id"])

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints the runs made, with their writes and the channel values
        no other checkpoint of their thread holds, in one transaction (a namespace's head
        moves back to its newest checkpoint left)."""
        doomed: dict[str, set[str]] = {}
        for run_id in dict.fromkeys(str(r) for r in run_ids):
            for fact in await self.store.query(CHECKPOINT, {"payload.run_id": run_id}):
                doomed.setdefault(fact["payload"]["thread_id"], set()).add(fact["id"])
        if doomed:
            async with self.store.transaction() as tx:
                for thread_id, checkpoints in doomed.items():
                    await _delete_checkpoints(tx, await self._thread_facts(thread_id), checkpoints)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint, value and write of one thread to another (one transaction);
        facts the target holds under the same keys are replaced, and a namespace's latest
        checkpoint is the newer of the two threads'."""
        target = str(target_thread_id)
        facts = await self._thread_facts(str(source_thread_id))
        if facts:
            async with self.store.transaction() as tx:
                for fact in facts:
                    copy = {**fact["payload"], "thread_id": target}
                    if fact["type"] == HEAD:
                        held = await tx.get(_fact_id(HEAD, copy))
                        if (
                            held is not None
                            and held["payload"]["checkpoint_id"] > copy["checkpoint_id"]
                        ):
                            continue
                    await _write(tx, fact["type"], copy)

    async def _thread_facts(self, thread_id: str) -> _Records:
        """Every fact of the thread: its session's, and each checkpoint's writes."""
        facts = await self.store.query(session_id=THREAD_SESSION + thread_id)
        for fact in [f for f in facts if f["type"] == CHECKPOINT]:
            facts += await self.store.query(WRITE, session_id=_session(WRITE, fact["payload"]))
        return facts

    # -- reads --------------------------------------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names, or the thread's latest without a checkpoint_id."""
        thread_id, ns = _thread_and_ns(config)
        key = {"thread_id": thread_id, "checkpoint_ns": ns}
        checkpoint_id = get_checkpoint_id(config)
        if not checkpoint_id:
            head = await self.store.get(_fact_id(HEAD, key))
            if head is None:
                return None
            checkpoint_id = head["payload"]["checkpoint_id"]
        found = await self.store.get(_fact_id(CHECKPOINT, {**key, "checkpoint_id": checkpoint_id}))
        return None if found is None else await self._tuple(found["payload"])

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Checkpoints newest first: of the thread (namespace, checkpoint id) ``config``
        names, or of every thread; those whose metadata holds every ``filter`` item, older
        than ``before``, at most ``limit``."""
        if config is None:
            records = [f["payload"] for f in await self.store.query(CHECKPOINT)]
        else:
            thread_id = str(config["configurable"]["thread_id"])
            ns = config["configurable"].get("checkpoint_ns")
            filters = {} if ns is None else {"payload.checkpoint_ns": ns}
            session = THREAD_SESSION + thread_id
            records = [f["payload"] for f in await self.store.query(CHECKPOINT, filters, session)]
            if wanted := get_checkpoint_id(config):
                records = [r for r in records if r["checkpoint_id"] == wanted]
        if before is not None and (newest := get_checkpoint_id(before)):
            records = [r for r in records if r["checkpoint_id"] < newest]
        records.sort(key=lambda r: r["checkpoint_id"], reverse=True)
        left = limit
        for record in records:
            if left is not None and left <= 0:
                return
            metadata = self._load(record["metadata"])
            if filter and any(metadata.get(k) != v for k, v in filter.items()):
                continue
            if left is not None:
                left -= 1
            yield await self._tuple(record, metadata)

    async def _tuple(
        self, record: dict[str, Any], metadata: CheckpointMetadata | None = None
    ) -> CheckpointTuple:
        thread_id, ns = record["thread_id"], record["checkpoint_ns"]
        blob_ids = dict(zip(_blob_ids(record), record["channel_versions"], strict=True))
        blobs = await self.store.get_many(list(blob_ids))
        values = {}
        for fact_id, channel in blob_ids.items():
            blob = blobs.get(fact_id)
            if blob is not None and blob["payload"]["value"] is not None:
                values[channel] = self._load(blob["payload"]["value"])
        writes = await self.store.query(WRITE, session_id=_session(WRITE, record))
        ordered = sorted(
            (w["payload"] for w in writes),
            key=lambda w: writes_sort_key(w["task_path"], w["task_id"], w["idx"]),
        )
        checkpoint: Checkpoint = self._load(record["checkpoint"])
        checkpoint["channel_values"] = values
        parent = record["parent_checkpoint_id"]
        return CheckpointTuple(
            config=_config(thread_id, ns, record["checkpoint_id"]),
            checkpoint=checkpoint,
            metadata=self._load(record["metadata"]) if metadata is None else metadata,
            parent_config=None if not parent else _config(thread_id, ns, parent),
            pending_writes=[(w["task_id"], w["channel"], self._load(w["value"])) for w in ordered],
        )

    # -- versions and values ------------------------------------------------------------

    def get_next_version(self, current: str | None, channel: None) -> str:
        """``<n+1, 32 digits>.<random>``: ordered as LangGraph's own savers' versions; the
        random part keeps two forks of one checkpoint from sharing a value's fact."""
        number = 0 if current is None else int(str(current).split(".")[0])
        return f"{number + 1:032}.{random.random():016}"

    def _dump(self, value: Any) -> dict[str, str]:
        kind, data = self.serde.dumps_typed(value)
        return {"type": kind, "data": base64.b64encode(data).decode("ascii")}

    def _load(self, stored: dict[str, str]) -> Any:
        return self.serde.loads_typed((stored["type"], base64.b64decode(stored["data"])))


async def _write(tx: AsyncMemoryTransaction, kind: str, payload: dict[str, Any]) -> None:
    fact = Fact(id=_fact_id(kind, payload), type=kind, payload=payload)
    await tx.commit(fact, session_id=_session(kind, payload))


async def _delete_checkpoints(
    tx: AsyncMemoryTransaction, thread_facts: _Records, doomed: set[str]
) -> None:
    """Delete the checkpoints ``doomed`` names from a thread whose facts are
    ``thread_facts``: with their writes, the values no checkpoint left holds, and the
    heads that named them (moved back to their namespace's newest checkpoint left)."""
    checkpoints = [f["payload"] for f in thread_facts if f["type"] == CHECKPOINT]
    gone = [c for c in checkpoints if _fact_id(CHECKPOINT, c) in doomed]
    kept = [c for c in checkpoints if _fact_id(CHECKPOINT, c) not in doomed]
    gone_writes = {_session(WRITE, c) for c in gone}
    gone_blobs = {b for c in gone for b in _blob_ids(c)} - {b for c in kept for b in _blob_ids(c)}
    for fact in thread_facts:
        kind, payload = fact["type"], fact["payload"]
        if (
            fact["id"] in doomed
            or (kind == WRITE and _session(WRITE, payload) in gone_writes)
            or (kind == BLOB and fact["id"] in gone_blobs)
        ):
            await tx.delete(fact["id"])
        elif kind == HEAD and _fact_id(CHECKPOINT, payload) in doomed:
            left = [
                c["checkpoint_id"] for c in kept if c["checkpoint_ns"] == payload["checkpoint_ns"]
            ]
            if left:
                await _write(tx, HEAD, {**payload, "checkpoint_id": max(left)})
            else:
                await tx.delete(fact["id"])


def _blob_ids(record: dict[str, Any]) -> list[str]:
    """The ids of the values a checkpoint holds, in the order of its channel_versions."""
    return [
        _fact_id(
            BLOB,
            {
                "thread_id": record["thread_id"],
                "checkpoint_ns": record["checkpoint_ns"],
                "channel": channel,
                "version": version,
            },
        )
        for channel, version in record["channel_versions"].items()
    ]


def _fact_id(kind: str, payload: dict[str, Any]) -> str:
    """The fact id of the ``kind`` fact ``payload`` describes: made from its key fields,
    which may hold any character, so they are hashed."""
    return f"{kind}:{_hash(payload[field] for field in _KEYS[kind])}"


def _session(kind: str, payload: dict[str, Any]) -> str:
    """The session of the ``kind`` fact ``payload`` describes (for a write, a checkpoint's
    payload gives the same session)."""
    if kind == WRITE:
        keys = _KEYS[CHECKPOINT]
        return WRITES_SESSION + _hash(payload[field] for field in keys)
    return THREAD_SESSION + str(payload["thread_id"])


def _hash(parts: Any) -> str:
    return str(uuid.uuid5(_NAMESPACE, json.dumps(list(parts))))


def _thread_and_ns(config: RunnableConfig) -> tuple[str, str]:
    configurable = config.get("configurable") or {}
    if configurable.get("thread_id") is None:
        raise UsageError(
            "a checkpointer needs config['configurable']['thread_id'] (the conversation's id)"
        )
    return str(configurable["thread_id"]), str(configurable.get("checkpoint_ns") or "")


def _config(thread_id: str, ns: str, checkpoint_id: str) -> RunnableConfig:
    return {
        "configurable": {
            "thread_id": thread_id,
            "checkpoint_ns": ns,
            "checkpoint_id": checkpoint_id,
        }
    }
