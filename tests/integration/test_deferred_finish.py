"""Deferred finishing (``Policy.deferred_finish``): a commit costs each index one write,
searches stay exact, batches finish the work, and a failed batch loses nothing.

Every test reads the index's real points (``contents``, ``search``) and the decision log.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import chromadb
import pytest
from qdrant_client import QdrantClient

from chaos.servers import ChromaServer
from coordinator import Fact, FactRecord, MemoryStore, Policy, UpsertFact, new_txid
from coordinator.embeddings import HashingEmbedder
from coordinator.log import SQLiteDecisionLog
from participants.chroma import ChromaIndex
from participants.qdrant import QdrantIndex
from participants.sqlite import SQLiteStorage

EMBEDDER = HashingEmbedder(32)
NEVER = {"deferred_batch": 1000, "deferred_max_age": 1000.0}  # only flush() finishes
Opener = Callable[..., MemoryStore]


@pytest.fixture(params=["qdrant-local", "chroma-embedded"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    opened: list[MemoryStore] = []

    def opener(**policy: float) -> MemoryStore:
        if request.param == "qdrant-local":
            client = QdrantClient(path=str(tmp_path / "qdrant"))
            index: QdrantIndex | ChromaIndex = QdrantIndex(
                client, "notes", "content", embedder=EMBEDDER, owns_client=True
            )
        else:
            embedded = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
            index = ChromaIndex(embedded, "notes", "content", embedder=EMBEDDER)
        store = MemoryStore(
            SQLiteStorage(tmp_path / "facts.db"),
            [index],
            log=SQLiteDecisionLog(tmp_path / "decisions.db"),
            policy=Policy(deferred_finish=True, **policy),  # type: ignore[arg-type]
        )
        opened.append(store)
        return store

    yield opener
    for store in opened:
        store.close()


def note(text: str) -> Fact:
    return Fact(type="note", payload={"content": text})


def test_search_sees_deferred_commits_and_only_current_versions(open_store: Opener) -> None:
    mem = open_store(**NEVER)
    index = mem.indexes[0]
    tea = mem.commit(note("green tea"))
    coffee = mem.commit(note("black coffee"))
    mem.update(tea, {"payload": {"content": "mint tea"}})
    mem.delete(None, coffee)

    # Nothing finished yet: each commit left its points staged, replaced versions stay.
    contents = index.contents()
    assert contents.committed == {} and len(contents.pending) == 4
    raw = index.search(EMBEDDER.embed_query("green tea"), 10, {})
    assert {(h.fact_id, h.version) for h in raw} >= {(tea, 1), (tea, 2), (coffee, 1)}

    # Yet the memory API reads exactly what is committed (G3, G4).
    assert [(r.fact["id"], r.fact["version"]) for r in mem.search("tea", k=5)] == [(tea, 2)]
    assert mem.search("black coffee", score_threshold=0.5) == []
    assert mem.search("green tea", score_threshold=0.99) == []  # version 1's point is stale

    mem.flush()
    contents = index.contents()
    assert contents.committed == {tea: 2} and contents.pending == ()
    raw = index.search(EMBEDDER.embed_query("tea"), 10, {})
    assert [(h.fact_id, h.version, h.committed) for h in raw] == [(tea, 2, True)]
    assert mem.verify().clean


def test_a_batch_replacing_many_facts_leaves_only_their_current_versions(
    open_store: Opener,
) -> None:
    """One batch finishing updates of six facts (three of them twice) and a delete: every
    replaced version and the delete's marker are gone, the rest stays."""
    mem = open_store(**NEVER)
    index = mem.indexes[0]
    ids = [mem.commit(note(f"note {i}")) for i in range(6)]
    mem.flush()
    for fact_id in ids:
        mem.update(fact_id, {"payload": {"content": f"{fact_id} again"}})
    for fact_id in ids[:3]:
        mem.update(fact_id, {"payload": {"content": f"{fact_id} once more"}})
    mem.delete(None, ids[5])
    mem.flush()
    expected = {ids[0]: 3, ids[1]: 3, ids[2]: 3, ids[3]: 2, ids[4]: 2}
    assert index.contents().committed == expected and index.contents().pending == ()
    every_point = index.search(EMBEDDER.embed_query("note"), 100, {})
    assert sorted((h.fact_id, h.version) for h in every_point) == sorted(expected.items())
    assert mem.verify().clean


