"""The memory API end to end on real stores: SQLite facts and a Qdrant local-mode index.

Each test reads what the storage and the index really hold (``snapshot``), so "nothing
changed" and "everything changed" are checked on the stores, not on return values.
"""

from __future__ import annotations

import gc
import logging
import math
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from qdrant_client import QdrantClient

from coordinator import (
    Constraint,
    Fact,
    ImmutableViolation,
    MemoryStore,
    ParticipantError,
    TransactionAborted,
    UsageError,
    ValidationFailed,
    VersionConflict,
)
from coordinator.embeddings import HashingEmbedder
from coordinator.memory._model import MAX_DEPTH
from coordinator.records import FactRecord, JSONValue, UpsertFact
from participants.qdrant import QdrantIndex
from participants.sqlite import SQLiteStorage
from tests.support.processes import open_from_another_process


class UserPref(BaseModel):
    content: str
    role: str


class AuditEntry(BaseModel):
    content: str


class Unregistered(BaseModel):
    x: int


@pytest.fixture
def mem(tmp_path: Path) -> Iterator[MemoryStore]:
    index = QdrantIndex(
        QdrantClient(path=str(tmp_path / "vectors")),
        "memories",
        text_field="content",
        metadata_fields=["role"],
        embedder=HashingEmbedder(64),
        owns_client=True,
    )
    store = MemoryStore(SQLiteStorage(tmp_path / "facts.db"), hooks=[index])
    store.register_schema("preference", UserPref, constraint=Constraint(singleton_key="role"))
    store.register_schema("audit", AuditEntry, constraint=Constraint(immutable=True))
    yield store
    store.close()


def snapshot(mem: MemoryStore) -> tuple[object, ...]:
    """Everything the stores hold: facts, history, and the index's committed points."""
    facts = mem.storage.all_facts()
    history = [mem.storage.history(f.id) for f in facts]
    contents = mem.indexes[0].contents()
    return facts, history, dict(contents.committed), contents.pending, mem.storage.recover()


def test_a_commit_lands_in_the_storage_and_the_index(mem: MemoryStore) -> None:
    fid = mem.commit_model(UserPref(content="vegetarian", role="diet"), session_id="s1")
    fact = mem.get(fid)
    assert fact is not None and (fact["version"], fact["session_id"]) == (1, "s1")
    assert mem.indexes[0].contents().committed == {fid: 1}
    mem.update(fid, {"payload": {"content": "vegan"}}, actor="agent", reason="user said so")
    assert mem.indexes[0].contents().committed == {fid: 2}
    assert [(h["version"], h["payload"]["content"]) for h in mem.history(fid)] == [
        (1, "vegetarian"),
        (2, "vegan"),
    ]
    assert mem.history(fid)[1]["actor"] == "agent"
    assert mem.verify().clean


def test_get_many_reads_the_facts_that_exist_once_each(mem: MemoryStore) -> None:
    first = mem.commit(Fact(type="note", payload={"content": "one"}))
    second = mem.commit(Fact(type="note", payload={"content": "two"}))
    mem.update(second, {"payload": {"content": "two, again"}})
    found = mem.get_many([second, "missing", first, second])
    assert list(found) == [second, first]  # in the order asked, each once
    assert found == {second: mem.get(second), first: mem.get(first)}
    assert found[second]["version"] == 2
    with pytest.raises(UsageError, match="get_many"):
        mem.get_many([first, ""])


def test_search_returns_only_committed_current_versions(mem: MemoryStore) -> None:
    fid = mem.commit_model(UserPref(content="likes green tea", role="drink"))
    mem.update(fid, {"payload": {"content": "likes black coffee"}})
    # A staged (prepared, never committed) version of another fact stays invisible.
    other = mem.commit_model(UserPref(content="likes jasmine tea", role="other"))
    index = mem.indexes[0]
    from coordinator import UpsertFact, new_txid
    from coordinator.records import FactRecord

    ghost = FactRecord(other, "preference", {"content": "green tea", "role": "other"}, 2)
    vector = tuple(index.embedder.embed(["green tea"])[0])
    index.prepare(new_txid(), [UpsertFact(ghost, 1, embedding=vector)])
    results = mem.search("green tea", k=5)
    assert [r.fact["payload"]["content"] for r in results].count("likes black coffee") == 1
    assert all(r.fact["version"] == mem.get(r.fact["id"])["version"] for r in results)  # type: ignore[index]
    assert "green tea" not in [r.fact["payload"]["content"] for r in results]
    assert len({r.fact["id"] for r in results}) == len(results)


def test_search_filters_by_type_session_and_metadata(mem: MemoryStore) -> None:
    a = mem.commit_model(UserPref(content="tea in the morning", role="drink"), session_id="s1")
    mem.commit_model(UserPref(content="tea at night", role="sleep"), session_id="s2")
    assert [r.fact["id"] for r in mem.search("tea", filters={"payload.role": "drink"})] == [a]
    assert [r.fact["id"] for r in mem.search("tea", session_id="s1")] == [a]
    assert mem.search("tea", typename="audit") == []
    assert len(mem.search("tea", limit=1)) == 1


def test_rollback_is_a_compensating_transaction_in_history(mem: MemoryStore) -> None:
    fid = mem.commit_model(UserPref(content="vegetarian", role="diet"), session_id="s1")
    mem.update(fid, {"payload": {"content": "vegan"}})
    mem.commit_model(UserPref(content="dark mode", role="ui"), session_id="s1")
    assert mem.rollback(steps=1) != []  # undoes the last transaction: the "ui" fact
    assert [f["payload"]["role"] for f in mem.query()] == ["diet"]
    mem.rollback(1)  # then the update
    assert mem.get(fid)["payload"]["content"] == "vegetarian"  # type: ignore[index]
    versions = [(h["version"], h["payload"]["content"], h["deleted"]) for h in mem.history(fid)]
    assert versions == [(1, "vegetarian", False), (2, "vegan", False), (3, "vegetarian", False)]
    assert mem.indexes[0].contents().committed == {fid: 3}
    assert mem.verify().clean


