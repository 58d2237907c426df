"""The participant contract for vector indexes: Qdrant (local mode, memory, Edge) and
Chroma (embedded, server). Every test reads the index's real points (``contents``, ``search``).
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import chromadb
import pytest
from qdrant_client import QdrantClient, models

from chaos.servers import ChromaServer
from coordinator import (
    ConfigurationError,
    DeleteFact,
    FactRecord,
    LockstepError,
    TransactionAborted,
    UpsertFact,
    UsageError,
    Vote,
    Write,
    new_txid,
)
from coordinator.abc import Index
from coordinator.embeddings import HashingEmbedder
from participants.chroma import SYNC_THRESHOLD, AsyncChromaIndex, ChromaIndex, from_url
from participants.qdrant import QdrantIndex
from participants.qdrant import _catalog as catalog
from participants.qdrant._catalog import points_file
from participants.qdrant._edge import EdgeClient

EMBEDDER = HashingEmbedder(16)
Opener = Callable[[], Index]


@pytest.fixture(
    params=[
        "qdrant-local",
        "qdrant-local-scan",
        "qdrant-memory",
        "qdrant-edge",
        "chroma-embedded",
        "chroma-server",
    ]
)
def open_index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Open the same index again, as a new process would (closing the previous client)."""
    collection = f"c{uuid.uuid4().hex[:12]}"
    opened: list[Index] = []
    kind = request.param
    memory_client = QdrantClient(":memory:") if kind == "qdrant-memory" else None

    def opener() -> Index:
        for previous in opened:
            previous.close()
        index: Index
        if kind.startswith("qdrant-local"):  # -scan: filters, as against a server
            client = QdrantClient(path=str(tmp_path / "qdrant"))
            index = QdrantIndex(
                client,
                collection,
                "content",
                ["role"],
                embedder=EMBEDDER,
                owns_client=True,
                catalog=kind == "qdrant-local",
            )
        elif kind == "qdrant-memory":
            index = QdrantIndex(memory_client, collection, "content", ["role"], embedder=EMBEDDER)  # type: ignore[arg-type]
        elif kind == "qdrant-edge":
            edge = EdgeClient(tmp_path / "edge")
            index = QdrantIndex(
                edge, collection, "content", ["role"], embedder=EMBEDDER, owns_client=True
            )
        elif kind == "chroma-embedded":
            embedded = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
            index = ChromaIndex(embedded, collection, "content", ["role"], embedder=EMBEDDER)
        else:
            server: ChromaServer = request.getfixturevalue("chroma_server")
            remote = chromadb.HttpClient(host="127.0.0.1", port=server.port)
            index = ChromaIndex(remote, collection, "content", ["role"], embedder=EMBEDDER)
        opened.append(index)
        return index

    yield opener
    for index in opened:
        index.close()


def fact(fact_id: str, version: int, text: str, **extra: object) -> FactRecord:
    return FactRecord(fact_id, "note", {"content": text, **extra}, version, session_id="s1")


def upsert(record: FactRecord) -> UpsertFact:
    return UpsertFact(
        record, record.version - 1, embedding=tuple(EMBEDDER.embed([record.payload["content"]])[0])
    )


def search(index: Index, text: str) -> list[tuple[str, int, bool]]:
    """(fact, version, committed) of every point found."""
    found = index.search(EMBEDDER.embed_query(text), 10, {})
    return [(h.fact_id, h.version, h.committed) for h in found]


def test_a_staged_point_is_found_as_staged_until_commit(open_index: Opener) -> None:
    index = open_index()
    txid = new_txid()
    assert index.prepare(txid, [upsert(fact("a", 1, "green tea"))]) is Vote.YES
    (hit,) = index.search(EMBEDDER.embed_query("green tea"), 10, {})
    # The caller decides: staged, so current only if this txid committed version 1.
    assert (hit.fact_id, hit.version, hit.committed, hit.txid) == ("a", 1, False, txid)
    assert not hit.is_current(fact("a", 1, "green tea"))  # committed by no known txid
    assert hit.is_current(replace(fact("a", 1, "green tea"), txid=txid))
    assert not hit.is_current(replace(fact("a", 2, "green tea"), txid=txid))
    assert index.recover() == [txid]
    assert index.contents().committed == {}
    index.commit(txid)
    assert search(index, "green tea") == [("a", 1, True)]
    assert index.recover() == [] and index.contents().committed == {"a": 1}


