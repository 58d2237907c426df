"""The recovery daemon: periodic recovery passes, one daemon per decision log (a lease).

The lease is an exclusive ``flock`` on a file beside the decision log: a second daemon
for the same log waits (or exits) instead of doubling the work. Safety never depends on
it — recovery is idempotent and may run anywhere at once (G5) — it only keeps one daemon
busy per log. ``SIGTERM``/``SIGINT`` stop the loop after the current pass.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import IO

from coordinator.outcomes import RecoveryReport

logger = logging.getLogger("coordinator.daemon")


@contextlib.contextmanager
def file_lease(path: str | os.PathLike[str]) -> Iterator[bool]:
    """Hold an exclusive lease on ``path`` for the block; yields False if another holds it."""
    handle: IO[str] = open(path, "a")  # noqa: SIM115 - held for the whole block
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        handle.close()  # releases the lock, also when the process dies


def run(
    recover: Callable[[], RecoveryReport],
    *,
    interval: float,
    stop: threading.Event,
    on_pass: Callable[[RecoveryReport | BaseException], None] = lambda _: None,
    max_backoff: float = 60.0,
) -> int:
    """Run recovery passes until ``stop`` is set; returns the number of passes made.

    A failing pass (a store unreachable) backs off exponentially up to ``max_backoff``.
    """
    passes = 0
    delay = interval
    while not stop.is_set():
        try:
            report = recover()
            on_pass(report)
            delay = interval
        except Exception as exc:  # a store or the log is down: report, back off, retry
            logger.warning("recovery pass failed: %s", exc)
            on_pass(exc)
            delay = min(max(delay, interval) * 2, max_backoff)
        passes += 1
        stop.wait(delay)
    return passes


def stop_on_signals(stop: threading.Event) -> None:
    """Set ``stop`` on SIGTERM and SIGINT (a graceful stop after the current pass)."""

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