def test_a_fact_recreated_after_a_delete_continues_its_numbering(mem: MemoryStore) -> None:
    """By commit with the same id, and by the rollback of a delete: history and the
    index never reuse a version."""
    mem.commit(Fact(id="plan", type="note", payload={"content": "first"}))
    mem.delete(None, "plan")
    mem.commit(Fact(id="plan", type="note", payload={"content": "again"}))
    mem.delete(None, "plan")
    assert mem.rollback(1) == ["plan"]
    versions = [(h["version"], h["payload"]["content"], h["deleted"]) for h in mem.history("plan")]
    assert versions == [
        (1, "first", False),
        (2, "first", True),
        (3, "again", False),
        (4, "again", True),
        (5, "again", False),
    ]
    assert mem.indexes[0].contents().committed == {"plan": 5}
    assert mem.verify().clean


def test_rollback_of_a_session_leaves_other_sessions_alone(mem: MemoryStore) -> None:
    keep = mem.commit_model(UserPref(content="keep", role="a"), session_id="s1")
    undo = mem.commit_model(UserPref(content="undo", role="b"), session_id="s2")
    mem.commit_model(UserPref(content="later", role="c"), session_id="s1")
    mem.rollback(steps=1, session_id="s2")
    assert mem.get(undo) is None and mem.get(keep) is not None
    assert len(mem.query()) == 2


def test_promote_and_discard_sessions_reach_the_index(mem: MemoryStore) -> None:
    kept = mem.commit_model(UserPref(content="keep me", role="a"), session_id="s1")
    mem.commit_model(UserPref(content="drop me", role="b"), session_id="s1")
    assert mem.promote_session("s1", selector=lambda f: f["payload"]["role"] == "a") == [kept]
    assert mem.get(kept)["session_id"] is None  # type: ignore[index]
    assert mem.discard_session("s1") == 1
    assert [f["id"] for f in mem.query()] == [kept]
    assert set(mem.indexes[0].contents().committed) == {kept}
    assert mem.verify().clean


def test_a_transaction_commits_several_changes_atomically(mem: MemoryStore) -> None:
    old = mem.commit_model(UserPref(content="old", role="x"))
    with mem.transaction(session_id="s1") as tx:
        new = tx.commit_model(UserPref(content="new", role="y"))
        tx.delete(old)
        assert tx.get(old) is None and tx.get(new) is not None
        assert mem.get(old) is not None  # nothing visible before the block ends
    assert mem.get(old) is None and mem.get(new) is not None
    assert set(mem.indexes[0].contents().committed) == {new}
    before = snapshot(mem)
    with pytest.raises(RuntimeError), mem.transaction() as tx:
        tx.delete(new)
        raise RuntimeError("the agent changed its mind")
    assert snapshot(mem) == before


def test_an_index_failure_aborts_everything(mem: MemoryStore) -> None:
    mem.commit_model(UserPref(content="first", role="a"))
    before = snapshot(mem)
    index = mem.indexes[0]
    original = index.prepare

    def broken(txid, writes):
        raise ConnectionError("vector store timed out")

    index.prepare = broken  # type: ignore[method-assign]
    with pytest.raises(TransactionAborted):
        mem.commit_model(UserPref(content="second", role="b"))
    index.prepare = original  # type: ignore[method-assign]
    assert snapshot(mem) == before


def sql_in(m: MemoryStore, participant: str) -> None:
    with m.transaction() as tx:
        tx.commit(Fact(type="note", payload={"content": "beside some SQL"}))
        tx.execute(participant, "UPDATE orders SET paid = 1")
        pytest.fail("execute() took SQL for a participant that cannot run it")  # not at commit


