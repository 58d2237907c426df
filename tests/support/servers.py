"""Stores over the session's private servers, for tests that run on several combinations."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import chromadb
import pytest

from chaos.servers import ChromaServer, PostgresServer, RedisServer
from coordinator import AsyncMemoryStore, MemoryStore
from coordinator.abc import Embedder
from participants.chroma import AsyncChromaIndex, ChromaIndex
from participants.postgres import AsyncPostgresStorage, PostgresStorage
from participants.redis import AsyncRedisStorage, RedisStorage


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


def async_postgres_redis_chroma(
    request: pytest.FixtureRequest, embedder: Embedder
) -> AsyncMemoryStore:
    """:func:`postgres_redis_chroma` as an ``AsyncMemoryStore``."""
    postgres: PostgresServer = request.getfixturevalue("postgres_server")
    redis_server: RedisServer = request.getfixturevalue("redis_server")
    chroma: ChromaServer = request.getfixturevalue("chroma_server")
    tag = uuid.uuid4().hex[:12]
    client = chromadb.HttpClient(host="127.0.0.1", port=chroma.port)
    return AsyncMemoryStore(
        AsyncPostgresStorage(postgres.create_database(f"t_{tag}")),
        [AsyncChromaIndex(client, f"c{tag}", "content", embedder=embedder)],
        mirrors=[AsyncRedisStorage(redis_server.url, name="copy", prefix=f"m{tag}:")],
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
