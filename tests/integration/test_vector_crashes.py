"""Vector indexes through crashes: the Chroma server SIGKILLed between the phases, the
agent process SIGKILLed mid-commit with embedded indexes, and a reader beside 1,000 writes.
"""

from __future__ import annotations

import random
import threading
from dataclasses import replace
from pathlib import Path

import chromadb
import pytest
from qdrant_client import QdrantClient

from chaos.servers import ChromaServer
from coordinator import Fact, LockstepError, MemoryStore, Policy, TransactionAborted, new_txid
from coordinator.embeddings import HashingEmbedder
from coordinator.log import SQLiteDecisionLog
from participants.chroma import ChromaIndex
from participants.qdrant import QdrantIndex
from participants.sqlite import SQLiteStorage
from tests.support.crash import killed_agent, upsert

EMBEDDER = HashingEmbedder(32)
RECOVER_NOW = Policy(in_doubt_timeout=0.001, redrive_after=0, finish_attempts=2, prepare_timeout=5)


class Crash(BaseException):
    """The agent dies here."""


@pytest.mark.parametrize("kill_at", ["after_prepare:chroma:notes", "before_commit:chroma:notes"])
def test_a_chroma_server_killed_between_the_phases_is_finished_by_recovery(
    tmp_path: Path, kill_at: str
) -> None:
    server = ChromaServer(tmp_path / "chroma")
    server.start()
    try:
        storage = SQLiteStorage(tmp_path / "facts.db")

        def index() -> ChromaIndex:
            client = chromadb.HttpClient(host="127.0.0.1", port=server.port)
            return ChromaIndex(client, "notes", "content", embedder=EMBEDDER)

        def kill_server(point: str) -> None:
            if point == kill_at:
                server.kill()

        mem = MemoryStore(storage, [index()], policy=RECOVER_NOW, fault_hook=kill_server)
        kept = mem.commit(Fact(type="note", payload={"content": "before the crash"}))
        try:
            mem.commit(Fact(type="note", payload={"content": "during the crash"}))
        except TransactionAborted:
            pass  # killed before the decision: aborted (the server is gone, its branch too)
        assert server.process is None, f"the commit never reached {kill_at}"
        server.start()  # same data directory, same port
        healed = MemoryStore(storage, [index()], policy=RECOVER_NOW)
        report = healed.recover()
        assert report.clean, report
        verdict = healed.verify()
        assert verdict.clean, verdict
        facts = {f["payload"]["content"] for f in healed.query()}
        assert "before the crash" in facts
        assert healed.get(kept) is not None
    finally:
        server.kill()


def test_a_staged_write_landing_after_a_recovery_pass_is_aborted_by_the_next(
    tmp_path: Path,
) -> None:
    """A server carries out a request it received though its client has died, so a killed
    process's last upsert can reach the index after a pass listed what was staged. Here a
    second client stages it after the pass: searches never return it, verify lists it,
    and the next pass aborts it."""
    server = ChromaServer(tmp_path / "chroma")
    server.start()
    try:

        def index() -> ChromaIndex:
            client = chromadb.HttpClient(host="127.0.0.1", port=server.port)
            return ChromaIndex(client, "notes", "content", embedder=EMBEDDER)

        mem = MemoryStore(SQLiteStorage(tmp_path / "facts.db"), [index()], policy=RECOVER_NOW)
        kept = mem.commit(Fact(id="tea", type="note", payload={"content": "green tea"}))
        assert mem.recover().clean
        late = new_txid()  # the dead process's transaction: prepared, never decided
        coffee = tuple(EMBEDDER.embed_query("black coffee"))
        index().prepare(late, [replace(upsert(kept, 2, content="black coffee"), embedding=coffee)])

        hits = mem.search("black coffee", k=5)
        assert [(h.fact["id"], h.fact["payload"]["content"]) for h in hits] == [
            ("tea", "green tea")
        ]
        assert mem.verify().derived["chroma:notes"].pending == [late]
        report = mem.recover()
        assert report.aborted == (("chroma:notes", late),)
        assert mem.verify().clean
        assert mem.search("black coffee", k=5)[0].fact["payload"] == {"content": "green tea"}
    finally:
        server.kill()