def test_a_prepared_branch_survives_reopening(open_index: Opener) -> None:
    txid = new_txid()
    open_index().prepare(txid, [upsert(fact("a", 1, "green tea"))])
    again = open_index()
    assert again.recover() == [txid]
    again.commit(txid)
    assert again.contents().committed == {"a": 1}


def test_commit_replaces_older_versions_so_search_sees_one(open_index: Opener) -> None:
    index = open_index()
    for version, text in ((1, "green tea"), (2, "black tea"), (3, "mint tea")):
        txid = new_txid()
        index.prepare(txid, [upsert(fact("a", version, text))])
        index.commit(txid)
    assert search(index, "tea") == [("a", 3, True)]
    assert index.contents().committed == {"a": 3}


def test_abort_removes_what_the_transaction_staged_and_fences_it(open_index: Opener) -> None:
    index = open_index()
    kept = new_txid()
    index.prepare(kept, [upsert(fact("a", 1, "green tea"))])
    index.commit(kept)
    txid = new_txid()
    index.prepare(txid, [upsert(fact("a", 2, "coffee")), upsert(fact("b", 1, "water"))])
    index.abort(txid)
    index.abort(txid)
    assert index.recover() == [] and index.contents().committed == {"a": 1}
    with pytest.raises(TransactionAborted, match="already aborted"):
        index.prepare(txid, [upsert(fact("b", 1, "water"))])


def test_racing_transactions_do_not_overwrite_each_others_staging(open_index: Opener) -> None:
    index = open_index()
    winner, loser = new_txid(), new_txid()
    index.prepare(winner, [upsert(fact("a", 1, "winner"))])
    index.prepare(loser, [upsert(fact("a", 1, "loser"))])
    index.abort(loser)
    index.commit(winner)
    assert index.contents().committed == {"a": 1}
    (hit,) = index.search(EMBEDDER.embed_query("winner"), 10, {})
    assert (hit.version, hit.committed, hit.txid) == (1, True, winner)


def test_a_delete_is_staged_then_applied(open_index: Opener) -> None:
    index = open_index()
    first = new_txid()
    index.prepare(first, [upsert(fact("a", 1, "green tea"))])
    index.commit(first)
    delete = new_txid()
    index.prepare(delete, [DeleteFact("a", 1)])
    assert index.contents().committed == {"a": 1}  # still visible while staged
    index.commit(delete)
    index.commit(delete)
    assert index.contents().committed == {} and search(index, "green tea") == []


def test_search_never_returns_a_delete_marker_and_still_returns_k_points(
    open_index: Opener,
) -> None:
    """Staged deletes leave markers whose vector is the marker vector; a search from that
    very vector gets the k nearest upsert points all the same (in local mode, which finds
    them without a filter, by asking for as many more points as it holds markers)."""
    index = open_index()
    first = new_txid()
    index.prepare(first, [upsert(fact(f, 1, f"note {f}")) for f in "abcde"])
    index.commit(first)
    deletes = new_txid()
    index.prepare(deletes, [DeleteFact("a", 1), DeleteFact("b", 1), DeleteFact("c", 1)])
    marker = [1.0] + [0.0] * (EMBEDDER.dim - 1)  # the three markers' own vector
    found = index.search(marker, 4, {})
    assert len(found) == 4 and all(h.version == 1 and h.committed for h in found)
    # The same points, in the same order, as a search the index filters (by session).
    assert [h.fact_id for h in found] == [
        h.fact_id for h in index.search(marker, 4, {"session_id": "s1"})
    ]
    index.commit(deletes)
    assert sorted(h.fact_id for h in index.search(marker, 4, {})) == ["d", "e"]