BAD_INPUT = [
    (lambda m: sql_in(m, "qdrant:memories"), UsageError, "'qdrant:memories' cannot run SQL"),
    (lambda m: sql_in(m, "pg"), UsageError, "no participant named 'pg'"),
    (lambda m: m.commit(Fact(type="audit", payload={"content": [3]})), ValidationFailed, "content"),
    (
        lambda m: m.commit(Fact(type="preference", payload={"content": "x"})),
        ValidationFailed,
        "role",
    ),
    (lambda m: m.commit_model(Unregistered(x=1)), UsageError, "not registered"),
    (lambda m: m.update("no-such-id", {"payload": {}}), UsageError, "no fact with id"),
    (lambda m: m.delete(None, "no-such-id"), UsageError, "no fact with id"),
    (lambda m: m.update("x", {"content": "y"}), UsageError, "patch must be"),
    (lambda m: m.query(filters={"payload.role'; DROP TABLE x; --": 1}), UsageError, "malformed"),
    (lambda m: m.query(filters={"payload": 1}), UsageError, "payload field"),
    (lambda m: m.query(filters={"payload.role": {"$ne": 1}}), UsageError, "must be a str"),
    (lambda m: m.search("x", filters={"nope": 1}), UsageError, "unknown"),
    (lambda m: m.rollback(0), UsageError, "steps must be >= 1"),
    (lambda m: m.rollback(-2), UsageError, "steps must be >= 1"),
    (lambda m: m.rollback("s1"), UsageError, "did you mean rollback"),
    (lambda m: m.search("x", k=0), UsageError, "positive int"),
    (lambda m: m.search("x", k=2, limit=3), UsageError, "disagree"),
    (lambda m: m.search("x", score_threshold="0.5"), UsageError, "score_threshold must be a"),
    (lambda m: m.search("x", score_threshold=math.nan), UsageError, "got nan"),
    (
        lambda m: m.commit(Fact(type="note", payload={"content": "a\x00b"})),
        UsageError,
        r"payload\.content holds a NUL character",
    ),
    (
        lambda m: m.commit(Fact(type="note", payload={"content": "x", "n": [{"k\x00": 1}]})),
        UsageError,
        r"payload\.n\[0\] has a key \('k\\x00'\) that holds a NUL character",
    ),
    (
        lambda m: m.commit(Fact(type="note", payload={"content": "x", "n": ["caf\udce9"]})),
        UsageError,
        r"payload\.n\[0\] holds a lone surrogate",
    ),
    (
        lambda m: m.update(m.query()[0]["id"], {"payload": {"content": "half \ud83d"}}),
        UsageError,
        r"payload\.content holds a lone surrogate",
    ),
    (
        lambda m: m.commit(Fact(type="note", payload={"\ud83d": "half an emoji"})),
        UsageError,
        r"payload has a key \('\\ud83d'\) that holds a lone surrogate",
    ),
    (
        lambda m: m.delete(None, m.query()[0]["id"], reason="r\udcff"),
        UsageError,
        "reason 'r.udcff' holds a lone surrogate",
    ),
    (lambda m: m.search("caf\udce9"), UsageError, "query 'caf.udce9' holds a lone surrogate"),
    (lambda m: m.commit(Fact(id="", type="note", payload={})), UsageError, "fact id must be"),
    (lambda m: m.commit(Fact(id="a\x00", type="note", payload={})), UsageError, "fact id 'a"),
    (lambda m: m.commit(Fact(type="", payload={})), UsageError, "fact type must be"),
    (
        lambda m: m.commit(Fact(type="note", payload={"content": "x"}), session_id="s\x00"),
        UsageError,
        "session_id 's.x00' holds a NUL",
    ),
    (
        lambda m: m.delete(None, m.query()[0]["id"], actor="ann\x00"),
        UsageError,
        "actor 'ann.x00' holds a NUL",
    ),
    (lambda m: m.discard_session(None), UsageError, "session_id must be a non-empty str"),
    (lambda m: m.promote_session(None), UsageError, "session_id must be a non-empty str"),
    (lambda m: m.discard_session(""), UsageError, "session_id must be a non-empty str"),
    (
        lambda m: m.commit(Fact(type="note", payload={"content": "x", "at": datetime(2026, 1, 1)})),
        UsageError,
        r"payload\.at is a datetime .*\.isoformat\(\)",
    ),
    (
        lambda m: m.commit(Fact(type="note", payload={"content": "x", "score": math.nan})),
        UsageError,
        r"payload\.score is nan",
    ),
    (
        lambda m: m.commit(Fact(type="note", payload={"content": "x", "tags": [{"a": {1}}]})),
        UsageError,
        r"payload\.tags\[0\]\.a is a set",
    ),
    (
        lambda m: m.commit(Fact(type="note", payload=nested(MAX_DEPTH + 1))),
        UsageError,
        r"payload\.n\.n.* nests deeper than 100 levels",
    ),
    (  # deeper than Python's stack: the check itself must not recurse
        lambda m: m.commit(Fact(type="note", payload=nested(5_000))),
        UsageError,
        "nests deeper than 100 levels",
    ),
]


def nested(levels: int) -> dict[str, Any]:
    """A payload of dicts nested ``levels`` deep (itself the first), each under ``n``."""
    payload: dict[str, Any] = {"content": "deep"}
    inner = payload
    for _ in range(levels - 1):
        inner["n"] = {}
        inner = inner["n"]
    return payload


@pytest.mark.parametrize(("call", "error", "message"), BAD_INPUT)
def test_bad_input_gets_a_clear_error_and_changes_nothing(
    mem: MemoryStore, call: object, error: type[Exception], message: str
) -> None:
    mem.commit_model(UserPref(content="existing", role="r"), session_id="s1")
    before = snapshot(mem)
    with pytest.raises(error, match=message):
        call(mem)  # type: ignore[operator]
    assert snapshot(mem) == before


def test_a_payload_nested_as_deep_as_allowed_reads_back(mem: MemoryStore) -> None:
    payload = nested(MAX_DEPTH)
    fid = mem.commit(Fact(type="note", payload=payload))
    got = mem.get(fid)
    assert got is not None and got["payload"] == payload
    assert mem.history(fid)[-1]["payload"] == payload


def test_an_immutable_fact_cannot_change_by_any_path(mem: MemoryStore) -> None:
    fid = mem.commit_model(AuditEntry(content="approved by Ann"), session_id="s1")
    before = snapshot(mem)
    for attempt in (
        lambda: mem.update(fid, {"payload": {"content": "forged"}}),
        lambda: mem.delete("s1", fid),
        lambda: mem.commit(Fact(id=fid, type="audit", payload={"content": "again"})),
        lambda: mem.rollback(1, session_id="s1"),
    ):
        with pytest.raises(ImmutableViolation):
            attempt()
        assert snapshot(mem) == before


def test_racing_writers_one_wins_the_other_gets_a_conflict(mem: MemoryStore) -> None:
    fid = mem.commit_model(UserPref(content="start", role="r"))
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []
    # The storage commits last with the decision (its log is in its own file): hold both
    # writers there until each has read version 1.
    assert mem.policy.last_resource == mem.storage.name
    storage = mem.storage
    assert isinstance(storage, SQLiteStorage)
    original = storage.commit_with_decision

    def slow_commit(txid, writes, participants):
        barrier.wait(timeout=10)
        return original(txid, writes, participants)

    storage.commit_with_decision = slow_commit  # type: ignore[method-assign]

    def writer(text: str) -> None:
        try:
            mem.update(fid, {"payload": {"content": text}})
        except VersionConflict as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    storage.commit_with_decision = original  # type: ignore[method-assign]
    assert len(errors) == 1
    fact = mem.get(fid)
    assert fact is not None and fact["version"] == 2 and fact["payload"]["content"] in ("a", "b")
    assert mem.verify().clean


