"""Stores over the session's private servers, for tests that run on several combinations."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import chromadb
import pytest

from chaos.servers import ChromaServer, PostgresServer, RedisServer
from coordinator import MemoryStore
from coordinator.abc import Embedder
from participants.chroma import ChromaIndex
from participants.postgres import PostgresStorage
from participants.redis import RedisStorage


def postgres_redis_chroma(
    request: pytest.FixtureRequest, embedder: Embedder, metadata_fields: Sequence[str] = ()
) -> MemoryStore:
    """A fresh Postgres database as the storage, a Redis mirror under a fresh prefix and a
    fresh collection on the Chroma server (the session's private servers)."""
    postgres: PostgresServer = request.getfixturevalue("postgres_server")
    redis_server: RedisServer = request.getfixturevalue("redis_server")
    chroma: ChromaServer = request.getfixturevalue("chroma_server")
    tag = uuid.uuid4().hex[:12]
    client = chromadb.HttpClient(host="127.0.0.1", port=chroma.port)
    return MemoryStore(
        PostgresStorage(postgres.create_database(f"t_{tag}")),
        [ChromaIndex(client, f"c{tag}", "content", metadata_fields, embedder=embedder)],
        mirrors=[RedisStorage(redis_server.url, name="copy", prefix=f"m{tag}:")],
    )
