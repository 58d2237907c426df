"""LangChain's ``VectorStore`` on a memory store, on real stores.

The behaviours LangChain's standard vector-store tests check (``langchain-tests``, which
run on the embedded stores in ``tests/langchain_standard``, in an environment of their own:
that package's pytest plugins do not run beside this suite's), restated here on the server
combinations too; then what Lockstep adds: a batch lands whole or not at all, in the
storage, the mirror and the index alike, on a ``MemoryStore`` and an ``AsyncMemoryStore``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from qdrant_client import QdrantClient

from coordinator import AsyncMemoryStore, Fact, MemoryStore, UsageError
from coordinator.integrations.langchain import LangChainEmbedder, LockstepVectorStore
from participants.qdrant import QdrantIndex
from participants.sqlite import SQLiteStorage
from tests.support.servers import ASYNC_COMBOS, async_memory_store, postgres_redis_chroma

FAKE = DeterministicFakeEmbedding(size=6)  # the model LangChain's standard tests use
EMBEDDER = LangChainEmbedder(FAKE, 6, name="deterministic-fake-6")


def foo_bar() -> list[Document]:
    return [
        Document(page_content="foo", metadata={"id": 1}),
        Document(page_content="bar", metadata={"id": 2}),
    ]


@pytest.fixture(params=["sqlite + qdrant local", "postgres + redis + chroma server"])
def mem(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MemoryStore]:
    if request.param.startswith("sqlite"):
        client = QdrantClient(path=str(tmp_path / "vectors"))
        index = QdrantIndex(client, "docs", embedder=EMBEDDER, owns_client=True)
        store = MemoryStore(SQLiteStorage(tmp_path / "facts.db"), [index])
    else:
        store = postgres_redis_chroma(request, EMBEDDER)
    yield store
    assert store.verify().clean  # storage, mirror and index agree after every test
    store.close()


def test_documents_are_added_found_nearest_first_and_left_unmutated(mem: MemoryStore) -> None:
    vectors = LockstepVectorStore(mem)
    assert vectors.similarity_search("foo", k=1) == []
    originals = foo_bar()
    ids = vectors.add_documents(originals)
    assert vectors.similarity_search("bar", k=2) == [
        Document(page_content="bar", metadata={"id": 2}, id=ids[1]),
        Document(page_content="foo", metadata={"id": 1}, id=ids[0]),
    ]
    assert originals == foo_bar()  # no id written into the caller's documents
    stored = {f["id"]: f["payload"] for f in mem.query(typename="document")}
    assert stored == {
        ids[0]: {"content": "foo", "metadata": {"id": 1}},
        ids[1]: {"content": "bar", "metadata": {"id": 2}},
    }
    assert mem.indexes[0].contents().committed == {ids[0]: 1, ids[1]: 1}


def test_ids_replace_and_delete_documents(mem: MemoryStore) -> None:
    vectors = LockstepVectorStore(mem)
    assert vectors.add_documents(foo_bar(), ids=["1", "2"]) == ["1", "2"]
    vectors.add_documents(foo_bar(), ids=["1", "2"])  # again: no duplicates
    replaced = Document(page_content="new foo", metadata={"id": 1, "other": "x"})
    vectors.add_documents([replaced], ids=["1"])
    assert vectors.similarity_search("new foo", k=2) == [
        Document(page_content="new foo", metadata={"id": 1, "other": "x"}, id="1"),
        Document(page_content="bar", metadata={"id": 2}, id="2"),
    ]
    assert [d.id for d in vectors.get_by_ids(["2", "missing", "1"])] == ["2", "1"]
    vectors.delete(["1", "missing"])
    assert vectors.similarity_search("foo", k=5) == [
        Document(page_content="bar", metadata={"id": 2}, id="2")
    ]
    assert mem.indexes[0].contents().committed == {"2": 2}  # written twice, "1" removed
    assert [v["version"] for v in mem.history("1")] == [1, 2, 3, 4]  # 4: the delete


def test_a_batch_with_one_bad_document_writes_none_of_it(mem: MemoryStore) -> None:
    vectors = LockstepVectorStore(mem)
    vectors.add_documents([Document(page_content="kept")], ids=["kept"])
    batch = [
        Document(page_content="first"),
        Document(page_content="second", metadata={"big": 2**70}),
    ]
    with pytest.raises(UsageError, match=r"payload\.metadata\.big"):
        vectors.add_documents(batch, ids=["a", "b"])
    assert [f["id"] for f in mem.query()] == ["kept"]
    assert mem.indexes[0].contents().committed == {"kept": 1}
    for mirror in mem.mirrors:
        assert [f.id for f in mirror.all_facts()] == ["kept"]


def test_filters_scores_and_other_types(mem: MemoryStore) -> None:
    mem.commit(Fact(id="note", type="note", payload={"content": "foo"}))
    vectors = LockstepVectorStore(mem)
    vectors.add_texts(["foo", "foo too"], [{"source": "faq"}, {"source": "chat"}], ids=["f", "c"])
    found = vectors.similarity_search("foo", k=5, filter={"source": "chat"})
    assert [d.id for d in found] == ["c"]
    scored = vectors.similarity_search_with_relevance_scores("foo", k=2)
    assert [d.id for d, _ in scored] == ["f", "c"]
    assert scored[0][1] == pytest.approx(1.0) and 0.0 <= scored[1][1] < 1.0
    # The note is another type: not a document of this store, not deleted nor replaced.
    assert vectors.get_by_ids(["note"]) == []
    vectors.delete(["note"])
    with pytest.raises(UsageError, match="'note' fact, not a 'document'"):
        vectors.add_documents(
            [Document(page_content="x"), Document(page_content="y")], ids=["z", "note"]
        )
    assert mem.get("note")["type"] == "note"  # type: ignore[index]
    assert mem.get("z") is None


def test_misuse_is_refused_by_name(mem: MemoryStore, tmp_path: Path) -> None:
    vectors = LockstepVectorStore(mem)
    with pytest.raises(UsageError, match="give the ids"):
        vectors.delete()
    with pytest.raises(UsageError, match="2 ids for 1 documents"):
        vectors.add_documents([Document(page_content="x")], ids=["a", "b"])
    with pytest.raises(UsageError, match="Lockstep's own"):
        LockstepVectorStore(mem, type="lockstep:checkpoint")
    with pytest.raises(UsageError, match="store="):
        LockstepVectorStore.from_texts(["x"], FAKE)
    with pytest.raises(UsageError, match="does not embed with this model"):
        LockstepVectorStore.from_texts(["x"], DeterministicFakeEmbedding(size=6), store=mem)
    with pytest.raises(UsageError, match="at least one index"):
        LockstepVectorStore(MemoryStore(SQLiteStorage(tmp_path / "bare.db")))
    assert mem.query() == []
    made = LockstepVectorStore.from_texts(["made"], FAKE, store=mem, ids=["m"])
    assert [d.page_content for d in made.similarity_search("made", k=1)] == ["made"]


@pytest.mark.anyio
async def test_the_async_methods_reach_the_same_stores(tmp_path: Path) -> None:
    client = QdrantClient(path=str(tmp_path / "vectors"))
    index = QdrantIndex(client, "docs", embedder=EMBEDDER, owns_client=True)
    with MemoryStore(SQLiteStorage(tmp_path / "facts.db"), [index]) as mem:
        vectors = LockstepVectorStore(mem)
        ids = await vectors.aadd_documents(foo_bar(), ids=["1", "2"])
        found = await vectors.asimilarity_search("foo", k=1)
        assert found == [Document(page_content="foo", metadata={"id": 1}, id="1")]
        assert await vectors.aadd_texts(["baz"], [{"id": 3}], ids=["3"]) == ["3"]
        assert [d.id for d in await vectors.aget_by_ids(["3", "1"])] == ["3", "1"]
        await vectors.adelete(ids)
        assert await vectors.asimilarity_search("foo", k=1) == [
            Document(page_content="baz", metadata={"id": 3}, id="3")
        ]
        assert mem.indexes[0].contents().committed == {"3": 1}


# -- on an AsyncMemoryStore: the async methods await it -----------------------------------


@pytest.fixture(params=ASYNC_COMBOS)
async def amem(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncMemoryStore]:
    async for store in async_memory_store(request, tmp_path, EMBEDDER):
        yield store


@pytest.mark.anyio
async def test_on_an_async_store_documents_land_in_every_store(amem: AsyncMemoryStore) -> None:
    vectors = LockstepVectorStore(amem)
    assert await vectors.aadd_texts(["foo", "bar"], [{"id": 1}, {"id": 2}], ids=["1", "2"]) == [
        "1",
        "2",
    ]
    assert await vectors.asimilarity_search("bar", k=2) == [
        Document(page_content="bar", metadata={"id": 2}, id="2"),
        Document(page_content="foo", metadata={"id": 1}, id="1"),
    ]
    replaced = Document(page_content="new foo", metadata={"id": 1, "other": "x"})
    await vectors.aadd_documents([replaced], ids=["1"])
    found = await vectors.asimilarity_search_with_relevance_scores("new foo", k=1)
    assert [(d.id, d.page_content) for d, _ in found] == [("1", "new foo")]
    assert found[0][1] == pytest.approx(1.0)
    assert [d.id for d in await vectors.aget_by_ids(["2", "missing", "1"])] == ["2", "1"]
    assert [d.id for d in await vectors.asimilarity_search("foo", filter={"id": 2})] == ["2"]
    await vectors.adelete(["2", "missing"])
    stored = {f["id"]: f["payload"] for f in await amem.query(typename="document")}
    assert stored == {"1": {"content": "new foo", "metadata": {"id": 1, "other": "x"}}}
    assert (await amem.indexes[0].contents()).committed == {"1": 2}
    for mirror in amem.mirrors:
        assert [(f.id, f.version) for f in await mirror.all_facts()] == [("1", 2)]


@pytest.mark.anyio
async def test_on_an_async_store_a_bad_batch_writes_nothing(amem: AsyncMemoryStore) -> None:
    vectors = LockstepVectorStore(amem)
    await vectors.aadd_documents([Document(page_content="kept")], ids=["kept"])
    batch = [
        Document(page_content="first"),
        Document(page_content="second", metadata={"big": 2**70}),
    ]
    with pytest.raises(UsageError, match=r"payload\.metadata\.big"):
        await vectors.aadd_documents(batch, ids=["a", "b"])
    await amem.commit(Fact(id="note", type="note", payload={"content": "foo"}))
    with pytest.raises(UsageError, match="'note' fact, not a 'document'"):
        await vectors.aadd_texts(["x", "y"], ids=["z", "note"])
    with pytest.raises(UsageError, match=r"aadd_texts\(\): 1 metadatas for 2 texts"):
        await vectors.aadd_texts(["x", "y"], [{}])
    with pytest.raises(UsageError, match="give the ids"):
        await vectors.adelete()
    assert sorted(f["id"] for f in await amem.query()) == ["kept", "note"]
    assert (await amem.indexes[0].contents()).committed == {"kept": 1, "note": 1}


@pytest.mark.anyio
async def test_on_an_async_store_the_sync_methods_run_on_its_loop(amem: AsyncMemoryStore) -> None:
    """A synchronous caller on another thread (LangGraph runs a synchronous tool so) waits
    for the store's loop; on the loop's own thread, waiting would stop it: refused."""
    vectors = LockstepVectorStore(amem)
    ids = await asyncio.to_thread(vectors.add_texts, ["foo"], [{"id": 1}], ids=["1"])
    assert ids == ["1"]
    found = await asyncio.to_thread(vectors.similarity_search, "foo", 1)
    assert found == [Document(page_content="foo", metadata={"id": 1}, id="1")]
    assert [d.id for d in await asyncio.to_thread(vectors.get_by_ids, ["1"])] == ["1"]
    with pytest.raises(UsageError, match="await its async methods"):
        vectors.similarity_search("foo")
    await asyncio.to_thread(vectors.delete, ["1"])
    assert await amem.query() == []
    made = await LockstepVectorStore.afrom_texts(["made"], FAKE, store=amem, ids=["m"])
    assert [d.id for d in await made.asimilarity_search("made", k=1)] == ["m"]


def test_a_sync_misuse_is_refused_by_name(mem: MemoryStore) -> None:
    vectors = LockstepVectorStore(mem)
    with pytest.raises(UsageError, match=r"add_texts\(\): 2 metadatas for 1 texts"):
        vectors.add_texts(["x"], [{}, {}])
    with pytest.raises(UsageError, match="unknown arguments"):
        vectors.similarity_search("x", fetch=3)
    with pytest.raises(UsageError, match="takes a MemoryStore or an AsyncMemoryStore, got object"):
        LockstepVectorStore(object())  # type: ignore[arg-type]
    assert mem.query() == []
