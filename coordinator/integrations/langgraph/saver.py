"""LangGraph's checkpoint savers on a Lockstep memory store: :class:`LockstepSaver` on a
``MemoryStore``, :class:`AsyncLockstepSaver` on an ``AsyncMemoryStore``. What they store,
and how, is in ``_async/saver.py`` (the synchronous twin generated from it)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from coordinator.integrations._loop import EventLoopBridge
from coordinator.integrations.langgraph._async.saver import AsyncSaverCore
from coordinator.integrations.langgraph._sync.saver import SaverCore

if TYPE_CHECKING:
    from coordinator.memory import AsyncMemoryStore

__all__ = ["AsyncLockstepSaver", "LockstepSaver"]


class LockstepSaver(SaverCore):
    """LangGraph's checkpointer on a :class:`MemoryStore`:
    ``builder.compile(checkpointer=LockstepSaver(mem))`` for ``invoke``/``stream``.

    The store stays the caller's: the saver neither opens nor closes it. ``prune`` is not
    offered: dropping a thread's older checkpoints safely needs to know which channels are
    LangGraph ``DeltaChannel``s.
    """


class AsyncLockstepSaver(AsyncSaverCore):
    """:class:`LockstepSaver` on an :class:`AsyncMemoryStore`, for ``ainvoke``/``astream``.

    Make it inside the event loop that uses the memory store: its synchronous methods
    (``graph.invoke`` or ``graph.get_state`` called from another thread, as a synchronous
    web handler does) run on that loop and wait; on the loop's own thread they are
    refused, since waiting there would stop the loop.
    """

    def __init__(self, store: AsyncMemoryStore, *, serde: SerializerProtocol | None = None) -> None:
        super().__init__(store, serde=serde)
        self._bridge = EventLoopBridge(
            "AsyncLockstepSaver",
            "await its async methods (aput, aget_tuple, alist...) on the loop, or use "
            "LockstepSaver with a MemoryStore",
        )

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self._bridge.wait(self.aput(config, checkpoint, metadata, new_versions))

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self._bridge.wait(self.aput_writes(config, writes, task_id, task_path))

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._bridge.wait(self.aget_tuple(config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        found = self.alist(config, filter=filter, before=before, limit=limit)

        async def following() -> CheckpointTuple:
            return await anext(found)

        while True:
            try:
                yield self._bridge.wait(following())
            except StopAsyncIteration:
                return

    def delete_thread(self, thread_id: str) -> None:
        self._bridge.wait(self.adelete_thread(thread_id))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._bridge.wait(self.adelete_for_runs(run_ids))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self._bridge.wait(self.acopy_thread(source_thread_id, target_thread_id))
