"""The recovery daemon: periodic recovery passes, one daemon per decision log (a lease).

The lease keeps one daemon busy per log: an exclusive ``flock`` on a file beside a SQLite
log (:func:`file_lease`), a Postgres advisory lock for a log shared by several hosts
(``PostgresDecisionLog.lease``). A second daemon exits instead of doubling the work; a
daemon that loses its lease (its Postgres connection dropped) stands by, checking before
every pass, until it holds it again. Safety never depends on the lease — recovery is
idempotent and may run anywhere at once (G5). ``SIGTERM``/``SIGINT`` stop the loop after
the current pass. Every pass is counted (``lockstep.daemon.passes``, by result) and traced
(the ``lockstep.recover`` span).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import IO, Protocol

from coordinator import telemetry
from coordinator.outcomes import RecoveryReport

logger = logging.getLogger("coordinator.daemon")


class Lease(Protocol):
    """What the daemon holds while it works: ``held`` at the start, ``check`` before
    every pass (re-acquiring a lease that was lost, when no one else took it)."""

    held: bool

    def check(self) -> bool: ...


class _FileLease:
    def __init__(self, held: bool) -> None:
        self.held = held

    def check(self) -> bool:
        return self.held  # a flock lasts as long as the open file: it cannot be lost


@contextlib.contextmanager
def file_lease(path: str | os.PathLike[str]) -> Iterator[Lease]:
    """Hold an exclusive lease on ``path`` for the block (``.held`` False: another has it)."""
    handle: IO[str] = open(path, "a")  # noqa: SIM115 - held for the whole block
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield _FileLease(False)
            return
        yield _FileLease(True)
    finally:
        handle.close()  # releases the lock, also when the process dies


def run(
    recover: Callable[[], RecoveryReport],
    *,
    interval: float,
    stop: threading.Event,
    on_pass: Callable[[RecoveryReport | BaseException], None] = lambda _: None,
    max_backoff: float = 60.0,
    lease: Lease | None = None,
) -> int:
    """Run recovery passes until ``stop`` is set; returns the number of passes made.

    A failing pass (a store unreachable) backs off exponentially up to ``max_backoff``.
    With a ``lease``, a pass runs only while the lease is held.
    """
    passes = 0
    delay = interval
    while not stop.is_set():
        if lease is not None and not lease.check():
            logger.warning("recovery lease not held; standing by")
            telemetry.count_daemon_pass("standby")
            stop.wait(interval)
            continue
        try:
            report = recover()
            on_pass(report)
            telemetry.count_daemon_pass("clean" if report.clean else "unresolved")
            delay = interval
        except Exception as exc:  # a store or the log is down: report, back off, retry
            logger.warning("recovery pass failed: %s", exc)
            on_pass(exc)
            telemetry.count_daemon_pass("failed")
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
