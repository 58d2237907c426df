"""Chroma participant: a vector index in a Chroma collection (embedded or server).

Needs the ``chroma`` extra (``chromadb``).
"""

from __future__ import annotations

from coordinator.abc import Embedder
from coordinator.errors import ParticipantError
from participants.chroma._async.index import SYNC_THRESHOLD, AsyncChromaIndex
from participants.chroma._sync.index import ChromaIndex

__all__ = ["SYNC_THRESHOLD", "AsyncChromaIndex", "ChromaIndex", "from_url"]


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
    created here; default 200, Chroma's own is 1,000).
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
        host, port = parts.hostname or "127.0.0.1", parts.port or 8000
        try:
            client = chromadb.HttpClient(host=host, port=port, ssl=scheme == "chroma+https")
        except Exception as exc:  # the client checks the server at once (a ValueError)
            raise ParticipantError(
                f"cannot reach the Chroma server at {host}:{port}: {exc}", participant=name
            ) from exc
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
