"""Qdrant participant: a vector index in a Qdrant collection (server, local mode, memory).

Needs the ``qdrant`` extra (``qdrant-client``).
"""

from __future__ import annotations

from coordinator.abc import Embedder
from coordinator.errors import ParticipantError
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
    """``qdrant+local:///dir?collection=memories`` (local mode), ``qdrant+http://host:6333``.

    Query parameters: ``collection`` (default ``memories``), ``text_field``,
    ``metadata_fields`` (comma-separated), ``types`` (comma-separated target types),
    ``embedder`` (a spec such as ``hashing:32``, when no ``embedder`` object is passed).
    """
    from qdrant_client import AsyncQdrantClient, QdrantClient

    from coordinator.plugins import path_of, scheme_of
    from participants._vectors import url_options

    options = url_options(url, embedder)
    scheme = scheme_of(url)
    base = url.split("?", 1)[0]
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
    cls = AsyncQdrantIndex if asynchronous else QdrantIndex
    return cls(
        client,  # type: ignore[arg-type]
        options.collection,
        options.text_field,
        options.metadata_fields,
        embedder=options.embedder,
        target_types=options.target_types,
        name=name,
        owns_client=True,
    )