def test_local_mode_finds_what_its_filter_finds_without_one(tmp_path: Path) -> None:
    """With its catalog, a local-mode index finds the points that meet a search's
    conditions among the nearest points, without a filter (which local mode tests on every
    point in Python): the same points, in the same order, as local mode's filter finds
    (``catalog=False``), whether they are common, far from the query, or rare."""
    listed, filtered = (
        QdrantIndex(
            QdrantClient(path=str(tmp_path / name)),
            "c",
            "content",
            ["role", "n", "flag"],
            embedder=EMBEDDER,
            owns_client=True,
            catalog=name == "listed",
        )
        for name in ("listed", "filtered")
    )
    rng = random.Random(7)
    writes: list[Write] = []
    for i in range(200):
        far = i % 15 == 0  # 14 of 200: common enough to be looked for without a filter
        vector = [(-1.0 if far else 1.0) + rng.uniform(0, 0.5)] + [
            rng.uniform(-0.3, 0.3) for _ in range(EMBEDDER.dim - 1)
        ]
        payload = {
            "content": f"n{i}",
            "role": "far" if far else "near",
            "n": i % 3,
            "flag": i % 2 == 0,
        }
        record = FactRecord(f"f{i}", "note", payload, 1, session_id=f"s{i % 2}")
        writes.append(UpsertFact(record, 0, embedding=tuple(vector)))
    for index in (listed, filtered):
        first, second = new_txid(), new_txid()
        index.prepare(first, writes)
        index.commit(first)
        index.prepare(second, [DeleteFact("f0", 1), DeleteFact("f1", 1)])  # two markers
    query = [1.0] + [0.0] * (EMBEDDER.dim - 1)
    for where in (
        {},
        {"role": "far"},
        {"role": "near"},
        {"session_id": "s1"},
        {"role": "far", "session_id": "s0"},  # 7 of 200: rare, left to the filter
        {"n": 1},
        {"n": 1.0},
        {"n": True},
        {"flag": True},
        {"role": "none"},
        {"type": "note"},
    ):
        for k in (1, 5, 20):
            got = [(h.fact_id, h.version, h.committed) for h in listed.search(query, k, where)]
            assert got == [
                (h.fact_id, h.version, h.committed) for h in filtered.search(query, k, where)
            ], (where, k)
            assert len(got) == min(k, len([w for w in writes if _meets(w, where)])), (where, k)
    for index in (listed, filtered):
        index.close()


def _meets(write: Write, where: Mapping[str, object]) -> bool:
    assert isinstance(write, UpsertFact)
    fact = write.fact
    held = {**fact.payload, "type": fact.type, "session_id": fact.session_id}
    return all(
        held.get(key) == value and isinstance(held.get(key), bool) == isinstance(value, bool)
        for key, value in where.items()
    )


def test_contents_tells_the_metadata_each_committed_point_carries(open_index: Opener) -> None:
    index = open_index()
    for record in (
        fact("a", 1, "green tea", role="drink"),
        fact("a", 2, "black tea", role="breakfast"),
        fact("b", 1, "no role here"),
        fact("c", 1, "a number", role=1.5),
    ):
        txid = new_txid()
        index.prepare(txid, [upsert(record)])
        index.commit(txid)
    staged = new_txid()
    index.prepare(staged, [upsert(fact("a", 3, "mint tea", role="staged"))])
    contents = open_index().contents()
    assert contents.committed == {"a": 2, "b": 1, "c": 1}
    # The newest committed point's configured fields; a staged one is not counted.
    assert contents.fields == {"a": {"role": "breakfast"}, "b": {}, "c": {"role": 1.5}}
    assert contents.pending == (staged,)


def test_search_filters_on_metadata_and_session(open_index: Opener) -> None:
    index = open_index()
    txid = new_txid()
    index.prepare(
        txid, [upsert(fact("a", 1, "tea", role="drink")), upsert(fact("b", 1, "tea", role="food"))]
    )
    index.commit(txid)
    vector = EMBEDDER.embed_query("tea")
    assert [h.fact_id for h in index.search(vector, 5, {"role": "drink"})] == ["a"]
    assert {h.fact_id for h in index.search(vector, 5, {"session_id": "s1"})} == {"a", "b"}
    assert index.search(vector, 5, {"session_id": "other"}) == []


def test_search_filters_on_a_boolean_field(open_index: Opener) -> None:
    """A boolean is its own value: True is not 1 (Qdrant Edge's client passes a boolean
    match to the engine as an integer, so its index meets that condition itself)."""
    index = open_index()
    txid = new_txid()
    index.prepare(
        txid,
        [
            upsert(fact("a", 1, "tea", role=True)),
            upsert(fact("b", 1, "tea", role=False)),
            upsert(fact("c", 1, "tea", role=1)),
        ],
    )
    index.commit(txid)
    vector = EMBEDDER.embed_query("tea")
    assert [h.fact_id for h in index.search(vector, 5, {"role": True})] == ["a"]
    assert [h.fact_id for h in index.search(vector, 5, {"role": False, "type": "note"})] == ["b"]
    assert [h.fact_id for h in index.search(vector, 5, {"role": 1})] == ["c"]
    assert index.search(vector, 5, {"role": True, "session_id": "other"}) == []


