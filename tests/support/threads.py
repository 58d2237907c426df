"""Calls a test must see return: run on a thread of their own, and given up on in time."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def within(seconds: float, call: Callable[[], T], waiting: str) -> T:
    """``call()``'s result, or what it raised; the test fails with ``waiting`` if the call
    has not returned after ``seconds`` (its thread, a daemon, is left to it)."""
    returned: list[T] = []
    raised: list[BaseException] = []

    def run() -> None:
        try:
            returned.append(call())
        except BaseException as exc:
            raised.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        pytest.fail(waiting)
    if raised:
        raise raised[0]
    return returned[0]
