"""A field added to an index's ``metadata_fields`` after memories were written.

Search sends a filter on a configured field to the index, so a point written before the
field was configured (it does not carry it) is filtered out: the memory is silently
missed. ``verify`` used to call such an index clean, comparing versions only. Now it
reports those points as stale, and ``repair`` writes them again with the field.
Assertions read the index's points (``contents``) and search through the memory API.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import chromadb
import pytest
from qdrant_client import QdrantClient

from chaos.servers import ChromaServer
from coordinator import Fact, MemoryStore
from coordinator.abc import Index
from coordinator.embeddings import HashingEmbedder
from participants.chroma import ChromaIndex
from participants.qdrant import QdrantIndex
from participants.sqlite import SQLiteStorage

EMBEDDER = HashingEmbedder(16)
Reopen = Callable[[Sequence[str]], MemoryStore]


@pytest.fixture(params=["qdrant local", "chroma embedded", "chroma server"])
def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Reopen]:
    """Open the same stores again with the given ``metadata_fields``, as a process
    restarted with a new configuration would."""
    collection = f"m{uuid.uuid4().hex[:10]}"
    opened: list[MemoryStore] = []

    def index(fields: Sequence[str]) -> Index:
        if request.param == "qdrant local":
            client = QdrantClient(path=str(tmp_path / "vectors"))
            return QdrantIndex(
                client, collection, "content", fields, embedder=EMBEDDER, owns_client=True
            )
        if request.param == "chroma embedded":
            embedded = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
            return ChromaIndex(embedded, collection, "content", fields, embedder=EMBEDDER)
        server: ChromaServer = request.getfixturevalue("chroma_server")
        remote = chromadb.HttpClient(host="127.0.0.1", port=server.port)
        return ChromaIndex(remote, collection, "content", fields, embedder=EMBEDDER)

    def open_(fields: Sequence[str]) -> MemoryStore:
        for previous in opened:
            previous.close()
        mem = MemoryStore(SQLiteStorage(tmp_path / "facts.db"), [index(fields)])
        opened.append(mem)
        return mem

    yield open_
    for mem in opened:
        mem.close()


def found(mem: MemoryStore, **filters: object) -> list[str]:
    hits = mem.search("likes", k=10, filters={f"payload.{k}": v for k, v in filters.items()})
    return sorted(hit.fact["payload"]["content"] for hit in hits)


def test_verify_finds_points_written_before_a_field_was_added_and_repair_fills_it(
    reopen: Reopen,
) -> None:
    mem = reopen([])
    tea = mem.commit(Fact(type="note", payload={"content": "likes tea", "role": "drink"}))
    mem.commit(Fact(type="note", payload={"content": "likes nothing in particular"}))
    score = mem.commit(Fact(type="note", payload={"content": "likes maths", "score": 0.1}))
    assert mem.verify().clean

    mem = reopen(["role", "score"])
    mem.commit(Fact(type="note", payload={"content": "likes coffee", "role": "drink"}))
    assert found(mem, role="drink") == ["likes coffee"]  # tea is missed: its point lacks role
    report = mem.verify()
    assert not report.clean
    [drift] = report.derived.values()
    assert drift.stale == sorted([(tea, 1, 1), (score, 1, 1)])
    assert drift.missing == drift.extra == []

    mem.repair()
    assert mem.verify().clean
    assert found(mem, role="drink") == ["likes coffee", "likes tea"]
    assert found(mem, score=0.1) == ["likes maths"]
    contents = mem.indexes[0].contents()
    assert contents.committed[tea] == 1  # written again at its version, once
    assert contents.fields[tea] == {"role": "drink"}
    assert contents.pending == ()

    # A field taken out of the configuration is not drift: points may keep carrying it.
    mem = reopen([])
    assert mem.verify().clean
