"""Qdrant Edge (``qdrant+edge://``): Qdrant's engine inside the process, as a memory
store's index, through the memory API, agent crashes, a second client and both APIs.
The index contract runs on it too (``tests/contract/test_index_contract.py``)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from qdrant_client import models

from coordinator import (
    AsyncMemoryStore,
    ConfigurationError,
    Fact,
    FactRecord,
    MemoryStore,
    ParticipantError,
    Policy,
    UpsertFact,
    UsageError,
    new_txid,
)
from coordinator.embeddings import HashingEmbedder
from coordinator.plugins import open_participant
from coordinator.settings import LockstepSettings
from participants.qdrant import AsyncQdrantIndex, QdrantIndex
from participants.qdrant import _edge as edge_module
from participants.qdrant._edge import EdgeClient
from participants.sqlite import AsyncSQLiteStorage, SQLiteStorage
from tests.support.crash import killed_agent

EMBEDDER = HashingEmbedder(32)
RECOVER_NOW = Policy(in_doubt_timeout=0.001, redrive_after=0, finish_attempts=2, prepare_timeout=5)


def _index(directory: Path) -> QdrantIndex:
    return QdrantIndex(
        EdgeClient(directory / "edge"), "notes", "content", embedder=EMBEDDER, owns_client=True
    )


def test_a_memory_store_on_an_edge_url_commits_updates_deletes_and_searches(
    tmp_path: Path,
) -> None:
    url = f"qdrant+edge:///{tmp_path / 'edge'}?collection=notes&text_field=content"
    index = open_participant(url, embedder=EMBEDDER)
    assert isinstance(index, QdrantIndex)
    mem = MemoryStore(SQLiteStorage(tmp_path / "facts.db"), [index])
    tea = mem.commit(Fact(type="note", payload={"content": "green tea"}), "s")
    coffee = mem.commit(Fact(type="note", payload={"content": "black coffee"}), "s")
    mem.update(tea, {"payload": {"content": "green tea with mint"}})
    mem.delete("s", coffee)
    hits = mem.search("green tea", k=5)
    assert [h.fact["payload"]["content"] for h in hits] == ["green tea with mint"]
    assert index.contents().committed == {tea: 2}  # the older version and the delete: gone
    assert mem.verify().clean
    mem.close()
    # Reopened, as a new process would: the same points, from the shard's files.
    again = open_participant(url, embedder=EMBEDDER)
    assert isinstance(again, QdrantIndex)
    assert again.contents().committed == {tea: 2}
    again.close()


def test_a_relative_edge_url_stays_in_its_directory_when_the_program_changes_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``qdrant+edge:///edge`` is ./edge when the store is opened. The shard opens at its
    first use; a program that changed directory in between had its commits refused (the
    shard's files sought under the new directory)."""
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    opened = open_participant("qdrant+edge:///edge?collection=notes", embedder=EMBEDDER)
    assert isinstance(opened, QdrantIndex)
    mem = MemoryStore(SQLiteStorage("facts.db"), [opened])
    monkeypatch.chdir(tmp_path / "elsewhere")
    fid = mem.commit(Fact(type="note", payload={"content": "kept where it was opened"}))
    assert mem.verify().clean
    mem.close()
    assert list((tmp_path / "elsewhere").iterdir()) == []
    index = _index(tmp_path)
    assert index.contents().committed == {fid: 1}
    index.close()


def test_a_second_client_of_an_open_collection_is_refused_until_the_first_closes(
    tmp_path: Path,
) -> None:
    first = _index(tmp_path)
    assert first.recover() == []
    second = _index(tmp_path)
    with pytest.raises(ParticipantError, match="open in another client"):
        second.recover()
    second.close()
    first.close()
    third = _index(tmp_path)
    assert third.recover() == []
    third.close()


