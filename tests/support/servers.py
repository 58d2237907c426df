"""Stores over the session's private servers, for tests that run on several combinations."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import chromadb
import pytest

from chaos.servers import ChromaServer, PostgresServer, RedisServer
from coordinator import AsyncMemoryStore, MemoryStore
from coordinator.abc import Embedder
from participants.chroma import AsyncChromaIndex, ChromaIndex
from participants.postgres import AsyncPostgresStorage, PostgresStorage
from participants.redis import AsyncRedisStorage, RedisStorage


def _fresh_places(request: pytest.FixtureRequest) -> tuple[str, str, str, Any, str]:
    """On the session's private servers: a fresh Postgres database (its conninfo), the
    Redis URL and a fresh key prefix, a Chroma client and a fresh collection name."""
    postgres: PostgresServer = request.getfixturevalue("postgres_server")
    redis_server: RedisServer = request.getfixturevalue("redis_server")
    chroma: ChromaServer = request.getfixturevalue("chroma_server")
    tag = uuid.uuid4().hex[:12]
    client = chromadb.HttpClient(host="127.0.0.1", port=chroma.port)
    return postgres.create_database(f"t_{tag}"), redis_server.url, f"m{tag}:", client, f"c{tag}"


def postgres_redis_chroma(
    request: pytest.FixtureRequest, embedder: Embedder, metadata_fields: Sequence[str] = ()
) -> MemoryStore:
    """A fresh Postgres database as the storage, a Redis mirror under a fresh prefix and a
    fresh collection on the Chroma server (the session's private servers)."""
    database, redis_url, prefix, client, collection = _fresh_places(request)
    return MemoryStore(
        PostgresStorage(database),
        [ChromaIndex(client, collection, "content", metadata_fields, embedder=embedder)],
        mirrors=[RedisStorage(redis_url, name="copy", prefix=prefix)],
    )


def async_postgres_redis_chroma(
    request: pytest.FixtureRequest, embedder: Embedder
) -> AsyncMemoryStore:
    """:func:`postgres_redis_chroma` as an ``AsyncMemoryStore``."""
    database, redis_url, prefix, client, collection = _fresh_places(request)
    return AsyncMemoryStore(
        AsyncPostgresStorage(database),
        [AsyncChromaIndex(client, collection, "content", embedder=embedder)],
        mirrors=[AsyncRedisStorage(redis_url, name="copy", prefix=prefix)],
    )


#: The combinations :func:`async_memory_store` makes (a fixture's ``params``).
ASYNC_COMBOS = ["embedded", "postgres + redis + chroma server"]


async def async_memory_store(
    request: pytest.FixtureRequest, directory: Path, embedder: Embedder
) -> AsyncIterator[AsyncMemoryStore]:
    """The body of a fixture parametrized by :data:`ASYNC_COMBOS`: the embedded default in
    ``directory`` or :func:`async_postgres_redis_chroma`; after the test, every store agrees
    with the storage, then the store is closed."""
    if request.param == "embedded":
        store = await AsyncMemoryStore.open(directory / "memory", embedder=embedder)
    else:
        store = async_postgres_redis_chroma(request, embedder)
    yield store
    assert (await store.verify()).clean  # storage, mirror and index agree after every test
    await store.close()