AGENT = r"""
import os, sys
from pathlib import Path
import chromadb
from coordinator import Fact, MemoryStore, Policy
from coordinator.embeddings import HashingEmbedder
from coordinator.faults import hook_from_environment
from coordinator.log import SQLiteDecisionLog
from participants.chroma import ChromaIndex
from participants.sqlite import SQLiteStorage

d = Path(sys.argv[1])
index = ChromaIndex(chromadb.PersistentClient(path=str(d / "chroma")), "notes", "content",
                    embedder=HashingEmbedder(32))
policy = Policy(deferred_finish=True, deferred_batch=2) if os.environ.get("DEFERRED") else None
# Without a log the storage keeps it in its own file and commits last with the decision;
# a separate log file makes it prepare and commit like any participant.
log = SQLiteDecisionLog(d / "decisions.db") if os.environ.get("SEPARATE_LOG") else None
mem = MemoryStore(SQLiteStorage(d / "facts.db"), [index], log=log, policy=policy,
                  fault_hook=hook_from_environment())
for i in range(int(sys.argv[2])):
    fid = mem.commit(Fact(id=f"f{i % 4}", type="note", payload={"content": f"note {i}"}))
    print(fid, flush=True)
"""


def _kill_and_reopen(
    tmp_path: Path, script: list[str], kill_at: str, env: dict[str, str]
) -> tuple[set[str], MemoryStore, ChromaIndex]:
    """Run an agent script that is SIGKILLed at the fourth pass of ``kill_at``; reopen its
    stores (the log in the storage unless ``SEPARATE_LOG``), recover and check they agree.
    What it printed (the ids of the commits it saw return), the store and its index."""
    printed = killed_agent(kill_at, *script, **env)
    index = ChromaIndex(
        chromadb.PersistentClient(path=str(tmp_path / "chroma")),
        "notes",
        "content",
        embedder=EMBEDDER,
    )
    log = SQLiteDecisionLog(tmp_path / "decisions.db") if "SEPARATE_LOG" in env else None
    mem = MemoryStore(SQLiteStorage(tmp_path / "facts.db"), [index], log=log, policy=RECOVER_NOW)
    assert mem.recover().clean
    verdict = mem.verify()
    assert verdict.clean, verdict
    return printed, mem, index


@pytest.mark.parametrize(
    ("kill_at", "deferred", "separate_log"),
    [
        ("after_prepare:chroma:notes", False, False),
        ("before_decision", False, False),  # the storage commits last, with the decision
        ("after_decision", False, False),
        ("after_commit:chroma:notes", False, False),
        ("after_prepare:sqlite", False, True),  # a separate log: the storage prepares
        ("after_decision", False, True),
        ("after_commit:sqlite", False, True),
        # Deferred finishing: killed with index work queued, inside the batch, before END.
        ("after_decision", True, False),
        ("recovery_before_resolve:chroma:notes", True, False),
        ("recovery_after_resolve:chroma:notes", True, False),
    ],
)
def test_an_agent_killed_mid_commit_with_an_embedded_index_reopens_in_agreement(
    tmp_path: Path, kill_at: str, deferred: bool, separate_log: bool
) -> None:
    env = {"DEFERRED": "1"} if deferred else {}
    if separate_log:
        env["SEPARATE_LOG"] = "1"
    returned, mem, _ = _kill_and_reopen(tmp_path, [AGENT, str(tmp_path), "10"], kill_at, env)
    # G2: every commit the agent saw return survived its death.
    assert returned and returned <= {f["id"] for f in mem.query()}
    mem.close()


