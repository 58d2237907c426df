"""Write combining: concurrent prepares of one index share one write call.

Some indexes cost a fixed amount per call, whatever the call carries: a Chroma upsert of one
point costs about as much as an upsert of eight (measured in ``benchmarks/optimisations.py``).
MemState writes one point per commit behind one lock; a write combiner lets concurrent
transactions stage their points in one call instead — group commit for the index's phase 1.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from coordinator._acompat import ALock, AsyncItemsWriter, asleep
from coordinator.errors import ParticipantError

T = TypeVar("T")

#: The turns over which a combiner remembers contention (see :class:`AsyncWriteCombiner`).
RECENT = 8
#: The longest a turn waits for more requests, in seconds: a turn a store in trouble
#: made slow (a server that did not answer for a while) must not hold the next one back
#: for half as long (a writer's usual turn is a few to a few tens of milliseconds).
LINGER_MAX = 0.1


@dataclass(eq=False)
class _Request(Generic[T]):
    key: str
    items: Sequence[T]
    done: bool = False
    error: BaseException | None = None


@dataclass(eq=False)
class _Queue(Generic[T]):
    requests: list[_Request[T]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, request: _Request[T]) -> None:
        with self.lock:
            self.requests.append(request)

    def take(self) -> list[_Request[T]]:
        with self.lock:
            taken, self.requests = self.requests, []
            return taken

    def __len__(self) -> int:
        return len(self.requests)

    def drop(self, request: _Request[T]) -> None:
        with self.lock:
            if request in self.requests:
                self.requests.remove(request)


class AsyncWriteCombiner(Generic[T]):
    """Runs ``write(items)`` once for all the callers waiting at that moment.

    The first caller writes its own items. Callers arriving while a write runs queue
    theirs; the next to get the turn writes everything queued so far in one call, and the
    others return when that call has. A request is written only if ``admit(key)`` does
    not raise when its write starts (an index passes its abort fence, so a prepare the
    coordinator gave up on and aborted is not written late). If a combined write fails,
    each request is written again on its own, so one transaction's bad items fail that
    transaction only.

    With ``linger``, a turn under contention waits a moment for more requests before it
    writes. Without it, the callers a write releases come back while the next write (of
    those who queued meanwhile) runs, so under steady load the callers split into two
    groups that write in alternate turns, each carrying half of them. And a write that
    holds the interpreter (an embedded index) keeps the other callers from reaching the
    queue while it runs: one turn that finds a single request makes the next find a single
    request too, and the callers write one at a time, each waiting for all the others.
    So contention is remembered over the last :data:`RECENT` turns: a turn waits when
    one of them wrote more than one request or saw one arrive while it wrote. The wait
    lasts at most ``linger`` times the last turn's duration (and :data:`LINGER_MAX`),
    and ends as soon as as many requests are queued as the largest batch of the recent
    turns that waited. Nothing waits without contention: a lone caller's turns write at
    once.

    :param name: the participant's name (for errors).
    :param write: writes the items of one or more requests, raising on failure.
    :param admit: called with a request's key when its write starts; raises to refuse it.
    :param linger: the wait for more requests, as a fraction of the last turn's duration
        (0: none).
    """

    def __init__(
        self,
        name: str,
        write: AsyncItemsWriter[T],
        admit: Callable[[str], None] | None = None,
        *,
        linger: float = 0.0,
    ) -> None:
        self._name = name
        self._write = write
        self._admit = admit
        self._linger = linger
        self._turn = ALock()
        self._queue: _Queue[T] = _Queue()
        self._seen: deque[int] = deque(maxlen=RECENT)  # requests each recent turn saw
        self._last_seconds = 0.0
        self._waited: deque[int] = deque(maxlen=RECENT)  # batch sizes of recent turns that waited
        self.calls = 0
        """Write calls made so far (a measure of combining)."""

    async def submit(self, key: str, items: Sequence[T]) -> None:
        """Write ``items`` (alone or with other callers'); raise what their write raised."""
        request = _Request(key, items)
        self._queue.put(request)
        try:
            async with self._turn:
                if not request.done:
                    await self._gather()
                    batch = self._queue.take()
                    started = time.monotonic()
                    await self._run(batch)
                    self._last_seconds = time.monotonic() - started
                    # Its batch, and the requests that arrived while it wrote.
                    self._seen.append(len(batch) + len(self._queue))
        except BaseException:
            # Cancelled or interrupted while waiting: nobody writes this request later.
            self._queue.drop(request)
            raise
        if request.error is not None:
            raise request.error

    async def _gather(self) -> None:
        """Under contention, let the callers the last write released queue again."""
        if self._linger <= 0 or max(self._seen, default=0) < 2:
            return
        deadline = time.monotonic() + min(self._linger * self._last_seconds, LINGER_MAX)
        enough = max(self._waited, default=0)
        while time.monotonic() < deadline and not (enough and len(self._queue) >= enough):
            await asleep(0.001)
        self._waited.append(len(self._queue))

    async def _run(self, batch: list[_Request[T]]) -> None:
        admitted: list[_Request[T]] = []
        for request in batch:
            try:
                if self._admit is not None:
                    self._admit(request.key)
                admitted.append(request)
            except Exception as exc:
                request.error = exc
                request.done = True
        try:
            if len(admitted) > 1 and await self._write_all(admitted):
                return
            for request in admitted:  # one by one: each gets its own outcome
                await self._write_one(request)
        except BaseException as exc:
            # Interrupted (a cancellation, a simulated crash): whether the write landed is
            # unknown, so every request still waiting fails and its transaction aborts.
            for request in admitted:
                if not request.done:
                    request.error = exc if isinstance(exc, Exception) else self._interrupted(exc)
                    request.done = True
            raise

    async def _write_all(self, batch: list[_Request[T]]) -> bool:
        """One call for the whole batch; False (nothing marked done) if it failed."""
        try:
            self.calls += 1
            await self._write([item for request in batch for item in request.items])
        except Exception:
            return False
        for request in batch:
            request.done = True
        return True

    async def _write_one(self, request: _Request[T]) -> None:
        try:
            self.calls += 1
            await self._write(list(request.items))
        except Exception as exc:
            request.error = exc
        request.done = True

    def _interrupted(self, exc: BaseException) -> ParticipantError:
        return ParticipantError(
            f"a combined write was interrupted ({type(exc).__name__}) before it returned; "
            "its transactions abort",
            participant=self._name,
        )