SINGLETON_WRITER = r"""
import sys, time
from pathlib import Path
from pydantic import BaseModel
from coordinator import Constraint, MemoryStore, ConflictError
from participants.sqlite import SQLiteStorage

class Pref(BaseModel):
    content: str
    role: str

d = Path(sys.argv[1])
mem = MemoryStore(SQLiteStorage(d / "facts.db"))
mem.register_schema("pref", Pref, constraint=Constraint(singleton_key="role"))
(d / f"ready-{sys.argv[2]}").touch()
while not (d / "go").exists():
    time.sleep(0.001)
done = 0
while done < 20:
    try:
        mem.commit_model(Pref(content=f"{sys.argv[2]}-{done}", role=f"role-{done % 5}"))
        done += 1
    except ConflictError:
        pass
"""


def test_singleton_upserts_stay_unique_across_processes(tmp_path: Path) -> None:
    SQLiteStorage(tmp_path / "facts.db").close()
    procs = [
        subprocess.Popen([sys.executable, "-c", SINGLETON_WRITER, str(tmp_path), f"p{i}"])
        for i in range(3)
    ]
    while len(list(tmp_path.glob("ready-*"))) < 3:
        if any(p.poll() is not None for p in procs):
            break
        threading.Event().wait(0.01)
    (tmp_path / "go").touch()
    assert all(p.wait(timeout=240) == 0 for p in procs)
    mem = MemoryStore(SQLiteStorage(tmp_path / "facts.db"))
    facts = mem.query(typename="pref")
    assert sorted(f["payload"]["role"] for f in facts) == [f"role-{i}" for i in range(5)]
    assert sum(f["version"] for f in facts) == 3 * 20  # every commit landed, none duplicated
    mem.close()


def test_the_embedded_default_finds_a_paraphrase_offline(tmp_path: Path) -> None:
    mem = MemoryStore.open(tmp_path / "memory")
    notes = {
        "diet": "The user is vegetarian and never eats meat",
        "home": "The user lives in a flat in London",
        "meeting": "The weekly team meeting is on Tuesdays at 3pm",
        "pet": "The user's cat is called Whiskers",
        "ui": "The user prefers dark mode in every editor",
    }
    ids = {k: mem.commit(Fact(type="note", payload={"content": v})) for k, v in notes.items()}
    questions = {
        "what food does the person avoid?": "diet",
        "which city is the user based in?": "home",
        "when is our regular standup?": "meeting",
        "what is the name of their pet?": "pet",
        "which colour theme do they like?": "ui",
    }
    for question, key in questions.items():
        assert mem.search(question, k=1)[0].fact["id"] == ids[key], question
    mem.close()


def test_an_embedded_store_open_elsewhere_is_a_clear_error_that_changes_nothing(
    tmp_path: Path,
) -> None:
    """Qdrant's local mode serves one client: a second ``open`` (here from another
    process) gets a ``ParticipantError`` naming the directory, and the first store goes on."""
    mem = MemoryStore.open(tmp_path / "memory", embedder=HashingEmbedder(16))
    fid = mem.commit(Fact(type="note", payload={"content": "first"}))
    refusal = open_from_another_process(tmp_path / "memory")
    assert f"{tmp_path / 'memory' / 'vectors'} is open in another client" in refusal
    mem.update(fid, {"payload": {"content": "second"}})
    mem.close()
    again = MemoryStore.open(tmp_path / "memory", embedder=HashingEmbedder(16))
    assert again.get(fid)["payload"] == {"content": "second"}  # type: ignore[index]
    assert again.history(fid)[-1]["version"] == 2
    again.close()


def test_a_damaged_index_directory_is_named_and_rebuilt_from_the_facts(tmp_path: Path) -> None:
    """Qdrant's local mode reads every point as it opens; a damaged file there (a disk
    error, a copy cut short) stops the open with a ``ParticipantError`` naming the
    directory and the way out, which works: moved aside, reopened, repaired."""
    directory = tmp_path / "memory"
    mem = MemoryStore.open(directory, embedder=HashingEmbedder(16))
    fid = mem.commit(Fact(type="note", payload={"content": "kept in facts.db"}))
    mem.close()
    (directory / "vectors" / "collection" / "memories" / "storage.sqlite").write_bytes(
        b"not a database" * 100
    )
    with warnings.catch_warnings():
        # qdrant-client leaves its connection to the damaged file open when its open
        # fails (the traceback holds it, no object of ours does); collected, it warns on
        # Python 3.13 and later: collect it here.
        warnings.simplefilter("ignore", ResourceWarning)
        with pytest.raises(ParticipantError, match="move the directory aside") as refused:
            MemoryStore.open(directory, embedder=HashingEmbedder(16))
        message = str(refused.value)
        del refused
        gc.collect()
    assert f"{directory / 'vectors'} cannot be read (DatabaseError" in message

    (directory / "vectors").rename(tmp_path / "vectors.damaged")
    with MemoryStore.open(directory, embedder=HashingEmbedder(16)) as mem:
        assert mem.verify().derived["vectors"].missing == [fid]  # the new index lacks it
        mem.repair()
        assert mem.verify().clean
        assert [hit.fact["id"] for hit in mem.search("kept", k=1)] == [fid]


