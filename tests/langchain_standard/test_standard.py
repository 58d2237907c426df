"""LangChain's standard vector-store tests (``langchain-tests``) on ``LockstepVectorStore``,
over a ``MemoryStore`` (the sync methods, and the async ones LangChain runs in a worker
thread) and over an ``AsyncMemoryStore`` (the async methods, which await it). SQLite facts
and Qdrant local-mode vectors, each test on fresh files. ``tests/integration/
test_langchain.py`` restates what these check on the server combinations too."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests.vectorstores import VectorStoreIntegrationTests
from qdrant_client import AsyncQdrantClient, QdrantClient

from coordinator import AsyncMemoryStore, MemoryStore
from coordinator.integrations.langchain import LangChainEmbedder, LockstepVectorStore
from participants.qdrant import AsyncQdrantIndex, QdrantIndex
from participants.sqlite import AsyncSQLiteStorage, SQLiteStorage

# The model the standard tests embed with (their get_embeddings(): six dimensions).
EMBEDDER = LangChainEmbedder(
    VectorStoreIntegrationTests.get_embeddings(), 6, name="deterministic-fake-6"
)


class TestOnAMemoryStore(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, tmp_path: Path) -> Iterator[VectorStore]:  # type: ignore[override]
        client = QdrantClient(path=str(tmp_path / "vectors"))
        index = QdrantIndex(client, "docs", embedder=EMBEDDER, owns_client=True)
        with MemoryStore(SQLiteStorage(tmp_path / "facts.db"), [index]) as mem:
            yield LockstepVectorStore(mem)
            assert mem.verify().clean


class TestOnAnAsyncMemoryStore(VectorStoreIntegrationTests):
    @property
    def has_sync(self) -> bool:
        return False  # its sync methods wait for the loop: not from the loop's own thread

    @pytest.fixture
    async def vectorstore(self, tmp_path: Path) -> AsyncIterator[VectorStore]:  # type: ignore[override]
        client = AsyncQdrantClient(path=str(tmp_path / "vectors"))
        index = AsyncQdrantIndex(client, "docs", embedder=EMBEDDER, owns_client=True)
        async with AsyncMemoryStore(AsyncSQLiteStorage(tmp_path / "facts.db"), [index]) as mem:
            yield LockstepVectorStore(mem)
            assert (await mem.verify()).clean