def test_a_search_of_an_empty_index_finds_nothing_with_or_without_conditions(
    open_index: Opener,
) -> None:
    """A fresh store searched by session or type before anything was written (Qdrant local
    divided by the number of points meeting the conditions: zero)."""
    index = open_index()
    vector = EMBEDDER.embed_query("tea")
    for where in ({}, {"session_id": "s1"}, {"type": "note", "role": "drink"}):
        assert index.search(vector, 5, where) == [], where


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (UpsertFact(fact("a", 1, "x"), 0, embedding=(1.0, 0.0)), "2 dimensions"),
        (UpsertFact(fact("a", 1, "x"), 0), "without an embedding"),
        (
            UpsertFact(fact("a", 1, "x", role={"nested": 1}), 0, embedding=(0.25,) * 16),
            "must be a str, number or bool",
        ),
    ],
)
def test_bad_writes_are_refused_and_nothing_is_staged(
    open_index: Opener, write: UpsertFact, message: str
) -> None:
    index = open_index()
    with pytest.raises(UsageError, match=message):
        index.prepare(new_txid(), [write])
    assert index.recover() == [] and index.contents().committed == {}


def test_a_fact_without_its_text_field_is_refused(open_index: Opener) -> None:
    index = open_index()
    with pytest.raises(UsageError, match="'content', which is missing"):
        index.text_of(FactRecord("a", "note", {"other": 1}, 1))


def test_a_collection_of_another_dimension_is_refused(tmp_path: Path) -> None:
    client = QdrantClient(":memory:")
    QdrantIndex(client, "shared", embedder=HashingEmbedder(16)).recover()
    with pytest.raises(
        ConfigurationError, match="holds 16-dimensional vectors; the embedder makes 32"
    ):
        QdrantIndex(client, "shared", embedder=HashingEmbedder(32)).recover()
    edge = EdgeClient(tmp_path / "edge")
    QdrantIndex(edge, "shared", embedder=HashingEmbedder(16)).recover()
    with pytest.raises(
        ConfigurationError, match="holds 16-dimensional vectors; the embedder makes 32"
    ):
        QdrantIndex(edge, "shared", embedder=HashingEmbedder(32)).recover()
    edge.close()
    chroma = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    ChromaIndex(chroma, "shared", embedder=HashingEmbedder(16)).recover()
    with pytest.raises(ConfigurationError, match="holds 16-dimensional vectors"):
        ChromaIndex(chroma, "shared", embedder=HashingEmbedder(32)).recover()


class NamedHashing(HashingEmbedder):
    """Vectors of another model with the same dimension, as far as an index can tell."""

    def __init__(self, name: str | None) -> None:
        super().__init__(16)
        self.name = name  # type: ignore[assignment]


@pytest.mark.parametrize(
    "kind", ["qdrant-local", "qdrant-edge", "chroma-embedded", "chroma-server"]
)
def test_a_collection_embedded_by_another_model_is_refused(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    collection = f"e{uuid.uuid4().hex[:10]}"

    def index(embedder: HashingEmbedder) -> Index:
        if kind == "qdrant-local":
            client = QdrantClient(path=str(tmp_path / "qdrant"))
            return QdrantIndex(client, collection, embedder=embedder, owns_client=True)
        if kind == "qdrant-edge":
            edge = EdgeClient(tmp_path / "edge")
            return QdrantIndex(edge, collection, embedder=embedder, owns_client=True)
        if kind == "chroma-embedded":
            chroma = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
            return ChromaIndex(chroma, collection, embedder=embedder)
        server: ChromaServer = request.getfixturevalue("chroma_server")
        remote = chromadb.HttpClient(host="127.0.0.1", port=server.port)
        return ChromaIndex(remote, collection, embedder=embedder)

    first = index(HashingEmbedder(16))  # named "hashing": recorded with the collection
    txid = new_txid()
    first.prepare(txid, [upsert(fact("a", 1, "green tea"))])
    first.commit(txid)
    first.close()
    other = index(NamedHashing("another-model"))
    with pytest.raises(ConfigurationError, match=r"embedded by 'hashing'.*'another-model'"):
        other.recover()
    other.close()
    for same in (NamedHashing(None), HashingEmbedder(16)):  # unnamed: not checked
        again = index(same)
        assert again.contents().committed == {"a": 1}
        again.close()


def test_a_collection_written_by_someone_else_is_refused(tmp_path: Path) -> None:
    client = QdrantClient(":memory:")
    client.create_collection(
        "theirs", vectors_config=models.VectorParams(size=16, distance=models.Distance.COSINE)
    )
    client.upsert("theirs", [models.PointStruct(id=1, vector=[0.1] * 16, payload={"doc": "x"})])
    with pytest.raises(ConfigurationError, match="holds points Lockstep did not write"):
        QdrantIndex(client, "theirs", embedder=EMBEDDER).recover()
    client.create_collection(
        "named",
        vectors_config={"text": models.VectorParams(size=16, distance=models.Distance.COSINE)},
    )
    with pytest.raises(ConfigurationError, match="named vectors"):
        QdrantIndex(client, "named", embedder=EMBEDDER).recover()
    chroma = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    chroma.create_collection("theirs").add(ids=["x"], embeddings=[[0.1] * 16])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="was not created by Lockstep"):
        ChromaIndex(chroma, "theirs", embedder=EMBEDDER).recover()


