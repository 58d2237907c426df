"""The runs in progress of one coordinator, for its ``close()`` (shared by the async
coordinator and its generated sync twin, which count by task and by thread)."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Iterator

from coordinator.errors import UsageError


class Runs:
    """A coordinator's runs in progress (commits, recovery passes, deferred batches,
    memory-API transactions from their first read), counted by the thread or task
    running each (``runner()`` names it), so that ``close()`` lets the others' end
    before it closes anything, and refuses new ones. A run nested in one of the
    runner's own (a transaction's commit, a commit's deferred batch) is not new."""

    def __init__(self, runner: Callable[[], int]) -> None:
        self._runner = runner
        self._lock = threading.Lock()
        self._by_runner: Counter[int] = Counter()
        self._closing = False

    @contextlib.contextmanager
    def one(self) -> Iterator[None]:
        """One run, for its duration.

        :raises UsageError: the coordinator is closing or closed.
        """
        me = self._runner()
        with self._lock:
            if self._closing and not self._by_runner[me]:
                raise UsageError("this coordinator is closed; open the stores again to use them")
            self._by_runner[me] += 1
        try:
            yield
        finally:
            with self._lock:
                self._by_runner[me] -= 1
                if not self._by_runner[me]:
                    del self._by_runner[me]  # task ids are not reused: keep none of them

    def close(self) -> None:
        with self._lock:
            self._closing = True

    def others(self) -> int:
        """Runs in progress in other threads or tasks than the caller's."""
        me = self._runner()
        with self._lock:
            return sum(count for runner, count in self._by_runner.items() if runner != me)
