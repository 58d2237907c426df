"""Chroma participant: a vector index in a Chroma collection (embedded or server).

Needs the ``chroma`` extra (``chromadb``).
"""

from __future__ import annotations

import logging
from typing import Any

from coordinator.abc import Embedder
from coordinator.errors import ParticipantError
from participants.chroma._async.index import SYNC_THRESHOLD, AsyncChromaIndex
from participants.chroma._sync.index import ChromaIndex

__all__ = ["SYNC_THRESHOLD", "AsyncChromaIndex", "ChromaIndex", "from_url", "http_client"]

#: Seconds a request to a Chroma server made by :func:`http_client` waits for an answer.
ANSWER_TIMEOUT = 30.0


def http_client(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    ssl: bool = False,
    answer_timeout: float = ANSWER_TIMEOUT,
    name: str | None = None,
) -> Any:
    """A ``chromadb.HttpClient`` that gives up on a request after ``answer_timeout``
    seconds without an answer (``httpx.TimeoutException``, a ``ParticipantError`` from
    the index), where chromadb's own waits for ever on a server that stopped answering:
    a search, or an open, would hang the caller for good.

    The bound is this client's: another ``chromadb.HttpClient`` of the same server has
    its own session, unbounded. ``chroma+http://`` URLs make their clients here.

    :raises ParticipantError: the server does not answer its heartbeat in time.
    """
    import httpx

    scheme = "https" if ssl else "http"
    try:  # chromadb's client asks the server at once, with no timeout: ask first
        httpx.get(
            f"{scheme}://{host}:{port}/api/v2/heartbeat", timeout=answer_timeout
        ).raise_for_status()
    except httpx.HTTPError as exc:
        raise ParticipantError(
            f"cannot reach the Chroma server at {host}:{port}: {exc!r}", participant=name
        ) from exc
    import chromadb

    try:
        client = chromadb.HttpClient(host=host, port=port, ssl=ssl)
    except Exception as exc:  # the client checks the server at once (a ValueError)
        raise ParticipantError(
            f"cannot reach the Chroma server at {host}:{port}: {exc}", participant=name
        ) from exc
    # chromadb makes its httpx session with ``timeout=None`` and offers no setting.
    session = getattr(getattr(client, "_server", None), "_session", None)
    if isinstance(session, httpx.Client):
        session.timeout = httpx.Timeout(answer_timeout)
    else:
        logging.getLogger("participants.chroma").warning(
            "this chromadb (%s) keeps its HTTP session elsewhere: requests to %s:%s are "
            "not bounded, and wait for ever on a server that stops answering",
            chromadb.__version__,
            host,
            port,
        )
    return client


def from_url(
    url: str,
    *,
    name: str | None = None,
    asynchronous: bool = False,
    embedder: Embedder | None = None,
) -> ChromaIndex | AsyncChromaIndex:
    """``chroma+local:///dir?collection=memories`` (embedded), ``chroma+http://host:8000``.

    Query parameters: ``collection`` (default ``memories``), ``text_field``,
    ``metadata_fields`` (comma-separated), ``types`` (comma-separated target types),
    ``embedder`` (a spec such as ``hashing:32``, when no ``embedder`` object is passed),
    ``combine_writes`` (``0`` stages every transaction's points in its own upsert),
    ``sync_threshold`` (records between two persists of the HNSW index of a collection
    created here; default 200, Chroma's own is 1,000), ``answer_timeout`` (seconds a
    request to a server waits for its answer; default 30, see :func:`http_client`).
    """
    import os
    from urllib.parse import urlsplit

    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    import chromadb

    from coordinator.plugins import path_of, scheme_of
    from participants._vectors import url_options

    options = url_options(url, embedder)
    scheme = scheme_of(url)
    base = url.split("?", 1)[0]
    if scheme == "chroma+local":
        # Absolute: Chroma keeps one client per path string in a process, so a relative
        # path opened again from another working directory would get the first
        # directory's client, and write there.
        client = chromadb.PersistentClient(path=os.path.abspath(path_of(base)))
    elif scheme in ("chroma+http", "chroma+https"):
        parts = urlsplit(base)
        client = http_client(
            parts.hostname or "127.0.0.1",
            parts.port or 8000,
            ssl=scheme == "chroma+https",
            answer_timeout=options.answer_timeout or ANSWER_TIMEOUT,
            name=name,
        )
    else:
        client = chromadb.EphemeralClient()
    cls = AsyncChromaIndex if asynchronous else ChromaIndex
    return cls(
        client,
        options.collection,
        options.text_field,
        options.metadata_fields,
        embedder=options.embedder,
        target_types=options.target_types,
        name=name,
        combine_writes=options.combine_writes,
        sync_threshold=SYNC_THRESHOLD if options.sync_threshold is None else options.sync_threshold,
    )
