"""Paired primitives for the async source and its generated sync twin.

``_async`` modules call the ``a``-prefixed helpers; ``tools/gen_sync.py`` rewrites the
names to the plain ones when it generates ``_sync``. No other module imports anyio. Each
pair has the same semantics:

* ``agather``/``gather`` run calls (concurrently, or one after the other), give every call
  its own timeout, and return each call's result or the ``Exception`` it raised
  (``TimeoutError`` on timeout). The sync twin bounds a call by running it on a worker
  thread; with ``inline`` (calls to participants inside this process, whose call a
  timeout would only abandon, still working beside the next) its sequential form (one
  call, or ``concurrent=False``) runs them on the caller's thread, without the timeout,
  sparing a thread handoff (which made a commit on SQLite + Qdrant local 23-36% slower). A
  ``BaseException`` that is not an ``Exception`` (a simulated crash, a cancellation)
  propagates.
* ``ablocking``/``blocking`` run a blocking call (off the event loop for async callers).
* ``asleep``/``sleep`` pause.
* ``acurrent_runner``/``current_runner``: the task or thread running the caller.
* ``adeadline``/``deadline``: a block bounded in time that waits on a socket: the async
  source cancels the block; the sync twin shuts the socket down, which ends the wait
  with the client's own connection error. ``expired`` tells the two failures apart.
* ``ashielded``/``shielded``: a block that a cancellation does not interrupt (cleanup that
  must finish, such as handing a connection back); nothing in the sync twin.
* ``ainterrupts_held``/``interrupts_held``: a block that a Ctrl-C does not cut in two (one
  run of the protocol); nothing in the async source.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import itertools
import os
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, ParamSpec, TypeVar

import anyio
import anyio.to_thread

from coordinator._core.effects import Effect, Reply

T = TypeVar("T")
P = ParamSpec("P")

AsyncEffectRunner = Callable[[Effect], Awaitable[Reply]]
EffectRunner = Callable[[Effect], Reply]
AsyncItemsWriter = Callable[[list[T]], Awaitable[None]]
ItemsWriter = Callable[[list[T]], None]

Lock = threading.Lock
ALock = anyio.Lock

# Which face a module is: the async source says ASYNC_API, the generated twin SYNC_API.
ASYNC_API: Final = True
SYNC_API: Final = False

# Sync fan-out runs on worker threads. A call abandoned at its timeout keeps its thread
# until it returns, so the pool is generous and shared.
_POOL = ThreadPoolExecutor(max_workers=64, thread_name_prefix="lockstep")


async def agather(
    calls: Sequence[Callable[[], Awaitable[T]]],
    *,
    timeout: float | None = None,  # noqa: ASYNC109 - per call, via fail_after
    concurrent: bool = True,
    inline: bool = False,  # the sync twin's; awaiting a call here needs no thread of its own
) -> list[T | Exception]:
    results: list[T | Exception] = [TimeoutError("not run")] * len(calls)

    async def run(i: int) -> None:
        try:
            if timeout is None:
                results[i] = await calls[i]()
            else:
                with anyio.fail_after(timeout):
                    results[i] = await calls[i]()
        except Exception as exc:
            results[i] = exc

    if not concurrent or len(calls) == 1:
        for i in range(len(calls)):
            await run(i)
        return results
    try:
        async with anyio.create_task_group() as tg:
            for i in range(len(calls)):
                tg.start_soon(run, i)
    except BaseExceptionGroup as group:
        # Only non-Exception errors (crashes, cancellation) escape run(); surface the
        # first one as itself so callers see what they would see without a task group.
        raise _first_leaf(group) from None
    return results


def gather(
    calls: Sequence[Callable[[], T]],
    *,
    timeout: float | None = None,
    concurrent: bool = True,
    inline: bool = False,
) -> list[T | Exception]:
    if concurrent and len(calls) > 1:
        return _on_workers(calls, timeout)
    if timeout is not None and not inline:
        return [result for call in calls for result in _on_workers([call], timeout)]
    results: list[T | Exception] = []
    for call in calls:
        try:
            results.append(call())
        except Exception as exc:
            results.append(exc)
    return results


def _on_workers(calls: Sequence[Callable[[], T]], timeout: float | None) -> list[T | Exception]:
    """``calls`` at once on worker threads, each given up on at ``timeout``."""
    results: list[T | Exception] = []
    # Copy the context so spans opened in a call nest under the caller's span.
    futures = [_POOL.submit(contextvars.copy_context().run, call) for call in calls]
    deadline = None if timeout is None else time.monotonic() + timeout
    for future in futures:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            results.append(future.result(timeout=remaining))
        except TimeoutError:  # concurrent.futures.TimeoutError is this builtin since 3.11
            results.append(TimeoutError(f"call did not finish within {timeout} s"))
        except Exception as exc:
            results.append(exc)
    return results


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_leaf(exc)
        if not isinstance(exc, anyio.get_cancelled_exc_class()):
            return exc
    return group.exceptions[0]


async def ablocking(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    # On timeout the caller moves on and the thread finishes on its own, as in the sync
    # twin; participants fence a prepare that lands after its abort.
    return await anyio.to_thread.run_sync(
        functools.partial(fn, *args, **kwargs), abandon_on_cancel=True
    )


def blocking(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    return fn(*args, **kwargs)


async def aresolve(value: Any) -> Any:
    """``value``, awaited first if it is awaitable (an async client passed un-awaited)."""
    return await value if inspect.isawaitable(value) else value


def resolve(value: Any) -> Any:
    return value


def ashielded() -> anyio.CancelScope:
    return anyio.CancelScope(shield=True)


def shielded() -> contextlib.nullcontext[None]:
    return contextlib.nullcontext()


def ainterrupts_held() -> contextlib.nullcontext[None]:
    return contextlib.nullcontext()


class interrupts_held:
    """Hold a Ctrl-C (SIGINT) that arrives during the block until the block ends, then
    deliver it as the handler in place would have (``KeyboardInterrupt`` by default); a
    second Ctrl-C is delivered at once.

    Python raises ``KeyboardInterrupt`` between any two bytecodes of the main thread, so
    without this a participant could be cut in the middle of its own bookkeeping (Qdrant's
    local mode left its arrays out of step with its ids, and every later write of the
    process failed). Held, it lands where the protocol expects anything to. Only on the
    main thread, where Python runs signal handlers, and only over a handler set from
    Python; elsewhere nothing changes. A class, not a generator: it costs two
    ``sigaction`` calls a use.
    """

    __slots__ = ("_pending", "_previous")

    def __enter__(self) -> None:
        self._previous: Any = None
        self._pending = False
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGINT)
        if previous is None:
            return
        self._previous = previous
        signal.signal(signal.SIGINT, self._hold)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        previous = self._previous
        if previous is None:
            return
        self._previous = None
        signal.signal(signal.SIGINT, previous)
        if self._pending:
            _deliver(previous, signal.SIGINT, None)

    def _hold(self, signum: int, frame: Any) -> None:
        if self._pending and self._previous is not None:  # pressed again: no more waiting
            previous, self._previous = self._previous, None
            signal.signal(signal.SIGINT, previous)
            _deliver(previous, signum, frame)
        self._pending = True


def _deliver(handler: Any, signum: int, frame: Any) -> None:
    """What ``handler`` does with ``signum``: calls it, or the default action."""
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        signal.signal(signal.SIGINT, handler)
        signal.raise_signal(signum)


def acurrent_runner() -> int:
    """Who is running this code: the current task (its id)."""
    return anyio.get_current_task().id


def current_runner() -> int:
    """Who is running this code: the current thread (its ident)."""
    return threading.get_ident()


class Deadline:
    """What :func:`adeadline`/:func:`deadline` yield: ``expired`` once the time ran out.

    In the sync twin it also severs the socket ``sock``, unless the block has ended: the
    watchdog may run :meth:`sever` just as the block ends, and by then the connection may
    be another caller's (back in its pool), or the descriptor another file's.
    """

    def __init__(self, sock: int = -1) -> None:
        self.expired = False
        self._sock = sock
        self._lock = threading.Lock()
        self._over = False

    def sever(self) -> None:
        """Shut the socket down, so that a call waiting on it returns with its
        connection error; nothing once the block has ended."""
        with self._lock:
            if self._over:
                return
            self.expired = True
            # A duplicate of the descriptor: shutting it down ends the connection for
            # both, and closing it leaves the client's own descriptor to the client.
            with contextlib.suppress(OSError), socket.socket(fileno=os.dup(self._sock)) as dup:
                dup.shutdown(socket.SHUT_RDWR)

    def end(self) -> None:
        with self._lock:
            self._over = True


@contextlib.contextmanager
def adeadline(seconds: float, sock: int) -> Iterator[Deadline]:
    """The block, cancelled after ``seconds`` (raising ``TimeoutError``); ``sock`` is the
    sync twin's."""
    bound = Deadline()
    with anyio.fail_after(seconds) as scope:
        try:
            yield bound
        finally:
            bound.expired = scope.cancel_called