@pytest.mark.parametrize("deferred", [False, True], ids=["finished", "deferred"])
def test_a_close_beside_committing_threads_cuts_no_commit_in_two(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, deferred: bool
) -> None:
    """A program that closes its store while worker threads commit (a shutdown): each
    commit lands whole, or is refused with a ``UsageError`` before it starts. None is cut
    by the close (a fact whose index branch was left for recovery, or a refusal from a
    store closed under it). Three rounds, as a close may miss the commits in flight.
    Deferred, with a batch of one, every commit runs a deferred batch inside its own run,
    which the close must not refuse as a new one (the commit is decided by then)."""
    from coordinator import Policy

    policy = Policy(deferred_finish=True, deferred_batch=1) if deferred else None
    directory = tmp_path / "memory"
    landed: list[str] = []
    for _ in range(3):
        mem = MemoryStore.open(directory, embedder=HashingEmbedder(16), policy=policy)
        before = len(landed)
        refused: list[UsageError] = []
        failed: list[Exception] = []

        def writer(
            mem: MemoryStore = mem,
            refused: list[UsageError] = refused,
            failed: list[Exception] = failed,
        ) -> None:
            while True:
                try:
                    landed.append(mem.commit(Fact(type="note", payload={"content": "work"})))
                except UsageError as exc:
                    refused.append(exc)
                    return
                except Exception as exc:
                    failed.append(exc)
                    return

        writers = [threading.Thread(target=writer) for _ in range(3)]
        for thread in writers:
            thread.start()
        while len(landed) < before + 20 and not failed:
            time.sleep(0.001)
        mem.close()  # while the writers commit
        for thread in writers:
            thread.join(60)
        assert failed == [] and len(refused) == 3
    assert "not finished yet" not in caplog.text

    # The stores as the close left them, before any recovery: nothing staged anywhere.
    client = QdrantClient(path=str(directory / "vectors"))
    contents = QdrantIndex(client, "memories", embedder=HashingEmbedder(16)).contents()
    client.close()
    assert contents.pending == ()
    assert set(contents.committed) == set(landed)
    with MemoryStore.open(directory, embedder=HashingEmbedder(16)) as mem:
        assert {fact["id"] for fact in mem.query()} == set(landed)
        assert mem.verify().clean