def test_a_point_staged_by_a_transaction_that_never_committed_is_not_read(
    open_store: Opener,
) -> None:
    mem = open_store(**NEVER)
    index = mem.indexes[0]
    fact_id = mem.commit(note("green tea"))
    # Another transaction staged version 2 in the index, then died before its storage
    # branch committed; a second transaction then commits version 2 for real (deferred).
    ghost = FactRecord(fact_id, "note", {"content": "poison"}, 2)
    vector = tuple(EMBEDDER.embed(["poison"])[0])
    index.prepare(new_txid(), [UpsertFact(ghost, 1, embedding=vector)])
    mem.update(fact_id, {"payload": {"content": "mint tea"}})

    # Same fact, same version, both points staged: only the committing txid's counts.
    assert mem.search("poison", score_threshold=0.9) == []
    [hit] = mem.search("mint tea", k=1)
    assert hit.fact["payload"]["content"] == "mint tea" and hit.score > 0.99


def test_a_full_batch_finishes_the_queue_in_the_commit_that_fills_it(open_store: Opener) -> None:
    mem = open_store(deferred_batch=3, deferred_max_age=1000.0)
    index = mem.indexes[0]
    first = [mem.commit(note(f"note {i}")) for i in range(2)]
    assert index.contents().committed == {} and len(index.contents().pending) == 2
    third = mem.commit(note("note 2"))
    assert index.contents().committed == dict.fromkeys([*first, third], 1)
    assert index.contents().pending == ()
    assert mem.coordinator.log.unended() == [], "the batch records END for what it finished"


def test_an_old_queue_is_finished_by_the_next_commit(open_store: Opener) -> None:
    mem = open_store(deferred_batch=1000, deferred_max_age=0.2)
    index = mem.indexes[0]
    first = mem.commit(note("note 0"))
    assert index.contents().pending != ()
    time.sleep(0.3)
    second = mem.commit(note("note 1"))
    assert index.contents().committed == {first: 1, second: 1}
    assert index.contents().pending == ()


def test_close_finishes_the_queue(open_store: Opener) -> None:
    mem = open_store(**NEVER)
    ids = [mem.commit(note(f"note {i}")) for i in range(5)]
    mem.close()
    again = open_store(**NEVER)
    contents = again.indexes[0].contents()
    assert contents.committed == dict.fromkeys(ids, 1) and contents.pending == ()
    assert again.coordinator.log.unended() == []


def test_a_failed_batch_stays_queued_and_keeps_its_commit(tmp_path: Path) -> None:
    server = ChromaServer(tmp_path / "chroma")
    server.start()
    log = SQLiteDecisionLog(tmp_path / "decisions.db")
    client = chromadb.HttpClient(host="127.0.0.1", port=server.port)
    index = ChromaIndex(client, "notes", "content", embedder=EMBEDDER)
    policy = Policy(deferred_finish=True, prepare_timeout=3, **NEVER)  # type: ignore[arg-type]
    mem = MemoryStore(SQLiteStorage(tmp_path / "facts.db"), [index], log=log, policy=policy)
    try:
        ids = [mem.commit(note(f"note {i}")) for i in range(3)]
        server.kill()
        mem.flush()  # fails (the server is down): logged, nothing raised, nothing lost
        assert len(log.unended()) == 3, "no END before the index has finished"
        assert {f["id"] for f in mem.query()} == set(ids)
        server.start()  # same data directory, same port
        mem.flush()  # the same work, retried
        contents = index.contents()
        assert contents.committed == dict.fromkeys(ids, 1) and contents.pending == ()
        assert log.unended() == []
        assert mem.verify().clean
    finally:
        mem.close()
        server.kill()
