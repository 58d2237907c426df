"""Several agent processes writing the same facts through the engine (SQLite stores).

Each process increments a counter fact many times, reading its version and committing
version + 1 across two SQLite stores; a VersionConflict is retried on fresh data. No
increment may be lost, and both stores must end identical. And a store opened in one
process is refused in a process forked from it, without harm to the parent.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time
from multiprocessing.queues import Queue
from pathlib import Path

from coordinator import Fact, MemoryStore, UsageError
from coordinator.embeddings import HashingEmbedder
from participants.sqlite import SQLiteStorage
from tests.support.processes import open_from_another_process

WRITER = r"""
import sys, time
from pathlib import Path
from coordinator import Coordinator, FactRecord, UpsertFact, VersionConflict, TransactionAborted
from coordinator.log import SQLiteDecisionLog
from participants.sqlite import SQLiteStorage

d = Path(sys.argv[1]); me = sys.argv[2]; increments = int(sys.argv[3])
facts = SQLiteStorage(d / "facts.db", name="facts")
index = SQLiteStorage(d / "index.db", name="index")
coord = Coordinator([facts, index], SQLiteDecisionLog(d / "log.db"))
(d / f"ready-{me}").touch()
while not (d / "go").exists():  # start together, so that the writers really contend
    time.sleep(0.001)
done = retries = 0
while done < increments:
    current = facts.get("counter")
    version = 0 if current is None else current.version
    count = 0 if current is None else current.payload["count"]
    record = FactRecord("counter", "counter", {"count": count + 1, "by": me}, version + 1)
    try:
        coord.commit({"facts": [UpsertFact(record, version)], "index": [UpsertFact(record, version)]})
        done += 1
    except (VersionConflict, TransactionAborted):
        retries += 1
print(retries)
"""


def test_concurrent_processes_lose_no_update(tmp_path: Path) -> None:
    processes, increments = 4, 40
    SQLiteStorage(tmp_path / "facts.db", name="facts").close()
    SQLiteStorage(tmp_path / "index.db", name="index").close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), f"p{i}", str(increments)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready-*"))) < processes and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()
    retries = [int(p.communicate(timeout=240)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    facts = SQLiteStorage(tmp_path / "facts.db", name="facts")
    index = SQLiteStorage(tmp_path / "index.db", name="index")
    counter = facts.get("counter")
    assert counter is not None
    assert counter.payload["count"] == processes * increments
    assert counter.version == processes * increments
    assert index.get("counter") == counter
    assert facts.recover() == [] and index.recover() == []
    assert sum(retries) > 0, "the writers never contended; the test proves nothing"


def _use_in_a_forked_child(mem: MemoryStore, answers: Queue[str]) -> None:
    for attempt in (
        lambda: mem.commit(Fact(type="note", payload={"content": "from the child"})),
        lambda: mem.search("anything", k=1),
    ):
        try:
            attempt()
            answers.put("used")
        except UsageError as exc:
            answers.put(str(exc))
    mem.close()  # the parent's connections and locks: left alone
    answers.put("closed")


def test_a_store_used_in_a_forked_child_is_refused_and_the_parent_goes_on(
    tmp_path: Path,
) -> None:
    """A ``multiprocessing`` worker forked after the store was opened inherits its SQLite
    connections, the Qdrant local-mode lock and no worker threads: using them there can
    corrupt the files or hang. Every call in the child is refused with a clear error, its
    ``close()`` touches nothing of the parent's, and the parent's store goes on."""
    mem = MemoryStore.open(tmp_path / "memory", embedder=HashingEmbedder(16))
    first = mem.commit(Fact(type="note", payload={"content": "from the parent"}))
    fork = multiprocessing.get_context("fork")
    answers: Queue[str] = fork.Queue()
    child = fork.Process(target=_use_in_a_forked_child, args=(mem, answers))
    child.start()
    said = [answers.get(timeout=60) for _ in range(3)]
    child.join(timeout=60)
    assert child.exitcode == 0
    assert all("is a fork of it" in answer for answer in said[:2]), said
    assert said[2] == "closed"
    # The child's close() left the parent's lock on the vectors: another process is still
    # refused (closing the inherited client in the child used to release it).
    assert "is open in another client" in open_from_another_process(tmp_path / "memory")

    second = mem.commit(Fact(type="note", payload={"content": "the parent again"}))
    assert {f["id"] for f in mem.query(typename="note")} == {first, second}
    assert mem.verify().clean
    mem.close()
    again = MemoryStore.open(tmp_path / "memory", embedder=HashingEmbedder(16))
    assert {f["payload"]["content"] for f in again.query()} == {
        "from the parent",
        "the parent again",
    }
    again.close()
