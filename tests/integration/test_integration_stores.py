"""Each integration takes the memory store of its own kind, and says so when given the
other: a synchronous one where awaits are needed (or the reverse) would otherwise fail
later, far from the mistake, with a coroutine never awaited. (LangChain's
``LockstepVectorStore`` takes either kind: ``tests/integration/test_langchain.py``.)"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from coordinator import AsyncMemoryStore, MemoryStore, UsageError
from coordinator.integrations.langgraph import (
    AsyncLockstepSaver,
    AsyncLockstepStore,
    LockstepSaver,
    LockstepStore,
)
from coordinator.integrations.mcp import memory_server
from participants.memory import AsyncInMemoryStorage, InMemoryStorage

SYNC = "a synchronous memory store (MemoryStore), got AsyncMemoryStore"
ASYNC = "an asynchronous memory store (AsyncMemoryStore), got MemoryStore"

CASES: dict[str, tuple[Callable[[object], object], str]] = {
    "LockstepSaver": (LockstepSaver, SYNC),  # type: ignore[dict-item]
    "AsyncLockstepSaver": (AsyncLockstepSaver, ASYNC),  # type: ignore[dict-item]
    "LockstepStore": (LockstepStore, SYNC),  # type: ignore[dict-item]
    "AsyncLockstepStore": (AsyncLockstepStore, ASYNC),  # type: ignore[dict-item]
    "memory_server": (memory_server, ASYNC),  # type: ignore[dict-item]
}


@pytest.mark.parametrize("name", CASES)
def test_an_integration_given_the_other_kind_of_store_says_which_it_takes(name: str) -> None:
    make, expected = CASES[name]
    wrong: object = (
        AsyncMemoryStore(AsyncInMemoryStorage("facts"))
        if expected == SYNC
        else MemoryStore(InMemoryStorage("facts"))
    )
    with pytest.raises(UsageError) as refused:
        make(wrong)
    assert str(refused.value) == f"{name} takes {expected}"
