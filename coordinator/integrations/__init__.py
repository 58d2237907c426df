"""Lockstep inside agent frameworks (each one an optional dependency)."""

from __future__ import annotations

from coordinator.errors import UsageError


def check_store(owner: str, store: object, expected: type) -> None:
    """Refuse a memory store of the other kind (sync where async is needed, or the
    reverse), or anything else, before it fails later with an un-awaited coroutine."""
    if not isinstance(store, expected):
        kind = "an asynchronous" if expected.__name__.startswith("Async") else "a synchronous"
        raise UsageError(
            f"{owner} takes {kind} memory store ({expected.__name__}), got {type(store).__name__}"
        )