def test_a_store_still_open_when_the_program_ends_exits_quietly_and_opens_again(
    tmp_path: Path,
) -> None:
    """A program that never closes its embedded store and keeps it to the end (here in a
    reference cycle, as an agent object holding it would) exits without a traceback: the
    local-mode client is closed at exit, not by its ``__del__`` once imports are gone. The
    store then opens with its fact in both stores."""
    program = (
        "import sys\n"
        "from coordinator import Fact, MemoryStore\n"
        "from coordinator.embeddings import HashingEmbedder\n"
        "mem = MemoryStore.open(sys.argv[1], embedder=HashingEmbedder(16))\n"
        "mem.commit(Fact(id='kept', type='note', payload={'content': 'kept to the end'}))\n"
        "class Agent:\n"
        "    def __init__(self, memory):\n"
        "        self.memory, self.me = memory, self\n"
        "agent = Agent(mem)\n"
    )
    ended = subprocess.run(
        [sys.executable, "-c", program, str(tmp_path / "memory")],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ended.returncode == 0, ended.stderr
    assert "Exception ignored" not in ended.stderr, ended.stderr
    assert "Traceback" not in ended.stderr, ended.stderr
    again = MemoryStore.open(tmp_path / "memory", embedder=HashingEmbedder(16))
    assert again.get("kept")["payload"] == {"content": "kept to the end"}  # type: ignore[index]
    assert [hit.fact["id"] for hit in again.search("kept to the end", k=1)] == ["kept"]
    assert again.verify().clean
    again.close()


def test_a_payload_that_is_not_json_is_refused_before_any_store_sees_it(tmp_path: Path) -> None:
    """The embedded default's index embeds the whole payload as JSON when it has no text
    field; bytes there used to escape as a bare TypeError from the index. Now the memory
    API refuses the payload first, whatever the stores."""
    mem = MemoryStore.open(tmp_path / "memory", embedder=HashingEmbedder(16))
    with pytest.raises(UsageError, match=r"payload\.content is a bytes"):
        mem.commit(Fact(type="note", payload={"content": b"raw bytes"}))
    fid = mem.commit(Fact(type="note", payload={"content": "text"}))
    with pytest.raises(UsageError, match=r"payload\.weight is inf"):
        mem.update(fid, {"payload": {"weight": math.inf}})
    assert [f.id for f in mem.storage.all_facts()] == [fid]
    assert mem.storage.history(fid)[-1].version == 1
    # The six characters JSON writes a NUL as are no NUL: they are kept as they are.
    escaped = mem.commit(Fact(type="note", payload={"content": "\\u0000 is JSON's NUL"}))
    assert mem.get(escaped)["payload"] == {"content": "\\u0000 is JSON's NUL"}  # type: ignore[index]
    mem.delete(None, escaped)
    assert mem.indexes[0].contents().committed == {fid: 1}
    mem.close()


def embedded_index(kind: str, directory: Path, metadata_fields: Sequence[str] = ()) -> Any:
    """A Qdrant local-mode or Chroma embedded index of ``content`` in ``directory``."""
    import chromadb

    from participants.chroma import ChromaIndex

    if kind == "qdrant local":
        client: Any = QdrantClient(path=str(directory / "q"))
        return QdrantIndex(
            client, "notes", "content", metadata_fields, embedder=HashingEmbedder(32)
        )
    client = chromadb.PersistentClient(str(directory / "c"))
    return ChromaIndex(client, "notes", "content", metadata_fields, embedder=HashingEmbedder(32))


@pytest.mark.parametrize("kind", ["qdrant local", "chroma embedded"])
def test_search_filters_on_numbers_and_bools_as_query_does(tmp_path: Path, kind: str) -> None:
    """The filter goes to the index with the search, so what the index finds is what
    ``query`` finds: a number equals the float it is (1 and 1.0: Qdrant's match alone
    missed that), a bool is not a number. Thirty closer facts that do not match would fill
    the candidates of a search that filtered afterwards only."""
    index = embedded_index(kind, tmp_path, metadata_fields=["n", "flag"])
    mem = MemoryStore(SQLiteStorage(tmp_path / "facts.db"), hooks=[index])
    for _ in range(30):
        mem.commit(Fact(type="note", payload={"content": "the answer", "n": 2, "flag": 0}))
    whole = mem.commit(Fact(type="note", payload={"content": "an int", "n": 1, "flag": True}))
    real = mem.commit(Fact(type="note", payload={"content": "a float", "n": 1.0, "flag": 1}))
    cases: list[tuple[dict[str, JSONValue], set[str]]] = [
        ({"payload.n": 1}, {whole, real}),
        ({"payload.n": 1.0}, {whole, real}),
        ({"payload.flag": True}, {whole}),
        ({"payload.flag": 1}, {real}),
    ]
    for filters, expected in cases:
        found = {h.fact["id"] for h in mem.search("the answer", k=2, filters=filters)}
        assert found == expected == {f["id"] for f in mem.query(filters=filters)}, filters
    mem.close()


@pytest.mark.parametrize("what", ["transaction", "rollback", "discard_session"])
def test_a_close_waits_for_a_transaction_under_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    """A transaction reads, then a close comes from another thread, then it reads again
    and commits: the close waits for it, instead of closing the stores under its reads
    (the read failed with the store's own error, 'Cannot operate on a closed database').
    A rollback and a session's discard read before their transaction begins: the same."""
    directory = tmp_path / "memory"
    mem = MemoryStore.open(directory, embedder=HashingEmbedder(16))
    first = mem.commit(Fact(type="note", payload={"content": "first"}), session_id="s")
    second = mem.commit(Fact(type="note", payload={"content": "second"}), session_id="s")
    read, closing = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def held_up(name: str) -> None:
        """The storage's read ``name``, its answer held until the close has begun."""
        reads = getattr(mem.storage, name)

        def slow(*args: Any) -> Any:
            found = reads(*args)
            read.set()
            closing.wait(10)
            time.sleep(0.3)  # the close has had time to close the stores
            return found

        monkeypatch.setattr(mem.storage, name, slow)

    def agent() -> None:
        try:
            if what == "rollback":
                held_up("transactions")
                mem.rollback(1)
            elif what == "discard_session":
                held_up("query")
                mem.discard_session("s")
            else:
                with mem.transaction() as tx:
                    assert tx.get(first) is not None
                    read.set()
                    closing.wait(10)
                    time.sleep(0.3)
                    assert tx.get(second) is not None  # a read after the close began
                    tx.update(first, {"payload": {"content": "changed"}})
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=agent)
    worker.start()
    assert read.wait(10)
    closing.set()
    mem.close()  # returns once the transaction has ended
    worker.join(30)
    assert not worker.is_alive() and errors == []
    with MemoryStore.open(directory, embedder=HashingEmbedder(16)) as mem:
        expected = {"rollback": [first], "discard_session": [], "transaction": [first, second]}
        assert sorted(fact["id"] for fact in mem.query()) == sorted(expected[what])
        if what == "transaction":
            assert mem.get(first)["payload"] == {"content": "changed"}  # type: ignore[index]
        assert mem.verify().clean


@pytest.mark.parametrize("read", ["get", "get_many", "query", "history", "search"])
def test_a_read_a_close_overtakes_says_the_store_was_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read: str
) -> None:
    """A lone read does not hold a close up (a transaction does): one the close overtakes
    fails with a UsageError saying so, not with the store's own complaint about a closed
    connection ("Cannot operate on a closed database", "QdrantLocal instance is closed")."""
    mem = MemoryStore.open(tmp_path / "memory", embedder=HashingEmbedder(16))
    fid = mem.commit(Fact(type="note", payload={"content": "kept"}))
    reading, closed = threading.Event(), threading.Event()
    store = mem.indexes[0] if read == "search" else mem.storage  # the read of that name
    real = getattr(store, read)

    def overtaken(*args: Any, **kwargs: Any) -> Any:
        reading.set()
        assert closed.wait(10)
        return real(*args, **kwargs)  # on the closed stores

    monkeypatch.setattr(store, read, overtaken)
    calls: dict[str, Callable[[], object]] = {
        "get": lambda: mem.get(fid),
        "get_many": lambda: mem.get_many([fid]),
        "query": lambda: mem.query("note"),
        "history": lambda: mem.history(fid),
        "search": lambda: mem.search("kept"),
    }
    errors: list[BaseException] = []

    def agent() -> None:
        try:
            calls[read]()
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=agent)
    worker.start()
    assert reading.wait(10)
    mem.close()  # does not wait for the read
    closed.set()
    worker.join(10)
    assert not worker.is_alive() and len(errors) == 1, errors
    assert isinstance(errors[0], UsageError), repr(errors[0])
    assert f"{read}(): this memory store was closed while the read ran" in str(errors[0])
    assert errors[0].__cause__ is not None  # the store's own error, kept for the operator
    with MemoryStore.open(tmp_path / "memory", embedder=HashingEmbedder(16)) as mem:
        assert mem.get(fid)["payload"] == {"content": "kept"}  # type: ignore[index]


