"""Qdrant participant: a vector index in a Qdrant collection (server, local mode, memory).

Needs the ``qdrant`` extra (``qdrant-client``).
"""

from __future__ import annotations

from coordinator.abc import Embedder
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
    ``metadata_fields`` (comma-separated), ``types`` (comma-separated target types).
    """
    from urllib.parse import parse_qs, urlsplit

    from qdrant_client import AsyncQdrantClient, QdrantClient

    from coordinator.plugins import path_of, scheme_of

    params = {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
    scheme = scheme_of(url)
    base = url.split("?", 1)[0]
    kwargs: dict[str, str] = {}
    if scheme == "qdrant+local":
        kwargs["path"] = path_of(base)
    elif scheme in ("qdrant+http", "qdrant+https"):
        kwargs["url"] = base.replace("qdrant+", "", 1)
    else:
        kwargs["location"] = ":memory:"
    fields = [f for f in params.get("metadata_fields", "").split(",") if f]
    types = [t for t in params.get("types", "").split(",") if t] or None
    collection = params.get("collection", "memories")
    client = AsyncQdrantClient(**kwargs) if asynchronous else QdrantClient(**kwargs)  # type: ignore[arg-type]
    cls = AsyncQdrantIndex if asynchronous else QdrantIndex
    return cls(
        client,  # type: ignore[arg-type]
        collection,
        params.get("text_field"),
        fields,
        embedder=embedder,
        target_types=types,
        name=name,
        owns_client=True,
    )
