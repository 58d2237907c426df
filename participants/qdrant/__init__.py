"""Qdrant participant: a vector index in a Qdrant collection (server, local mode, memory,
or Qdrant Edge: Qdrant's engine inside the process).

Needs the ``qdrant`` extra (``qdrant-client``); Qdrant Edge the ``qdrant-edge`` extra
(``qdrant-edge-py``, too).
"""

from __future__ import annotations

import atexit
import os
import weakref
from typing import Any

from coordinator.abc import Embedder
from coordinator.errors import ConfigurationError, ParticipantError
from participants.qdrant._async.index import AsyncQdrantIndex
from participants.qdrant._sync.index import QdrantIndex

__all__ = ["AsyncQdrantIndex", "QdrantIndex", "from_url"]


def from_url(
    url: str,
    *,
    name: str | None = None,
    asynchronous: bool = False,
    embedder: Embedder | None = None,
) -> QdrantIndex | AsyncQdrantIndex:
    """``qdrant+local:///dir?collection=memories`` (local mode), ``qdrant+http://host:6333``,
    ``qdrant+edge:///dir?collection=memories`` (Qdrant Edge).

    Query parameters: ``collection`` (default ``memories``), ``text_field``,
    ``metadata_fields`` (comma-separated), ``types`` (comma-separated target types),
    ``embedder`` (a spec such as ``hashing:32``, when no ``embedder`` object is passed);
    for Qdrant Edge, ``durable=0`` leaves its write-ahead log unsynced (a killed process
    loses nothing, a power cut may lose the last writes).
    """
    from participants._vectors import url_options

    options = url_options(url, embedder)
    cls = AsyncQdrantIndex if asynchronous else QdrantIndex
    return cls(
        _client(url, asynchronous, name),
        options.collection,
        options.text_field,
        options.metadata_fields,
        embedder=options.embedder,
        target_types=options.target_types,
        name=name,
        owns_client=True,
    )


def _client(url: str, asynchronous: bool, name: str | None) -> Any:
    """The client the URL names: a Qdrant client, or a Qdrant Edge one."""
    from qdrant_client import AsyncQdrantClient, QdrantClient

    from coordinator.plugins import path_of, query_flag, scheme_of

    scheme = scheme_of(url)
    base = url.split("?", 1)[0]
    if scheme == "qdrant+edge":
        try:
            from participants.qdrant._edge import AsyncEdgeClient, EdgeClient
        except ImportError as exc:
            raise ConfigurationError(
                f"{scheme}:// needs qdrant-edge-py: pip install 'lockstep[qdrant-edge]'",
                participant=name,
            ) from exc
        edge = AsyncEdgeClient if asynchronous else EdgeClient
        return edge(path_of(base), durable=query_flag(url, "durable"))
    kwargs: dict[str, str] = {}
    if scheme == "qdrant+local":
        kwargs["path"] = path_of(base)
    elif scheme in ("qdrant+http", "qdrant+https"):
        kwargs["url"] = base.replace("qdrant+", "", 1)
    else:
        kwargs["location"] = ":memory:"
    try:
        client = AsyncQdrantClient(**kwargs) if asynchronous else QdrantClient(**kwargs)  # type: ignore[arg-type]
    except RuntimeError as exc:
        if "already accessed" not in str(exc):
            raise
        # Local mode locks its directory to one client: say which and what to do.
        raise ParticipantError(
            f"the Qdrant local-mode directory {kwargs['path']} is open in another client "
            "(another process, or another store in this one); local mode serves one at a "
            "time: close that one first, or keep the vectors in a Qdrant server "
            "(qdrant+http://) for several processes",
            participant=name,
        ) from exc
    except Exception as exc:
        if "path" not in kwargs:
            raise
        # Local mode reads every point of the directory as it opens: a damaged file
        # (a disk error, a copy cut short) stops it there, with SQLite's or pickle's words.
        raise ParticipantError(
            f"the Qdrant local-mode directory {kwargs['path']} cannot be read "
            f"({type(exc).__name__}: {exc}). An index holds nothing the storage does not: "
            "move the directory aside, open the store again, and rebuild the index from "
            "the facts with repair() (lockstep verify --repair)",
            participant=name,
        ) from exc
    if "path" in kwargs and isinstance(client, QdrantClient):
        _OPEN_AT_EXIT[client] = os.getpid()
    return client


# A local-mode QdrantClient still open when the interpreter shuts down (a store kept in a
# reference cycle, or by a saved exception) is closed by its ``__del__`` after imports are
# gone, and its close imports the module that unlocks the directory: Python prints an
# ImportError traceback as the program exits (qdrant-client issue 1079). Those this module
# made are closed at exit instead, while imports still work; closing twice is harmless.
# Only in the process that made them: a forked child closing one would unlock the
# directory its parent holds. (The async client has no ``__del__``.)
_OPEN_AT_EXIT: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


@atexit.register
def _close_local_clients() -> None:
    for client, pid in list(_OPEN_AT_EXIT.items()):
        if pid == os.getpid():
            client.close()