def test_a_close_waits_for_a_verify_under_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify() and repair() read every store at length: a close waits for them."""
    mem = MemoryStore.open(tmp_path / "memory", embedder=HashingEmbedder(16))
    mem.commit(Fact(type="note", payload={"content": "kept"}))
    reading, closing = threading.Event(), threading.Event()
    real = mem.storage.all_facts

    def slow() -> Any:
        reading.set()
        assert closing.wait(10)
        time.sleep(0.3)  # the close has had time to close the stores
        return real()

    monkeypatch.setattr(mem.storage, "all_facts", slow)
    reports: list[Any] = []
    worker = threading.Thread(target=lambda: reports.append(mem.verify()))
    worker.start()
    assert reading.wait(10)
    closing.set()
    mem.close()  # returns once verify has
    worker.join(10)
    assert not worker.is_alive() and len(reports) == 1
    assert reports[0].clean and reports[0].facts == 1


def test_a_close_waiting_for_a_long_transaction_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A transaction block is the program's own code (an agent may wait on a model inside
    it): a close waiting for one warns while it waits, then lets it commit."""
    from coordinator._sync import coordinator

    monkeypatch.setattr(coordinator, "CLOSE_NOTICE", 0.05)
    mem = MemoryStore.open(tmp_path / "memory", embedder=HashingEmbedder(16))
    begun = threading.Event()
    written: list[str] = []

    def agent() -> None:
        with mem.transaction() as tx:
            begun.set()
            deadline = time.monotonic() + 10
            while "close is waiting" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.01)
            written.append(tx.commit(Fact(type="note", payload={"content": "slow"})))

    worker = threading.Thread(target=agent, daemon=True)
    worker.start()
    assert begun.wait(10)
    with caplog.at_level(logging.WARNING, logger="coordinator"):
        mem.close()
    worker.join(10)
    assert "close is waiting for 1 commit(s) or transaction(s) under way" in caplog.text
    assert len(written) == 1
    with MemoryStore.open(tmp_path / "memory", embedder=HashingEmbedder(16)) as mem:
        assert [fact["id"] for fact in mem.query()] == written


def test_a_store_closes_at_the_end_of_a_with_block(tmp_path: Path) -> None:
    with MemoryStore.open(tmp_path / "memory", embedder=HashingEmbedder(16)) as mem:
        fid = mem.commit(Fact(type="note", payload={"content": "kept"}))
    # Closed: the index's directory lock is free for the next open, which finds the fact.
    with MemoryStore.open(tmp_path / "memory", embedder=HashingEmbedder(16)) as again:
        assert again.get(fid)["payload"] == {"content": "kept"}  # type: ignore[index]


@pytest.mark.anyio
async def test_an_async_store_closes_at_the_end_of_an_async_with_block(tmp_path: Path) -> None:
    from coordinator import AsyncMemoryStore

    async with await AsyncMemoryStore.open(tmp_path / "m", embedder=HashingEmbedder(16)) as mem:
        fid = await mem.commit(Fact(type="note", payload={"content": "kept"}))
    async with await AsyncMemoryStore.open(tmp_path / "m", embedder=HashingEmbedder(16)) as again:
        assert (await again.get(fid))["payload"] == {"content": "kept"}  # type: ignore[index]