@contextlib.contextmanager
def deadline(seconds: float, sock: int) -> Iterator[Deadline]:
    """The block, its socket ``sock`` shut down after ``seconds`` (up to a quarter of a
    second late): a call waiting on it returns with its connection error (a thread
    waiting in C cannot be interrupted, and a server that stopped answering never ends
    the wait)."""
    bound = Deadline(sock)
    key = _WATCHDOG.add(seconds, bound.sever)
    try:
        yield bound
    finally:
        bound.end()
        _WATCHDOG.cancel(key)


class _Watchdog:
    """Runs the actions of sync deadlines that expire, from one daemon thread that looks
    every ``TICK`` seconds: a deadline costs a dict entry, not a timer thread (a
    ``threading.Timer`` a commit cost 0.2 ms)."""

    TICK = 0.25

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._due: dict[int, tuple[float, Callable[[], None]]] = {}
        self._keys = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, seconds: float, action: Callable[[], None]) -> int:
        key = next(self._keys)
        with self._lock:
            self._due[key] = (time.monotonic() + seconds, action)
            if self._thread is None or not self._thread.is_alive():  # or forked since
                self._thread = threading.Thread(
                    target=self._watch, name="lockstep-deadlines", daemon=True
                )
                self._thread.start()
        return key

    def cancel(self, key: int) -> None:
        with self._lock:
            self._due.pop(key, None)

    def _watch(self) -> None:
        while True:
            time.sleep(self.TICK)
            now = time.monotonic()
            with self._lock:
                expired = [key for key, (when, _) in self._due.items() if when <= now]
                actions = [self._due.pop(key)[1] for key in expired]
            for action in actions:
                action()


_WATCHDOG = _Watchdog()


async def asleep(seconds: float) -> None:
    await anyio.sleep(seconds)


def sleep(seconds: float) -> None:
    time.sleep(seconds)