ROLLBACK_AGENT = r"""
import os, sys
from pathlib import Path
import chromadb
from coordinator import Fact, MemoryStore, Policy
from coordinator.embeddings import HashingEmbedder
from coordinator.faults import hook_from_environment
from participants.chroma import ChromaIndex
from participants.sqlite import SQLiteStorage

d = Path(sys.argv[1])
index = ChromaIndex(chromadb.PersistentClient(path=str(d / "chroma")), "notes", "content",
                    embedder=HashingEmbedder(32))
policy = Policy(deferred_finish=True, deferred_batch=2) if os.environ.get("DEFERRED") else None
mem = MemoryStore(SQLiteStorage(d / "facts.db"), [index], policy=policy,
                  fault_hook=hook_from_environment())
mem.commit(Fact(id="a", type="note", payload={"content": "green tea"}), session_id="s")
mem.commit(Fact(id="b", type="note", payload={"content": "black coffee"}), session_id="s")
with mem.transaction(session_id="s") as tx:
    tx.update("a", {"payload": {"content": "oolong"}})
    tx.delete("b")
mem.rollback(1, "s")  # the fourth transaction: the one the agent dies in
"""


@pytest.mark.parametrize(
    ("kill_at", "deferred", "undone"),
    [
        ("after_prepare:chroma:notes", False, False),
        ("before_decision", False, False),
        ("after_decision", False, True),
        ("after_commit:chroma:notes", False, True),
        ("after_decision", True, True),
    ],
)
def test_an_agent_killed_mid_rollback_reopens_with_all_of_it_or_none(
    tmp_path: Path, kill_at: str, deferred: bool, undone: bool
) -> None:
    """The rollback restores one fact's older version and re-creates a deleted one; killed
    before its decision none of it lands, after it all of it does, in both stores."""
    env = {"DEFERRED": "1"} if deferred else {}
    _, mem, index = _kill_and_reopen(tmp_path, [ROLLBACK_AGENT, str(tmp_path)], kill_at, env)
    contents = {f["id"]: f["payload"]["content"] for f in mem.query()}
    hits = {h.fact["id"]: h.fact["payload"]["content"] for h in mem.search("tea", k=5)}
    committed = index.contents().committed
    if undone:
        assert contents == {"a": "green tea", "b": "black coffee"}
        assert hits == contents
        assert committed == {"a": 3, "b": 3}  # restored as new versions; nothing erased
    else:
        assert contents == {"a": "oolong"}
        assert hits == contents
        assert committed == {"a": 2}
    mem.close()


@pytest.mark.parametrize("deferred", [False, True])
def test_a_reader_beside_1000_writes_sees_only_committed_current_versions(
    tmp_path: Path, deferred: bool
) -> None:
    index = QdrantIndex(QdrantClient(":memory:"), "notes", "content", embedder=EMBEDDER)
    policy = Policy(deferred_finish=deferred, deferred_batch=16)
    mem = MemoryStore(SQLiteStorage(tmp_path / "facts.db"), [index], policy=policy)
    original = index.prepare
    rng = random.Random(7)

    def flaky(txid, writes):
        if rng.random() < 0.15:
            raise ConnectionError("injected vector store failure")
        return original(txid, writes)

    index.prepare = flaky  # type: ignore[method-assign]
    done = threading.Event()
    problems: list[str] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not done.is_set():
            results = mem.search("note about tea", k=10)
            ids = [r.fact["id"] for r in results]
            if len(ids) != len(set(ids)):
                problems.append(f"duplicated fact in {ids}")
            for r in results:
                committed = {(h["version"], h["txid"]) for h in mem.history(r.fact["id"])}
                if (r.fact["version"], r.fact["txid"]) not in committed:
                    problems.append(f"uncommitted version {r.fact}")
            reads += 1

    thread = threading.Thread(target=reader)
    thread.start()
    aborted = 0
    try:
        for i in range(1000):
            fact_id = f"f{i % 25}"
            try:
                if i % 7 == 3 and mem.get(fact_id) is not None:
                    mem.delete(None, fact_id)
                else:
                    mem.commit(
                        Fact(id=fact_id, type="note", payload={"content": f"note {i} about tea"})
                    )
            except LockstepError:
                aborted += 1
    finally:
        done.set()
        thread.join()
    assert problems == []
    assert reads > 10 and aborted > 50
    assert mem.verify().clean
    mem.close()