@pytest.mark.anyio
async def test_an_async_close_beside_committing_tasks_cuts_no_commit_in_two(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The async store's close, awaited while other tasks commit: each of their commits
    lands whole or is refused before it starts (see the sync test above). Six rounds: a
    task switches only where it awaits, so fewer closes land inside a commit."""
    import anyio

    from coordinator import AsyncMemoryStore

    landed: list[str] = []
    failed: list[Exception] = []
    for _ in range(6):
        mem = await AsyncMemoryStore.open(tmp_path / "m", embedder=HashingEmbedder(16))
        refused: list[UsageError] = []
        under_way = anyio.Event()  # twenty more commits made, or one failed
        enough = len(landed) + 20

        async def writer(
            mem: AsyncMemoryStore = mem,
            refused: list[UsageError] = refused,
            under_way: anyio.Event = under_way,
            enough: int = enough,
        ) -> None:
            while True:
                try:
                    landed.append(await mem.commit(Fact(type="note", payload={"content": "w"})))
                except UsageError as exc:
                    refused.append(exc)
                    return
                except Exception as exc:
                    failed.append(exc)
                    under_way.set()
                    return
                if len(landed) >= enough:
                    under_way.set()

        async with anyio.create_task_group() as tasks:
            for _ in range(3):
                tasks.start_soon(writer)
            await under_way.wait()
            await mem.close()  # while the writers commit
        assert failed == [] and len(refused) == 3
    assert "not finished yet" not in caplog.text
    async with await AsyncMemoryStore.open(tmp_path / "m", embedder=HashingEmbedder(16)) as mem:
        assert {fact["id"] for fact in await mem.query()} == set(landed)
        assert (await mem.verify()).clean


@pytest.mark.parametrize("kind", ["qdrant local", "chroma embedded"])
def test_search_looks_further_for_facts_that_pass_a_filter_the_index_cannot_apply(
    tmp_path: Path, kind: str
) -> None:
    """Sixty closer facts fail the filter (on a field the index does not hold), and
    updated facts leave stale points in a deferred index: search still finds the ones that
    pass, in order, rather than an empty list."""
    from coordinator import Policy

    mem = MemoryStore(
        SQLiteStorage(tmp_path / "facts.db"),
        hooks=[embedded_index(kind, tmp_path)],
        policy=Policy(deferred_finish=True),
    )
    crowd = [
        mem.commit(Fact(type="note", payload={"content": "the answer", "topic": "other"}))
        for _ in range(60)
    ]
    for fid in crowd[:30]:  # stale versions of the crowd, still in the index until the batch
        mem.update(fid, {"payload": {"content": "the answer", "topic": "other"}})
    near = mem.commit(Fact(type="note", payload={"content": "the answer too", "topic": "x"}))
    far = mem.commit(Fact(type="note", payload={"content": "unrelated words", "topic": "x"}))
    found = [h.fact["id"] for h in mem.search("the answer", k=5, filters={"payload.topic": "x"})]
    assert found == [near, far]
    assert mem.search("the answer", k=5, filters={"payload.topic": "none"}) == []
    assert [
        h.fact["id"] for h in mem.search("the answer", k=1, filters={"payload.topic": "x"})
    ] == [near]
    mem.close()


def test_a_closed_store_refuses_every_operation_and_closes_once(tmp_path: Path) -> None:
    """Before, each call failed in whichever backend it reached first, as a
    ParticipantError ("Cannot operate on a closed database"), which reads as a store
    failing rather than a program using a store it closed."""
    embedder = HashingEmbedder(16)
    mem = MemoryStore.open(tmp_path / "m", embedder=embedder)
    kept = mem.commit(Fact(type="note", payload={"content": "kept"}, session_id="s"))
    tx = mem.transaction()
    tx.commit(Fact(type="note", payload={"content": "begun before the close"}))
    mem.close()
    mem.close()  # again: nothing to do
    calls: dict[str, Any] = {
        "commit": lambda: mem.commit(Fact(type="note", payload={"content": "late"})),
        "update": lambda: mem.update(kept, {"payload": {"content": "late"}}),
        "delete": lambda: mem.delete(None, kept),
        "transaction": lambda: mem.transaction(),
        "finish a transaction begun before": tx.finish,
        "rollback": lambda: mem.rollback(1),
        "promote_session": lambda: mem.promote_session("s"),
        "discard_session": lambda: mem.discard_session("s"),
        "get": lambda: mem.get(kept),
        "query": lambda: mem.query(),
        "history": lambda: mem.history(kept),
        "search": lambda: mem.search("kept"),
        "recover": mem.recover,
        "flush": mem.flush,
        "verify": mem.verify,
        "repair": mem.repair,
    }
    for name, call in calls.items():
        with pytest.raises(UsageError, match="this memory store is closed"):
            call()
            pytest.fail(f"{name} ran on a closed store")
    with MemoryStore.open(tmp_path / "m", embedder=embedder) as again:
        assert [f["payload"] for f in again.query()] == [{"content": "kept"}]
        assert again.indexes[0].contents().committed == {kept: 1}


class WaitsForTheLoop:
    """A real embedder that returns only once another task has run on the event loop
    since it was called: called on the loop's own thread, it would wait in vain."""

    def __init__(self, inner: HashingEmbedder) -> None:
        self.inner = inner
        self.dim = inner.dim
        self.called = threading.Event()
        self.answered = threading.Event()

    def _wait(self) -> None:
        self.answered.clear()
        self.called.set()
        if not self.answered.wait(timeout=10):
            raise AssertionError("the event loop stood still while the embedder ran")
        self.called.clear()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self._wait()
        return self.inner.embed(texts)

    def embed_query(self, text: str) -> list[float]:
        self._wait()
        return self.inner.embed_query(text)


@pytest.mark.anyio
async def test_the_async_store_embeds_off_the_event_loop(tmp_path: Path) -> None:
    """An embedding takes from 0.04 s for a sentence to 1.7 s for a long text with the
    offline e5 model; an agent serving others on the same event loop must not stall
    meanwhile, in a commit, a search or a repair."""
    import anyio

    from coordinator import AsyncMemoryStore

    embedder = WaitsForTheLoop(HashingEmbedder(16))

    async def answer_each_call(done: anyio.Event) -> None:
        while not done.is_set():
            if embedder.called.is_set():
                embedder.answered.set()
            await anyio.sleep(0.001)

    async with await AsyncMemoryStore.open(tmp_path / "m", embedder=embedder) as mem:
        done = anyio.Event()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(answer_each_call, done)
            fid = await mem.commit(Fact(type="note", payload={"content": "green tea"}))
            hits = await mem.search("green tea", k=1)
            lost = FactRecord("lost", "note", {"content": "only in the storage"}, 1, txid="t")
            await mem._apply(mem.storage, [UpsertFact(lost, 0)])  # the index never saw it
            await mem.repair()
            done.set()
        assert [hit.fact["id"] for hit in hits] == [fid]
        assert (await mem.indexes[0].contents()).committed == {fid: 1, "lost": 1}


class CountingEmbedder(HashingEmbedder):
    """Counts the queries it embeds."""

    def __init__(self) -> None:
        super().__init__(16)
        self.queries = 0

    def embed_query(self, text: str) -> list[float]:
        self.queries += 1
        return super().embed_query(text)


def test_indexes_sharing_an_embedder_embed_a_search_once(tmp_path: Path) -> None:
    shared, own = CountingEmbedder(), CountingEmbedder()
    client = QdrantClient(path=str(tmp_path / "vectors"))
    notes = QdrantIndex(client, "notes", "content", embedder=shared, target_types=["note"])
    tasks = QdrantIndex(client, "tasks", "content", embedder=shared, target_types=["task"])
    other = QdrantIndex(client, "other", "content", embedder=own, target_types=["note"])
    mem = MemoryStore(SQLiteStorage(tmp_path / "facts.db"), [notes, tasks, other])
    tea = mem.commit(Fact(type="note", payload={"content": "likes green tea"}))
    call = mem.commit(Fact(type="task", payload={"content": "call about the tea order"}))
    found = {hit.fact["id"] for hit in mem.search("tea", k=5)}
    assert found == {tea, call}  # each index searched with the query's vector
    assert (shared.queries, own.queries) == (1, 1)
    mem.close()
    client.close()