def test_points_lost_below_lockstep_are_found_by_verify_and_written_again_by_repair(
    tmp_path: Path,
) -> None:
    """What a power cut can take from an index opened with ``durable=0``: points gone
    from the shard while the storage holds their facts."""
    mem = MemoryStore(SQLiteStorage(tmp_path / "facts.db"), [_index(tmp_path)])
    ids = [mem.commit(Fact(type="note", payload={"content": f"note {i}"})) for i in range(5)]
    mem.close()
    client = EdgeClient(tmp_path / "edge")
    points, _ = client.scroll("notes", limit=10)
    lost: list[models.ExtendedPointId] = [
        p.id for p in points if (p.payload or {})["fact_id"] in ids[:2]
    ]
    client.delete("notes", models.PointIdsList(points=lost))
    client.sync_log("notes")
    client.close()
    index = _index(tmp_path)
    mem = MemoryStore(SQLiteStorage(tmp_path / "facts.db"), [index])
    assert sorted(mem.verify().derived["qdrant:notes"].missing) == sorted(ids[:2])
    mem.repair()
    assert mem.verify().clean
    assert index.contents().committed == dict.fromkeys(ids, 1)
    assert {h.fact["id"] for h in mem.search("note", k=10)} == set(ids)
    mem.close()


@pytest.mark.parametrize("durable", [True, False])
def test_a_prepare_and_a_commit_each_sync_the_write_ahead_log_unless_told_not_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool
) -> None:
    """Synced before they return: the prepare (its point must outlive a power cut once it
    voted yes) and the commit (before the coordinator records the end)."""
    url = f"qdrant+edge:///{tmp_path / 'edge'}?collection=notes&durable={int(durable)}"
    index = open_participant(url, embedder=EMBEDDER)
    assert isinstance(index, QdrantIndex)
    assert index.recover() == []  # the collection is made
    synced: list[str] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    record = FactRecord("a", "note", {"content": "green tea"}, 1)
    embedding = tuple(EMBEDDER.embed(["green tea"])[0])
    txid = new_txid()
    index.prepare(txid, [UpsertFact(record, 0, embedding=embedding)])
    prepared, synced[:] = list(synced), []
    index.commit(txid)
    committed = list(synced)
    wal = str(tmp_path / "edge" / "notes" / "shard" / "wal") + "/"
    if durable:
        for calls in (prepared, committed):
            assert calls and all(path.startswith(wal) for path in calls), calls
    else:
        assert prepared == committed == []
    assert index.contents().committed == {"a": 1}
    index.close()


AGENT = r"""
import os, sys
from pathlib import Path
from coordinator import Fact, MemoryStore, Policy
from coordinator.embeddings import HashingEmbedder
from coordinator.faults import hook_from_environment
from participants.qdrant import AsyncQdrantIndex, QdrantIndex
from participants.qdrant._edge import EdgeClient
from participants.sqlite import AsyncSQLiteStorage, SQLiteStorage

d = Path(sys.argv[1])
index = QdrantIndex(EdgeClient(d / "edge"), "notes", "content",
                    embedder=HashingEmbedder(32), owns_client=True)
policy = Policy(deferred_finish=True, deferred_batch=2) if os.environ.get("DEFERRED") else None
mem = MemoryStore(SQLiteStorage(d / "facts.db"), [index], policy=policy,
                  fault_hook=hook_from_environment())
for i in range(int(sys.argv[2])):
    fid = mem.commit(Fact(id=f"f{i % 4}", type="note", payload={"content": f"note {i}"}))
    print(fid, flush=True)
"""


def _check_agreement(mem: MemoryStore, returned: set[str], query: str) -> None:
    """The stores agree, nothing is left staged, and every commit the dead agent saw
    return is there (G2); a search finds every fact once, at its stored version; closes
    ``mem``."""
    verdict = mem.verify()
    assert verdict.clean, verdict
    stored = {f["id"]: f["payload"]["content"] for f in mem.query()}
    assert returned <= set(stored)
    hits = mem.search(query, k=10)
    assert {h.fact["id"]: h.fact["payload"]["content"] for h in hits} == stored
    assert len(hits) == len(stored)
    mem.close()


def _reopen_and_check(tmp_path: Path, returned: set[str]) -> None:
    """Reopen the dead agent's stores, recover, and check what they hold."""
    mem = MemoryStore(SQLiteStorage(tmp_path / "facts.db"), [_index(tmp_path)], policy=RECOVER_NOW)
    assert mem.recover().clean
    _check_agreement(mem, returned, "note")


