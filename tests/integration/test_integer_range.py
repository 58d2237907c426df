"""Integers in payloads and filters: the signed 64-bit range, kept exactly by every store.

Beyond it the stores disagreed: Chroma kept ``2**63`` as the float ``9.223372036854776e18``
(so a search filter on it matched its neighbours too), SQLite's JSON compared it as a
float (``query`` for ``-2**63`` also found ``-2**63 - 1``), and a ``query`` filter on
``10**30`` raised a bare ``OverflowError`` from SQLite. The memory API refuses such an
int, naming where, before any store sees it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from qdrant_client import QdrantClient

from coordinator import Fact, MemoryStore, UsageError
from coordinator.embeddings import HashingEmbedder
from participants.qdrant import QdrantIndex
from participants.sqlite import SQLiteStorage
from tests.support.servers import postgres_redis_chroma

EMBEDDER = HashingEmbedder(16)
INSIDE = [2**63 - 1, -(2**63), 2**53 + 1, 0]
OUTSIDE = [2**63, -(2**63) - 1, 10**30]


def embedded(tmp_path: Path) -> MemoryStore:
    client = QdrantClient(path=str(tmp_path / "vectors"))
    index = QdrantIndex(
        client, "notes", "content", metadata_fields=["n"], embedder=EMBEDDER, owns_client=True
    )
    return MemoryStore(SQLiteStorage(tmp_path / "facts.db"), [index])


@pytest.fixture(params=["sqlite + qdrant local", "postgres + redis + chroma server"])
def mem(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MemoryStore]:
    if request.param.startswith("sqlite"):
        store = embedded(tmp_path)
    else:
        store = postgres_redis_chroma(request, EMBEDDER, metadata_fields=["n"])
    yield store
    store.close()


def test_the_bounds_are_kept_and_found_exactly(mem: MemoryStore) -> None:
    ids = {
        n: mem.commit(Fact(type="note", payload={"content": f"n is {n}", "n": n})) for n in INSIDE
    }
    for n, fid in ids.items():
        assert mem.get(fid)["payload"]["n"] == n  # type: ignore[index]
        assert [f["id"] for f in mem.query(filters={"payload.n": n})] == [fid]
        found = mem.search("n is", k=10, filters={"payload.n": n})
        assert [hit.fact["id"] for hit in found] == [fid]
    for mirror in mem.mirrors:
        assert {f.payload["n"] for f in mirror.all_facts()} == set(INSIDE)
    assert mem.verify().clean


@pytest.mark.parametrize("n", OUTSIDE)
def test_an_int_outside_64_bits_is_refused_everywhere_alike(mem: MemoryStore, n: int) -> None:
    kept = mem.commit(Fact(type="note", payload={"content": "kept", "n": 1}))
    attempts: list[Callable[[], object]] = [
        lambda: mem.commit(Fact(type="note", payload={"content": "big", "n": n})),
        lambda: mem.commit(Fact(type="note", payload={"content": "deep", "a": [{"b": n}]})),
        lambda: mem.update(kept, {"payload": {"n": n}}),
        lambda: mem.query(filters={"payload.n": n}),
        lambda: mem.search("kept", filters={"payload.n": n}),
    ]
    for attempt in attempts:
        with pytest.raises(UsageError, match=rf"{n}.* outside the signed 64-bit range"):
            attempt()
    assert [f.id for f in mem.storage.all_facts()] == [kept]
    assert mem.get(kept)["payload"] == {"content": "kept", "n": 1}  # type: ignore[index]
    assert mem.indexes[0].contents().committed == {kept: 1}
    assert mem.verify().clean


def test_a_long_number_in_text_is_not_mistaken_for_one(tmp_path: Path) -> None:
    mem = embedded(tmp_path)
    text = "order 123456789012345678901234567890 shipped"  # digits, but a str
    fid = mem.commit(Fact(type="note", payload={"content": text, "n": 10**18}))
    assert mem.get(fid)["payload"] == {"content": text, "n": 10**18}  # type: ignore[index]
    mem.close()
