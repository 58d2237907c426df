"""Chroma's engine inside this process, and its failures.

An embedded client (``PersistentClient``, ``EphemeralClient``) runs Chroma's engine in the
process, and every client of one path shares it. When that engine fails to write its own
files (a full disk, an I/O error), chromadb 1.5 leaves its log half applied, and a later
write may never return: it waits holding the interpreter, so no timeout, no other thread
and no Ctrl-C can end it (probes on a full filesystem: after the space came back, the next
commit's ``update`` hung in three runs of three, a plain ``upsert`` or ``update`` in some
runs). A process that opens the collection afresh reads it whole.

So the first such failure is remembered for the engine, and every index on it refuses
every later call in this process with an error saying so; the store, opened again in a
new process once the cause is fixed, recovers what was in flight. A server's clients are
not concerned: the engine runs in the server's process.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from coordinator.errors import ParticipantError

logger = logging.getLogger("participants.chroma")

_EMBEDDED = "chromadb.api.rust.RustBindingsAPI"

#: The first failure of each embedded engine that failed in this process.
_FAILED: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def engine_of(client: Any) -> Any | None:
    """The embedded engine ``client`` runs on (one per path in a process), or ``None`` for
    a server's client."""
    try:
        embedded = client.get_settings().chroma_api_impl == _EMBEDDED
    except Exception:  # an async client, or another implementation of the API
        return None
    return getattr(client, "_system", client) if embedded else None


def check(engine: Any | None, participant: str) -> None:
    """:raises ParticipantError: ``engine`` failed earlier in this process."""
    failure = None if engine is None else _FAILED.get(engine)
    if failure is not None:
        raise ParticipantError(
            f"Chroma's engine in this process failed earlier ({failure}); after such a "
            "failure chromadb may hang the process on a later write, so this index "
            "refuses every call here. Fix the cause (a full disk, say), then open the "
            "store in a new process: recovery there finishes or undoes what was in flight",
            participant=participant,
        )


def note(engine: Any | None, exc: BaseException, participant: str) -> None:
    """Remember ``exc`` if it is a failure of the embedded ``engine`` itself."""
    from chromadb.errors import InternalError

    if engine is None or not isinstance(exc, InternalError) or engine in _FAILED:
        return
    _FAILED[engine] = str(exc)
    logger.error(
        "Chroma's engine in this process failed (%s); %s refuses every call until the "
        "store is opened in a new process",
        exc,
        participant,
    )
