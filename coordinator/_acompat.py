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
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
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


async def asleep(seconds: float) -> None:
    await anyio.sleep(seconds)


def sleep(seconds: float) -> None:
    time.sleep(seconds)
