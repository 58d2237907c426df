"""A LangGraph checkpoint saver on a Lockstep memory store.

A graph's checkpoints, channel values and pending writes become facts of the store's
storage (the three types below, in a session of their own per thread), written through
the memory API: each call that writes is one atomic transaction, so a checkpoint is never
read without the channel values it needs, on every storage and mirror, through crashes.
No index holds these facts (their types begin with ``lockstep:``): they cost no embedding
and never turn up in ``search``.
"""

from __future__ import annotations

import base64
import json
import random
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
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
from coordinator.errors import UsageError
from coordinator.memory._model import Fact

if TYPE_CHECKING:
    from coordinator.memory._async.store import AsyncMemoryStore
    from coordinator.memory._async.transaction import AsyncMemoryTransaction

CHECKPOINT = OWN_TYPE_PREFIX + "checkpoint"
"""A checkpoint, without its channel values (they are :data:`BLOB` facts)."""
BLOB = OWN_TYPE_PREFIX + "checkpoint_blob"
"""One channel's value at one version, shared by the checkpoints that hold it."""
WRITE = OWN_TYPE_PREFIX + "checkpoint_write"
"""One pending write of a task, against the checkpoint it follows."""
THREAD_SESSION = OWN_TYPE_PREFIX + "langgraph:"
"""A thread's facts are in the session named this followed by the thread id: a thread's
reads and deletes go by the session, and the agent's own sessions are left alone."""

# The payload fields that name each kind of fact (its id is made from them).
_KEYS = {
    CHECKPOINT: ("thread_id", "checkpoint_ns", "checkpoint_id"),
    BLOB: ("thread_id", "checkpoint_ns", "channel", "version"),
    WRITE: ("thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx"),
}
_NAMESPACE = uuid.UUID("0b6f3d2e-5a41-4c8e-9f57-2d1c7e8a9b10")
_Records: TypeAlias = list[dict[str, Any]]  # (the sync twin's class has a method named list)