@pytest.mark.parametrize(
    ("kill_at", "deferred"),
    [
        ("after_prepare:qdrant:notes", False),
        ("before_decision", False),  # the storage commits last, with the decision
        ("after_decision", False),
        ("after_commit:qdrant:notes", False),
        ("after_decision", True),
        ("recovery_before_resolve:qdrant:notes", True),
    ],
)
def test_an_agent_killed_at_a_named_point_reopens_in_agreement(
    tmp_path: Path, kill_at: str, deferred: bool
) -> None:
    env = {"DEFERRED": "1"} if deferred else {}
    returned = killed_agent(kill_at, AGENT, str(tmp_path), "10", **env)
    assert returned
    _reopen_and_check(tmp_path, returned)


def test_an_agent_killed_at_random_moments_reopens_in_agreement(tmp_path: Path) -> None:
    """SIGKILL from outside while the agent commits, three times over the same stores."""
    rng = random.Random(7)
    for run in range(3):
        agent = subprocess.Popen(
            [sys.executable, "-c", AGENT, str(tmp_path), "100000"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert agent.stdout is not None
        first = agent.stdout.readline()  # it has opened the stores and committed once
        assert first, f"run {run}: the agent died before its first commit"
        time.sleep(rng.uniform(0.0, 0.3))
        agent.send_signal(signal.SIGKILL)
        rest, _ = agent.communicate(timeout=60)
        assert agent.returncode == -signal.SIGKILL
        _reopen_and_check(tmp_path, {first.strip(), *rest.split()})


def test_an_async_memory_store_on_edge_lands_racing_commits(tmp_path: Path) -> None:
    async def main() -> None:
        url = f"qdrant+edge:///{tmp_path / 'edge'}?collection=notes&text_field=content"
        index = open_participant(url, asynchronous=True, embedder=EMBEDDER)
        assert isinstance(index, AsyncQdrantIndex)
        mem = AsyncMemoryStore(AsyncSQLiteStorage(tmp_path / "facts.db"), [index])
        ids: list[str] = []

        async def writer(w: int) -> None:
            for i in range(10):
                fact = Fact(type="note", payload={"content": f"writer {w} note {i}"})
                ids.append(await mem.commit(fact))

        async with anyio.create_task_group() as group:
            for w in range(8):
                group.start_soon(writer, w)
        contents = await index.contents()
        assert contents.committed == dict.fromkeys(ids, 1) and len(ids) == 80
        assert contents.pending == ()
        hits = await mem.search("writer 3 note 7", k=1)
        assert hits[0].fact["payload"]["content"] == "writer 3 note 7"
        assert (await mem.verify()).clean
        await mem.close()

    anyio.run(main)


def test_the_write_ahead_log_stays_bounded_as_writes_go_on(tmp_path: Path) -> None:
    """Edge drops the log's segments only once their writes are in flushed segments, and
    flushes only when told: the client flushes every FLUSH_EVERY writes. 30,000 writes of
    2,048 dimensions fill five 32 MB log segments; unflushed, all five stayed."""
    dim = 2048
    client = EdgeClient(tmp_path / "edge", durable=False)
    client.create_collection("big", models.VectorParams(size=dim, distance=models.Distance.COSINE))
    points = [
        models.PointStruct(id=str(uuid.uuid4()), vector=[0.5] * dim, payload={"i": i})
        for i in range(100)
    ]
    for i in range(30_000):
        client.upsert("big", [points[i % 100]])
    wal = tmp_path / "edge" / "big" / "shard" / "wal"
    closed = [name for name in os.listdir(wal) if name.startswith("closed-")]
    used = sum(os.stat(wal / name).st_blocks * 512 for name in os.listdir(wal))
    assert len(closed) <= 1, sorted(os.listdir(wal))
    assert used < 100 * 2**20, used
    client.close()


def test_a_log_file_renamed_during_a_sync_is_synced_under_its_new_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Edge renames its log files from a thread of its own (``tmp-open-N`` to ``open-N``
    once made ready, ``open-N`` to ``closed-M`` once full): a file listed may be gone when
    the sync opens it. The sync lists the log again; it failed the commit before."""
    client = EdgeClient(tmp_path / "edge")
    client.create_collection("c", models.VectorParams(size=4, distance=models.Distance.COSINE))
    wal = tmp_path / "edge" / "c" / "shard" / "wal"
    real = edge_module._sync_file
    synced: list[str] = []
    renamed = False

    def sync_file(path: Path, sync: Any) -> None:
        nonlocal renamed
        if not renamed:  # the first file opened has just been renamed
            renamed = True
            raise FileNotFoundError(path)
        synced.append(path.name)
        real(path, sync)

    monkeypatch.setattr(edge_module, "_sync_file", sync_file)
    client.upsert("c", [models.PointStruct(id=str(uuid.uuid4()), vector=[0.1, 0.2, 0.3, 0.4])])
    assert set(os.listdir(wal)) <= set(synced)  # every log file, after listing them again
    client.close()


def test_racing_writers_share_a_log_sync_that_began_after_their_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group commit of log syncs: while one writer's sync is on the disk, seven others
    write and wait; then one sync covers all seven. None may return on the sync that was
    already running (it began before their writes), and none syncs again for itself."""
    client = EdgeClient(tmp_path / "edge")
    client.create_collection("c", models.VectorParams(size=4, distance=models.Distance.COSINE))
    shard = client._shards["c"]
    syncs_before = shard.syncs
    on_disk, release = threading.Event(), threading.Event()
    real = edge_module._sync_file

    def sync_file(path: Path, sync: Any) -> None:
        if not on_disk.is_set():  # the first writer's sync stays on the disk until released
            on_disk.set()
            assert release.wait(30)
        real(path, sync)

    monkeypatch.setattr(edge_module, "_sync_file", sync_file)

    def write(i: int) -> None:
        client.upsert("c", [models.PointStruct(id=str(uuid.uuid4()), vector=[0.1, 0.2, 0.3, i])])

    first = threading.Thread(target=write, args=(0,))
    first.start()
    assert on_disk.wait(30)
    written_before = shard._written
    others = [threading.Thread(target=write, args=(i,)) for i in range(1, 8)]
    for thread in others:
        thread.start()
    deadline = time.monotonic() + 30
    while shard._written < written_before + 7:  # every other writer's point is written
        assert time.monotonic() < deadline
        time.sleep(0.001)
    assert all(thread.is_alive() for thread in others)  # each waits for a sync
    release.set()
    for thread in [first, *others]:
        thread.join(30)
    assert shard.syncs - syncs_before == 2  # the first writer's, then one for the seven
    assert shard._synced == shard._written == written_before + 7
    points, _ = client.scroll("c", limit=100)
    assert len(points) == 8
    client.close()


# -- the embedded default on Qdrant Edge ---------------------------------------------------


def _notes(mem: MemoryStore) -> dict[str, str]:
    return {h.fact["id"]: h.fact["payload"]["content"] for h in mem.search("tea", k=10)}


def test_the_embedded_default_on_edge_keeps_its_engine_when_opened_again(
    tmp_path: Path,
) -> None:
    mem = MemoryStore.open(tmp_path, embedder=EMBEDDER, index="qdrant+edge")
    green = mem.commit(Fact(type="note", payload={"content": "green tea"}), "s")
    black = mem.commit(Fact(type="note", payload={"content": "black tea"}), "s")
    mem.delete("s", black)
    mem.close()
    assert (tmp_path / "edge" / "memories" / "shard").is_dir()
    assert not (tmp_path / "vectors").exists()
    mem = MemoryStore.open(tmp_path, embedder=EMBEDDER)  # the directory's engine: Edge
    assert isinstance(mem.indexes[0], QdrantIndex)
    assert isinstance(mem.indexes[0]._client, EdgeClient)
    assert _notes(mem) == {green: "green tea"}
    mem.close()
    settings = LockstepSettings(path=str(tmp_path), embedder="hashing:32")
    mem = MemoryStore.from_settings(settings)  # as the CLI and the daemon open it
    assert _notes(mem) == {green: "green tea"}
    assert mem.verify().clean
    mem.close()
    assert not (tmp_path / "vectors").exists()


def test_an_embedded_edge_store_open_elsewhere_is_refused_at_opening(tmp_path: Path) -> None:
    """Edge locks a shard when it loads it; opening loads it at once, so a second store
    stops there (as with local mode), not at its first commit."""
    first = MemoryStore.open(tmp_path, embedder=EMBEDDER, index="qdrant+edge")
    with pytest.raises(ParticipantError, match="open in another client"):
        MemoryStore.open(tmp_path, embedder=EMBEDDER)
    first.commit(Fact(type="note", payload={"content": "green tea"}), "s")
    first.close()
    again = MemoryStore.open(tmp_path, embedder=EMBEDDER)
    assert list(_notes(again).values()) == ["green tea"]
    again.close()


def test_a_directory_of_one_engine_refuses_the_other_until_moved_and_repaired(
    tmp_path: Path,
) -> None:
    mem = MemoryStore.open(tmp_path, embedder=EMBEDDER)  # Qdrant local mode
    ids = [mem.commit(Fact(type="note", payload={"content": f"tea {i}"}), "s") for i in range(3)]
    mem.close()
    with pytest.raises(ConfigurationError, match=r"vectors in qdrant\+local .*verify --repair"):
        MemoryStore.open(tmp_path, embedder=EMBEDDER, index="qdrant+edge")
    assert not (tmp_path / "edge").exists()  # nothing made
    with pytest.raises(UsageError, match="one of"):
        MemoryStore.open(tmp_path, embedder=EMBEDDER, index="chroma+local")
    (tmp_path / "vectors").rename(tmp_path / "vectors.old")
    mem = MemoryStore.open(tmp_path, embedder=EMBEDDER, index="qdrant+edge")
    assert set(mem.verify().derived["vectors"].missing) == set(ids)
    assert set(mem.repair().derived["vectors"].missing) == set(ids)  # what it repaired
    assert mem.verify().clean
    assert set(_notes(mem)) == set(ids)
    mem.close()
    (tmp_path / "vectors.old").rename(tmp_path / "vectors")
    with pytest.raises(ConfigurationError, match="both"):
        MemoryStore.open(tmp_path, embedder=EMBEDDER)
    mem = MemoryStore.open(tmp_path, embedder=EMBEDDER, index="qdrant+edge")
    assert set(_notes(mem)) == set(ids)
    mem.close()
    with pytest.raises(ConfigurationError, match="embedded_index"):
        MemoryStore.from_settings(
            LockstepSettings(
                storage=f"sqlite:///{tmp_path / 'facts.db'}", embedded_index="qdrant+edge"
            )
        )


def test_the_async_embedded_default_opens_on_edge_and_finds_it_again(tmp_path: Path) -> None:
    async def main() -> None:
        mem = await AsyncMemoryStore.open(tmp_path, embedder=EMBEDDER, index="qdrant+edge")
        green = await mem.commit(Fact(type="note", payload={"content": "green tea"}), "s")
        await mem.close()
        mem = await AsyncMemoryStore.open(tmp_path, embedder=EMBEDDER)
        hits = await mem.search("tea", k=5)
        assert [h.fact["id"] for h in hits] == [green]
        await mem.close()

    anyio.run(main)
    assert (tmp_path / "edge").is_dir() and not (tmp_path / "vectors").exists()


EMBEDDED_AGENT = r"""
import sys
from coordinator import Fact, MemoryStore
from coordinator.embeddings import HashingEmbedder
from coordinator.faults import hook_from_environment

mem = MemoryStore.open(sys.argv[1], embedder=HashingEmbedder(32), index="qdrant+edge",
                       fault_hook=hook_from_environment())
for i in range(10):
    print(mem.commit(Fact(id=f"f{i % 3}", type="note", payload={"content": f"tea {i}"})),
          flush=True)
"""


@pytest.mark.parametrize("kill_at", ["after_prepare:vectors", "after_decision"])
def test_an_embedded_edge_agent_killed_mid_commit_is_settled_by_the_next_open(
    tmp_path: Path, kill_at: str
) -> None:
    """Edge locks the store's files to one process, so the next ``open()`` settles what
    a killed one left in doubt at once, without waiting out the in-doubt timeout."""
    returned = killed_agent(kill_at, EMBEDDED_AGENT, str(tmp_path))
    assert returned
    # No recovery called here: open()'s own pass must leave nothing staged.
    _check_agreement(MemoryStore.open(tmp_path, embedder=EMBEDDER), returned, "tea")
