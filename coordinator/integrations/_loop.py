"""The synchronous methods of the integrations made on an async memory store (LangGraph's
store and saver, LangChain's vector store): run on the event loop each was made in, from
another thread (as LangGraph runs a synchronous tool, or as a synchronous web handler
calls ``graph.get_state``)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from coordinator.errors import UsageError

_T = TypeVar("_T")


class EventLoopBridge:
    """Waits, on another thread, for coroutines run on the loop running at its making.

    :param owner: the class whose synchronous methods use it, named in the refusal.
    :param instead: what to call on the loop instead, and the synchronous alternative.
    """

    def __init__(self, owner: str, instead: str) -> None:
        self._owner, self._instead = owner, instead
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

    def wait(self, work: Coroutine[Any, Any, _T]) -> _T:
        """``work``'s result, run on the loop; refused on the loop's own thread, where
        waiting would stop the loop it waits for, and without a loop."""
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if self._loop is None or running is self._loop or self._loop.is_closed():
            work.close()  # never started: no "never awaited" warning
            raise UsageError(
                f"{self._owner}'s synchronous methods run on the event loop it was made in, "
                f"called from another thread: {self._instead}"
            )
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()