class AsyncLockstepSaver(BaseCheckpointSaver[str]):
    """LangGraph's checkpointer on a Lockstep memory store.

    ``builder.compile(checkpointer=LockstepSaver(store))`` on a ``MemoryStore`` for
    ``invoke``/``stream``; ``AsyncLockstepSaver`` on an ``AsyncMemoryStore`` for
    ``ainvoke``/``astream``. The store stays the caller's: the saver neither opens nor
    closes it. ``prune`` is not offered: dropping a thread's older
    checkpoints safely needs to know which channels are LangGraph ``DeltaChannel``s.
    """

    def __init__(self, store: AsyncMemoryStore, *, serde: SerializerProtocol | None = None):
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
        values = checkpoint["channel_values"]
        merged = get_checkpoint_metadata(config, metadata)
        run_id = merged.get("run_id")
        async with self.store.transaction(session_id=THREAD_SESSION + thread_id) as tx:
            for channel, version in new_versions.items():
                blob: dict[str, Any] = {
                    "thread_id": thread_id,
                    "checkpoint_ns": ns,
                    "channel": channel,
                    "version": str(version),
                }
                if await tx.get(_fact_id(BLOB, blob)) is not None:
                    continue  # a version's value never changes: this is a retried put
                blob["value"] = self._dump(values[channel]) if channel in values else None
                await _write(tx, BLOB, blob)
            bare = {k: v for k, v in checkpoint.items() if k != "channel_values"}
            record = {
                "thread_id": thread_id,
                "checkpoint_ns": ns,
                "checkpoint_id": checkpoint["id"],
                "parent_checkpoint_id": get_checkpoint_id(config),
                "checkpoint": self._dump(bare),
                "metadata": self._dump(merged),
                # In the clear, for what reads them without the serializer:
                "channel_versions": {c: str(v) for c, v in checkpoint["channel_versions"].items()},
                "run_id": None if run_id is None else str(run_id),
            }
            await _write(tx, CHECKPOINT, record)
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
        async with self.store.transaction(session_id=THREAD_SESSION + thread_id) as tx:
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
        session = THREAD_SESSION + str(thread_id)
        facts = await self.store.query(session_id=session)
        if facts:
            async with self.store.transaction(session_id=session) as tx:
                for fact in facts:
                    await tx.delete(fact["id"])

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints the runs made, with their writes and the channel values
        no other checkpoint of their thread holds, in one transaction."""
        doomed: dict[str, list[dict[str, Any]]] = {}
        for run_id in dict.fromkeys(str(r) for r in run_ids):
            for fact in await self.store.query(CHECKPOINT, {"payload.run_id": run_id}):
                doomed.setdefault(fact["payload"]["thread_id"], []).append(fact["payload"])
        if not doomed:
            return
        async with self.store.transaction() as tx:
            for thread_id, checkpoints in doomed.items():
                facts = await self.store.query(session_id=THREAD_SESSION + thread_id)
                await _delete_checkpoints(tx, facts, {_fact_id(CHECKPOINT, c) for c in checkpoints})

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint, value and write of one thread to another (one transaction);
        facts the target holds under the same keys are replaced."""
        source, target = str(source_thread_id), str(target_thread_id)
        facts = await self.store.query(session_id=THREAD_SESSION + source)
        if facts:
            async with self.store.transaction(session_id=THREAD_SESSION + target) as tx:
                for fact in facts:
                    await _write(tx, fact["type"], {**fact["payload"], "thread_id": target})

    # -- reads --------------------------------------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names, or the thread's latest without a checkpoint_id."""
        thread_id, ns = _thread_and_ns(config)
        checkpoint_id = get_checkpoint_id(config)
        if checkpoint_id:
            key = {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint_id}
            found = await self.store.get(_fact_id(CHECKPOINT, key))
            record = None if found is None else found["payload"]
        else:
            stored = await self._checkpoints(thread_id, ns)
            record = max(stored, key=lambda r: r["checkpoint_id"], default=None)
        return None if record is None else await self._tuple(record)

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
            records = await self._checkpoints(
                thread_id, config["configurable"].get("checkpoint_ns")
            )
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

    async def _checkpoints(self, thread_id: str, ns: str | None) -> _Records:
        filters = {} if ns is None else {"payload.checkpoint_ns": ns}
        found = await self.store.query(CHECKPOINT, filters, session_id=THREAD_SESSION + thread_id)
        return [f["payload"] for f in found]

    async def _tuple(
        self, record: dict[str, Any], metadata: CheckpointMetadata | None = None
    ) -> CheckpointTuple:
        thread_id, ns = record["thread_id"], record["checkpoint_ns"]
        checkpoint_id = record["checkpoint_id"]
        blob_ids = dict(zip(_blob_ids(record), record["channel_versions"], strict=True))
        blobs = await self.store.storage.get_many(list(blob_ids))
        values = {}
        for fact_id, channel in blob_ids.items():
            blob = blobs.get(fact_id)
            if blob is not None and blob.payload["value"] is not None:
                values[channel] = self._load(blob.payload["value"])
        writes = await self.store.query(
            WRITE,
            {"payload.checkpoint_ns": ns, "payload.checkpoint_id": checkpoint_id},
            session_id=THREAD_SESSION + thread_id,
        )
        ordered = sorted(
            (w["payload"] for w in writes),
            key=lambda w: writes_sort_key(w["task_path"], w["task_id"], w["idx"]),
        )
        checkpoint: Checkpoint = self._load(record["checkpoint"])
        checkpoint["channel_values"] = values
        parent = record["parent_checkpoint_id"]
        return CheckpointTuple(
            config=_config(thread_id, ns, checkpoint_id),
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
    await tx.commit(Fact(id=_fact_id(kind, payload), type=kind, payload=payload))


async def _delete_checkpoints(
    tx: AsyncMemoryTransaction, thread_facts: Iterable[dict[str, Any]], doomed: set[str]
) -> None:
    """Delete the checkpoints ``doomed`` names from a thread whose facts are
    ``thread_facts``, with their writes and the values no kept checkpoint holds."""
    kept_blobs: set[str] = set()
    doomed_blobs: set[str] = set()
    doomed_keys = set()
    for fact in thread_facts:
        if fact["type"] == CHECKPOINT:
            record = fact["payload"]
            if fact["id"] in doomed:
                doomed_blobs.update(_blob_ids(record))
                doomed_keys.add((record["checkpoint_ns"], record["checkpoint_id"]))
                await tx.delete(fact["id"])
            else:
                kept_blobs.update(_blob_ids(record))
    for fact in thread_facts:
        record = fact["payload"]
        if (
            fact["type"] == WRITE
            and (record["checkpoint_ns"], record["checkpoint_id"]) in doomed_keys
        ):
            await tx.delete(fact["id"])
    for blob_id in doomed_blobs - kept_blobs:
        if await tx.get(blob_id) is not None:
            await tx.delete(blob_id)


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
    key = json.dumps([payload[field] for field in _KEYS[kind]])
    return f"{kind}:{uuid.uuid5(_NAMESPACE, key)}"


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