@pytest.mark.parametrize("where", ["embedded", "server"])
def test_a_chroma_collection_lockstep_creates_persists_its_index_often(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A Chroma 1.x write costs more the more records wait to be persisted (1,000 by
    default); the collections Lockstep creates persist every SYNC_THRESHOLD records, a
    URL may say otherwise, and a collection that exists keeps its own setting."""
    if where == "server":
        port = request.getfixturevalue("chroma_server").port
        client: Any = chromadb.HttpClient(host="127.0.0.1", port=port)
        base = f"chroma+http://127.0.0.1:{port}"
    else:
        client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
        base = f"chroma+local:///{tmp_path / 'chroma'}"
    tag = uuid.uuid4().hex[:8]

    def hnsw(name: str) -> dict[str, Any]:
        return dict(client.get_collection(name).configuration_json["hnsw"])

    ChromaIndex(client, f"made-{tag}", embedder=EMBEDDER).recover()
    assert hnsw(f"made-{tag}")["sync_threshold"] == SYNC_THRESHOLD == 200
    assert hnsw(f"made-{tag}")["space"] == "cosine"
    from_url(f"{base}?collection=tuned-{tag}&sync_threshold=50", embedder=EMBEDDER).recover()
    assert hnsw(f"tuned-{tag}")["sync_threshold"] == 50
    client.create_collection(
        f"kept-{tag}", embedding_function=None, configuration={"hnsw": {"space": "cosine"}}
    )
    index = ChromaIndex(client, f"kept-{tag}", embedder=EMBEDDER, sync_threshold=50)
    txid = new_txid()
    index.prepare(txid, [upsert(fact("a", 1, "kept"))])
    index.commit(txid)
    assert index.contents().committed == {"a": 1}
    assert hnsw(f"kept-{tag}")["sync_threshold"] == 1000  # Chroma's default, left alone


@pytest.mark.anyio
async def test_an_async_chroma_client_creates_the_collection_alike(
    chroma_server: ChromaServer,
) -> None:
    """``AsyncHttpClient``'s calls are awaited as they are: the same setting reaches them."""
    client = await chromadb.AsyncHttpClient(host="127.0.0.1", port=chroma_server.port)
    name = f"async-{uuid.uuid4().hex[:8]}"
    index = AsyncChromaIndex(client, name, embedder=EMBEDDER, sync_threshold=300)
    txid = new_txid()
    await index.prepare(txid, [upsert(fact("a", 1, "made"))])
    await index.commit(txid)
    assert (await index.contents()).committed == {"a": 1}
    hnsw = (await client.get_collection(name)).configuration_json["hnsw"]
    assert (hnsw["space"], hnsw["sync_threshold"]) == ("cosine", 300)


def test_a_bad_chroma_sync_threshold_names_the_setting(tmp_path: Path) -> None:
    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    for bad in (1, 0, 2.5, "200", True):
        with pytest.raises(
            ConfigurationError, match=f"sync_threshold must be an int >= 2.*{bad!r}"
        ):
            ChromaIndex(client, "refused", embedder=EMBEDDER, sync_threshold=bad)  # type: ignore[arg-type]
    url = f"chroma+local:///{tmp_path / 'chroma'}?collection=refused"
    with pytest.raises(ConfigurationError, match="sync_threshold must be a whole number, got 'x'"):
        from_url(f"{url}&sync_threshold=x")
    for refused in ("1", "0", "-3"):  # 0 is not "the default"
        with pytest.raises(ConfigurationError, match=rf"must be an int >= 2 .*, got {refused}$"):
            from_url(f"{url}&sync_threshold={refused}")
    assert client.list_collections() == []


def test_a_chroma_collection_of_another_space_is_refused(tmp_path: Path) -> None:
    """An empty collection someone else made in the l2 space: searches would read its
    distances as cosine ones."""
    chroma = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    chroma.create_collection("euclid", embedding_function=None)  # l2, Chroma's default
    with pytest.raises(ConfigurationError, match="uses the 'l2' space; Lockstep needs 'cosine'"):
        ChromaIndex(chroma, "euclid", embedder=EMBEDDER).recover()
    assert chroma.get_collection("euclid").count() == 0


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_concurrent_first_prepares_create_the_collection_once(tmp_path: Path) -> None:
    """Eight asyncio writers on a fresh local Qdrant index (one used to find the
    collection 'already exists' and vote NO)."""
    import anyio
    from qdrant_client import AsyncQdrantClient

    from coordinator import UpsertFact, Vote, new_txid
    from participants.qdrant import AsyncQdrantIndex
    from tests.support.crash import fact

    client = AsyncQdrantClient(path=str(tmp_path / "q"))
    index = AsyncQdrantIndex(client, "fresh", "note", embedder=HashingEmbedder(8), owns_client=True)
    votes: list[Vote] = []

    async def prepare(n: int) -> None:
        write = UpsertFact(fact(f"f{n}", 1, note=f"note {n}"), 0, embedding=(1.0,) * 8)
        votes.append(await index.prepare(new_txid(), [write]))

    async with anyio.create_task_group() as group:
        for n in range(8):
            group.start_soon(prepare, n)
    assert votes == [Vote.YES] * 8
    assert len(await index.recover()) == 8
    await index.close()


def test_local_indexes_on_one_client_share_what_they_know(tmp_path: Path) -> None:
    """Two indexes on one local-mode client and collection: one stages, the other commits
    (a catalog each would leave the second blind to the first's points)."""
    client = QdrantClient(path=str(tmp_path / "qdrant"))
    first = QdrantIndex(client, "shared", "content", embedder=EMBEDDER)
    second = QdrantIndex(client, "shared", "content", embedder=EMBEDDER, name="second")
    first.contents()  # both open the collection before anything is written
    second.contents()
    old, new = new_txid(), new_txid()
    first.prepare(old, [upsert(fact("a", 1, "green tea"))])
    second.commit(old)
    second.prepare(new, [upsert(fact("a", 2, "mint tea"))])
    assert first.recover() == [new]
    first.commit(new)
    assert second.contents().committed == {"a": 2}
    assert [
        (h.version, h.committed) for h in second.search(EMBEDDER.embed_query("tea"), 5, {})
    ] == [(2, True)]
    client.close()


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_local_collection_keeps_its_points_in_a_write_ahead_log(
    tmp_path: Path, asynchronous: bool
) -> None:
    """Local mode's points file is switched to WAL (one fsync a commit, as durable): read
    from the file itself, and what was staged is there after the client is reopened."""
    from coordinator.plugins import open_participant

    url = f"qdrant+local:///{tmp_path / 'qdrant'}?collection=walled"
    txid = new_txid()
    staged = [upsert(fact("a", 1, "green tea"))]
    if asynchronous:

        async def stage_async() -> None:
            index = open_participant(url, embedder=EMBEDDER, asynchronous=True)
            await index.prepare(txid, staged)
            await index.close()

        anyio.run(stage_async)
    else:
        index = open_participant(url, embedder=EMBEDDER)
        index.prepare(txid, staged)
        index.close()
    (the_file,) = (tmp_path / "qdrant").glob("collection/walled/storage.sqlite")
    with contextlib.closing(sqlite3.connect(the_file)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again = open_participant(url, embedder=EMBEDDER)
    assert again.recover() == [txid]
    again.close()


@pytest.mark.parametrize("way", ["in place", "reloaded"])
def test_a_local_collection_drops_what_it_deleted_from_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    """Local mode only marks a deleted point in memory, where every search goes over it
    again: each update of a memory left one more row behind. Once most of a collection's
    rows are deleted ones they are dropped (in place; or, for a layout of local mode this
    code does not know, by reloading the collection from its file); what it holds does
    not change."""
    monkeypatch.setattr(catalog, "COMPACT_AFTER", 8)
    if way == "reloaded":
        monkeypatch.setattr(catalog, "_drop_deleted_rows", lambda _: False)
    client = QdrantClient(path=str(tmp_path / "qdrant"))
    index = QdrantIndex(client, "kept", "content", ["role"], embedder=EMBEDDER)

    def rows() -> int:
        return len(client._client.collections["kept"].deleted)  # type: ignore[attr-defined]

    most = 0
    for version in range(1, 41):
        txid = new_txid()
        records = [fact(f, version, f"{f} tea {version}", role=f"r{version}") for f in "abc"]
        index.prepare(txid, [upsert(r) for r in records])
        index.commit(txid)
        most = max(most, rows())
    aborted = new_txid()
    index.prepare(aborted, [upsert(fact(f"x{i}", 1, "never")) for i in range(20)])
    index.abort(aborted)
    # Three live points; at most the threshold of deleted ones beside twice as many.
    assert most <= 3 + 8 + 3 + 3, most
    assert rows() <= 3 + 8 + 3 + 3, rows()
    contents = index.contents()
    assert contents.committed == {"a": 40, "b": 40, "c": 40}
    assert contents.fields == {f: {"role": "r40"} for f in "abc"}
    for f in "abc":  # each point still has its own vector: its text finds it, exactly
        [best, *_] = index.search(EMBEDDER.embed_query(f"{f} tea 40"), 3, {})
        assert (best.fact_id, best.version, best.committed) == (f, 40, True)
        assert best.score > 0.999, best
    assert (
        catalog.points_file(client, "kept")
        .execute(  # type: ignore[union-attr]
            "PRAGMA journal_mode"
        )
        .fetchone()[0]
        == "wal"
    )
    client.close()
    again = QdrantIndex(
        QdrantClient(path=str(tmp_path / "qdrant")),
        "kept",
        "content",
        ["role"],
        embedder=EMBEDDER,
        owns_client=True,
    )
    assert again.contents().committed == {"a": 40, "b": 40, "c": 40}
    again.close()


def test_an_async_local_collection_drops_what_it_deleted_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qdrant_client import AsyncQdrantClient

    from participants.qdrant import AsyncQdrantIndex

    monkeypatch.setattr(catalog, "COMPACT_AFTER", 8)

    async def main() -> list[int]:
        client = AsyncQdrantClient(path=str(tmp_path / "qdrant"))
        index = AsyncQdrantIndex(client, "kept", "content", embedder=EMBEDDER)
        rows = []
        for version in range(1, 31):
            txid = new_txid()
            await index.prepare(txid, [upsert(fact("a", version, f"tea {version}"))])
            await index.commit(txid)
            rows.append(len(client._client.collections["kept"].deleted))  # type: ignore[attr-defined]
        assert (await index.contents()).committed == {"a": 30}
        await client.close()
        return rows

    rows = anyio.run(main)
    assert max(rows) <= 1 + 8 + 1, rows


def test_a_local_batch_is_durable_when_it_returns_and_says_when_it_is_not(
    tmp_path: Path,
) -> None:
    """A batch of phase-2 work shares one sync, a checkpoint taken before ``commit_many``
    returns, with the connection back to ``synchronous=FULL`` after; if a reader elsewhere
    keeps the checkpoint from finishing, the batch fails (so its END is not recorded) and
    committing again completes it."""
    client = QdrantClient(path=str(tmp_path / "qdrant"))
    index = QdrantIndex(client, "batched", "content", embedder=EMBEDDER)
    txids = [new_txid() for _ in range(6)]
    for i, txid in enumerate(txids):
        index.prepare(txid, [upsert(fact(f"f{i}", 1, f"note {i}"))])
    (the_file,) = (tmp_path / "qdrant").glob("collection/batched/storage.sqlite")
    connection = points_file(client, "batched")
    assert connection is not None

    with contextlib.closing(sqlite3.connect(the_file)) as reader:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM points").fetchone()  # holds a snapshot
        with pytest.raises(LockstepError, match="checkpoint"):
            index.commit_many(txids[:3])
        reader.execute("COMMIT")
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again
    index.commit_many(txids[:3])  # the redrive
    index.commit_many(txids[3:])
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert index.recover() == []
    assert index.contents().committed == {f"f{i}": 1 for i in range(6)}
    client.close()
    again = QdrantIndex(
        QdrantClient(path=str(tmp_path / "qdrant")),
        "batched",
        "content",
        embedder=EMBEDDER,
        owns_client=True,
    )
    assert again.contents().committed == {f"f{i}": 1 for i in range(6)}
    again.close()


def stage_a_delete_of_two_versions(index: Index) -> str:
    """Commit versions 1 and 2 of fact ``a``, then prepare its delete; the delete's txid."""
    for version, text in ((1, "green tea"), (2, "mint tea")):
        txid = new_txid()
        index.prepare(txid, [upsert(fact("a", version, text))])
        index.commit(txid)
    delete = new_txid()
    index.prepare(delete, [DeleteFact("a", 2)])
    return delete


def test_a_delete_marker_outlives_what_it_deletes(tmp_path: Path) -> None:
    """Local mode deletes point by point: the marker must be deleted last, so a commit cut
    short still leaves it, and committing again (recovery's redrive) finishes the delete."""
    client = QdrantClient(path=str(tmp_path / "qdrant"))
    index = QdrantIndex(client, "c", "content", embedder=EMBEDDER)
    delete = stage_a_delete_of_two_versions(index)
    real_delete, calls = client.delete, []

    def cut_short(collection: str, selector: models.PointIdsList, **kwargs: object) -> object:
        calls.append(selector)
        if len(calls) == 1:  # the worst prefix: the marker (if in this call) went first
            doomed = [p for p in selector.points if p in markers_before]
            if doomed:
                real_delete(collection, models.PointIdsList(points=doomed), wait=True)
            raise ConnectionError("killed half way through the delete")
        return real_delete(collection, selector, **kwargs)  # type: ignore[arg-type]

    markers_before = [
        p.id
        for p in client.scroll("c", with_payload=True)[0]
        if (p.payload or {}).get("op") == "delete"
    ]

    client.delete = cut_short  # type: ignore[method-assign,assignment]
    with pytest.raises(LockstepError):
        index.commit(delete)
    client.delete = real_delete  # type: ignore[method-assign]
    again = QdrantIndex(client, "c", "content", embedder=EMBEDDER, name="again")
    markers = [
        p
        for p in client.scroll("c", with_payload=True)[0]
        if (p.payload or {}).get("op") == "delete"
    ]
    assert len(markers) == 1  # the marker is still there to finish from
    again.commit(delete)  # what recovery does with the COMMIT record
    assert client.scroll("c")[0] == [] and again.contents().committed == {}
    client.close()


def test_a_chroma_delete_marker_outlives_what_it_deletes(tmp_path: Path) -> None:
    """Chroma deletes by call: the versions a delete replaces go in one call, its marker in
    the next, so a commit cut off after the first still leaves the marker to finish from."""
    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    index = ChromaIndex(client, "notes", "content", embedder=EMBEDDER)
    delete = stage_a_delete_of_two_versions(index)
    collection = client.get_collection("notes")
    marker = collection.get(where={"op": "delete"})["ids"]
    assert len(marker) == 1
    real_delete, calls = type(index._collection).delete, []

    def cut_short(self: object, ids: list[str] | None = None, **kwargs: object) -> None:
        calls.append(ids)
        if len(calls) == 1:  # the worst case: the first call took effect, its reply lost
            real_delete(self, ids=ids, **kwargs)
            raise ConnectionError("killed half way through the delete")
        real_delete(self, ids=ids, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(index._collection), "delete", cut_short)
        with pytest.raises(LockstepError):
            index.commit(delete)
    assert calls, "the commit deleted nothing"
    assert collection.get(where={"op": "delete"})["ids"] == marker
    older: Any = {"version": {"$lt": 3}}
    assert collection.get(where=older)["ids"] == []  # versions 1 and 2 gone
    index.commit(delete)  # what recovery does with the COMMIT record
    assert collection.get()["ids"] == [] and index.contents().committed == {}


@pytest.mark.parametrize("catalog", [True, False])
def test_a_batch_with_two_versions_of_a_fact_keeps_the_newest(
    tmp_path: Path, catalog: bool
) -> None:
    client = QdrantClient(path=str(tmp_path / "qdrant"))
    index = QdrantIndex(client, "c", "content", embedder=EMBEDDER, catalog=catalog)
    first, second = new_txid(), new_txid()
    index.prepare(first, [upsert(fact("a", 1, "green tea"))])
    index.prepare(second, [upsert(fact("a", 2, "mint tea"))])
    index.commit_many([first, second])
    assert index.contents().committed == {"a": 2}
    assert [(p.payload or {}).get("version") for p in client.scroll("c", with_payload=True)[0]] == [
        2
    ]
    client.close()
