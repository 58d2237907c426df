"""The participant contract (docs/participants.md), run against every participant.

Source of the generated sync twin. Each test says one obligation; assertions read the
store's committed contents through a fresh participant object where durability matters.
"""

from __future__ import annotations

import pickle
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from coordinator import (
    DeleteFact,
    Execute,
    FactRecord,
    TransactionAborted,
    TransactionMeta,
    UpsertFact,
    UsageError,
    VersionConflict,
    Vote,
    Write,
    new_txid,
)
from coordinator.abc import AsyncSupportsOnePhase
from coordinator.records import singleton_claim
from participants.memory import AsyncInMemoryStorage, MemoryBackend
from participants.postgres import AsyncPostgresStorage
from participants.redis import AsyncRedisStorage
from participants.sqlite import AsyncSQLiteStorage
from tests.support.crash import fact, upsert

pytestmark = pytest.mark.anyio

Store = AsyncInMemoryStorage | AsyncSQLiteStorage | AsyncPostgresStorage | AsyncRedisStorage
Opener = Callable[[], Store]


@pytest.fixture(params=["memory", "sqlite", "postgres", "redis"])
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Open the same store again, as a new process would after a crash."""
    opened: list[Store] = []
    backend = MemoryBackend()
    dsn = request.getfixturevalue("postgres_dsn") if request.param == "postgres" else ""
    redis_url = request.getfixturevalue("redis_server").url if request.param == "redis" else ""
    prefix = f"t{uuid.uuid4().hex[:12]}:"  # each test its own keys in the shared server

    def opener() -> Store:
        store: Store
        if request.param == "memory":
            store = AsyncInMemoryStorage("store", backend)
        elif request.param == "sqlite":
            store = AsyncSQLiteStorage(tmp_path / "facts.db", name="store")
        elif request.param == "postgres":
            store = AsyncPostgresStorage(dsn, name="store")
        else:
            store = AsyncRedisStorage(redis_url, name="store", prefix=prefix)
        opened.append(store)
        return store

    yield opener
    for store in opened:
        await store.close()


async def test_prepare_stages_invisibly_and_commit_applies(open_store: Opener) -> None:
    store = open_store()
    txid = new_txid()
    assert await store.prepare(txid, [upsert("a", 1, text="hello")]) is Vote.YES
    assert await store.get("a") is None
    assert await store.recover() == [txid]
    await store.commit(txid)
    assert await store.get("a") == fact("a", 1, text="hello")
    assert await store.recover() == []


async def test_prepared_branch_survives_reopen_and_commits_from_new_client(
    open_store: Opener,
) -> None:
    txid = new_txid()
    first = open_store()
    await first.prepare(txid, [upsert("a", 1, text="durable")])
    # The preparing client is gone; another one finishes the branch.
    second = open_store()
    assert await second.recover() == [txid]
    await second.commit(txid)
    assert await open_store().get("a") == fact("a", 1, text="durable")


async def test_abort_discards_staged_writes_and_releases_locks(open_store: Opener) -> None:
    store = open_store()
    txid = new_txid()
    await store.prepare(txid, [upsert("a", 1, text="never")])
    await store.abort(txid)
    assert await store.get("a") is None
    assert await store.recover() == []
    other = new_txid()
    await store.prepare(other, [upsert("a", 1, text="second try")])
    await store.commit(other)
    assert await store.get("a") == fact("a", 1, text="second try")


async def test_a_prepare_arriving_after_the_abort_is_refused(open_store: Opener) -> None:
    store = open_store()
    txid = new_txid()
    await store.abort(txid)  # the coordinator gave up on this prepare and aborted
    with pytest.raises(TransactionAborted, match="already aborted"):
        await store.prepare(txid, [upsert("a", 1)])
    assert await store.recover() == []
    assert await store.get("a") is None


async def test_commit_abort_and_prepare_are_idempotent(open_store: Opener) -> None:
    store = open_store()
    txid = new_txid()
    writes = [upsert("a", 1, text="once")]
    assert await store.prepare(txid, writes) is Vote.YES
    assert await store.prepare(txid, writes) is Vote.YES
    await store.commit(txid)
    await store.commit(txid)
    await store.abort(txid)  # after commit: a no-op, the commit stands
    assert await store.get("a") == fact("a", 1, text="once")
    assert await store.recover() == []


async def test_unknown_txid_commit_and_abort_are_no_ops(open_store: Opener) -> None:
    store = open_store()
    await store.commit(new_txid())
    await store.abort(new_txid())
    assert await store.recover() == []
    assert await store.all_facts() == []


async def test_prepare_refuses_a_stale_expected_version(open_store: Opener) -> None:
    store = open_store()
    first = new_txid()
    await store.prepare(first, [upsert("a", 1, text="v1")])
    await store.commit(first)
    stale = new_txid()
    with pytest.raises(VersionConflict) as caught:
        await store.prepare(stale, [upsert("a", 1, text="lost update")])
    assert "version 1" in str(caught.value)
    assert await store.recover() == []
    assert await store.get("a") == fact("a", 1, text="v1")


async def test_prepare_refuses_a_fact_staged_by_another_branch(open_store: Opener) -> None:
    store = open_store()
    holder = new_txid()
    await store.prepare(holder, [upsert("a", 1, text="holder")])
    with pytest.raises(VersionConflict, match="staged by another transaction"):
        await store.prepare(new_txid(), [upsert("a", 1, text="intruder")])
    assert await store.recover() == [holder]
    await store.commit(holder)
    assert await store.get("a") == fact("a", 1, text="holder")


async def test_delete_applies_at_commit_only(open_store: Opener) -> None:
    store = open_store()
    first = new_txid()
    await store.prepare(first, [upsert("a", 1, text="doomed")])
    await store.commit(first)
    delete = new_txid()
    tombstone = FactRecord("a", "note", {}, 2, txid=delete)
    await store.prepare(delete, [DeleteFact("a", 1, tombstone)])
    assert await store.get("a") == fact("a", 1, text="doomed")
    await store.commit(delete)
    assert await store.get("a") is None


async def test_one_phase_commit_applies_or_refuses_atomically(open_store: Opener) -> None:
    store = open_store()
    if not isinstance(store, AsyncSupportsOnePhase):
        pytest.skip("one-phase commit is optional; this store always commits in two phases")
    await store.commit_one_phase(new_txid(), [upsert("a", 1, text="x"), upsert("b", 1)])
    with pytest.raises(VersionConflict):
        # "b" is fine, "a" is stale: neither may change.
        await store.commit_one_phase(new_txid(), [upsert("b", 2, n=2), upsert("a", 1, text="y")])
    assert await store.get("a") == fact("a", 1, text="x")
    assert await store.get("b") == fact("b", 1)
    assert await store.recover() == []


async def test_bad_input_is_refused_and_nothing_is_staged(open_store: Opener) -> None:
    store = open_store()
    # Stores without SQL refuse Execute; SQL stores refuse SQL that fails; SQLite runs
    # SQL only in a local commit, never at prepare.
    with pytest.raises(UsageError, match=r"cannot run SQL|your SQL failed|runs your SQL only"):
        await store.prepare(new_txid(), [upsert("a", 1), Execute("DELETE FROM x")])
    with pytest.raises(UsageError, match="a new version must be higher"):
        await store.prepare(new_txid(), [UpsertFact(fact("a", 1), 1)])
    assert await store.recover() == []
    assert await store.all_facts() == []


async def test_non_json_payload_is_refused_and_nothing_is_staged(open_store: Opener) -> None:
    store = open_store()
    with pytest.raises(UsageError, match="JSON"):
        await store.prepare(new_txid(), [UpsertFact(fact("a", 1, when=object()), 0)])
    assert await store.recover() == []


async def test_errors_from_the_contract_pickle(open_store: Opener) -> None:
    store = open_store()
    txid = new_txid()
    await store.prepare(txid, [upsert("a", 1)])
    with pytest.raises(VersionConflict) as caught:
        await store.prepare(new_txid(), [upsert("a", 1)])
    copy = pickle.loads(pickle.dumps(caught.value))
    assert isinstance(copy, VersionConflict)
    assert copy.participant == "store"
    assert str(copy) == str(caught.value)


# -- storages: what the memory API reads -------------------------------------------------


async def commit_writes(store: Store, *writes: Write) -> str:
    txid = new_txid()
    await store.prepare(txid, list(writes))
    await store.commit(txid)
    return txid


async def test_a_singleton_claim_is_unique_among_committed_and_staged_facts(
    open_store: Opener,
) -> None:
    store = open_store()
    claim = singleton_claim("pref", "role", "diet")
    await commit_writes(store, UpsertFact(fact("a", 1), 0, claim=claim))
    with pytest.raises(VersionConflict, match="role=\"diet\" of type 'pref' already belongs"):
        await store.prepare(new_txid(), [UpsertFact(fact("b", 1), 0, claim=claim)])
    # The claim moves with the fact: once "a" gives it up, "b" may take it.
    await commit_writes(store, UpsertFact(fact("a", 2), 1, claim=None))
    staged = new_txid()
    await store.prepare(staged, [UpsertFact(fact("b", 1), 0, claim=claim)])
    with pytest.raises(VersionConflict, match="staged by another transaction"):
        await store.prepare(new_txid(), [UpsertFact(fact("c", 1), 0, claim=claim)])
    await store.commit(staged)
    assert await store.get("b") == fact("b", 1)
    # Nor may two facts of one transaction both take a claim.
    chef = singleton_claim("pref", "role", "chef")
    with pytest.raises(VersionConflict, match="role=\"chef\" of type 'pref' already belongs"):
        await store.prepare(
            new_txid(),
            [UpsertFact(fact("d", 1), 0, claim=chef), UpsertFact(fact("e", 1), 0, claim=chef)],
        )
    # A claim is checked against the committed state: one fact of a transaction cannot
    # take the claim another fact of it gives up (the memory API never sends this).
    with pytest.raises(VersionConflict, match="already belongs to fact 'b'"):
        await store.prepare(
            new_txid(),
            [UpsertFact(fact("b", 2), 1, claim=None), UpsertFact(fact("f", 1), 0, claim=claim)],
        )
    assert await store.recover() == []
    assert await store.get("d") is None and await store.get("e") is None
    assert await store.get("f") is None and await store.get("b") == fact("b", 1)


def ids(facts: list[FactRecord]) -> list[str]:
    return sorted(f.id for f in facts)


async def test_query_filters_on_type_session_and_payload_paths(open_store: Opener) -> None:
    store = open_store()
    rows = [
        FactRecord("a", "pref", {"role": "diet", "n": 1, "deep": {"x": True}}, 1, session_id="s1"),
        FactRecord("b", "pref", {"role": "tone", "n": 2}, 1, session_id="s2"),
        FactRecord("c", "note", {"role": "diet", "n": "1"}, 1),
        FactRecord("d", "note", {"n": 1.0, "deep": {"x": 1}}, 1),
    ]
    await commit_writes(store, *(UpsertFact(r, 0) for r in rows))
    assert ids(await store.query("pref", {}, None)) == ["a", "b"]
    assert ids(await store.query(None, {"payload.role": "diet"}, None)) == ["a", "c"]
    # JSON equality in every storage: not the string "1", but 1.0; true is not 1.
    assert ids(await store.query(None, {"payload.n": 1}, None)) == ["a", "d"]
    assert ids(await store.query(None, {"payload.n": "1"}, None)) == ["c"]
    assert ids(await store.query(None, {"payload.deep.x": True}, None)) == ["a"]
    assert ids(await store.query(None, {"payload.deep.x": 1}, None)) == ["d"]
    assert ids(await store.query(None, {"payload.deep.x": False}, None)) == []
    assert ids(await store.query(None, {"payload.missing": None}, None)) == ["a", "b", "c", "d"]
    assert ids(await store.query("pref", {}, "s2")) == ["b"]
    assert ids(await store.query(None, {"session_id": None}, None)) == ["c", "d"]
    with pytest.raises(UsageError, match="malformed"):
        await store.query(None, {"payload.role') OR 1=1 --": "x"}, None)


async def test_history_and_the_transaction_log_record_every_commit(open_store: Opener) -> None:
    store = open_store()
    first = await commit_writes(
        store, UpsertFact(fact("a", 1), 0), TransactionMeta(session_id="s1", actor="agent")
    )
    second = await commit_writes(
        store,
        DeleteFact("a", 1, FactRecord("a", "note", {}, 2, deleted=True, txid="t")),
        TransactionMeta(session_id="s1"),
    )
    await commit_writes(store, UpsertFact(fact("z", 1), 0), TransactionMeta(session_id="s2"))
    assert [(f.version, f.deleted) for f in await store.history("a")] == [(1, False), (2, True)]
    log = await store.transactions("s1", 10)
    assert [t.txid for t in log] == [second, first]
    assert log[1].actor == "agent"
    assert len(await store.transactions(None, 10)) == 3
    undo = await commit_writes(
        store, TransactionMeta(session_id="s1", kind="rollback", undoes=(second,))
    )
    assert [t.txid for t in await store.transactions("s1", 10)] == [first]
    assert undo not in [t.txid for t in await store.transactions(None, 10)]


async def test_a_version_history_holds_is_never_written_again(open_store: Opener) -> None:
    """A fact re-created after a delete continues its numbering. A writer that numbered
    its re-creation before another one re-created and deleted the fact again is refused,
    instead of replacing that version in history."""
    store = open_store()

    def tombstone(version: int) -> FactRecord:
        return FactRecord("a", "note", {}, version, deleted=True)

    await commit_writes(store, upsert("a", 1, text="first"))
    await commit_writes(store, DeleteFact("a", 1, tombstone(2)))
    late = UpsertFact(fact("a", 3, text="late"), 0)  # numbered now, prepared below
    await commit_writes(store, UpsertFact(fact("a", 3, text="again"), 0))
    await commit_writes(store, DeleteFact("a", 3, tombstone(4)))
    taken = "version 3 of fact 'a' is already in its history"
    with pytest.raises(VersionConflict, match=taken):
        await store.prepare(new_txid(), [late])
    with pytest.raises(VersionConflict, match=taken):  # named among the transaction's facts
        await store.prepare(new_txid(), [UpsertFact(fact("b", 1), 0), late])
    if isinstance(store, AsyncSupportsOnePhase):  # the path a last resource takes too
        with pytest.raises(VersionConflict, match=taken):
            await store.commit_one_phase(new_txid(), [late])
    assert await store.recover() == []
    history = await open_store().history("a")
    assert [(f.version, f.payload.get("text")) for f in history] == [
        (1, "first"),
        (2, None),
        (3, "again"),
        (4, None),
    ]
    await commit_writes(store, UpsertFact(fact("a", 5, text="numbered after"), 0))
    assert (await store.get("a")) == fact("a", 5, text="numbered after")


async def test_head_gives_the_state_and_the_newest_version_in_history(
    open_store: Opener,
) -> None:
    store = open_store()
    assert await store.head("a") == (None, 0)
    await commit_writes(store, upsert("a", 1, text="first"))
    assert await store.head("a") == (fact("a", 1, text="first"), 1)
    await commit_writes(store, DeleteFact("a", 1, FactRecord("a", "note", {}, 2, deleted=True)))
    assert await open_store().head("a") == (None, 2)
    await commit_writes(store, UpsertFact(fact("a", 3, text="again"), 0))
    assert await open_store().head("a") == (fact("a", 3, text="again"), 3)


async def test_versions_are_read_by_fact_and_version(open_store: Opener) -> None:
    store = open_store()
    for version in (1, 2, 3):
        await commit_writes(store, upsert("a", version, text=f"a{version}"))
    await commit_writes(store, upsert("b", 1, text="b1"))
    # Absent pairs are left out, and enough of them to need more than one query.
    keys = [("a", 2), *((f"x{i}", 1) for i in range(300)), ("a", 9), ("b", 1)]
    found = await open_store().versions(keys)
    assert sorted((f.id, f.version, f.payload["text"]) for f in found) == [
        ("a", 2, "a2"),
        ("b", 1, "b1"),
    ]
    assert await store.versions([]) == []


async def test_undo_reads_give_what_a_rollback_of_some_transactions_needs(
    open_store: Opener,
) -> None:
    store = open_store()
    txids = [new_txid() for _ in range(4)]

    def by(n: int, fact_id: str, version: int, text: str) -> FactRecord:
        """Version ``version`` of ``fact_id`` as transaction ``n`` writes it."""
        return replace(fact(fact_id, version, text=text), txid=txids[n])

    a1, c1, d1, a2, b1, a3, a4 = (
        by(0, "a", 1, "a1"),
        by(0, "c", 1, "c1"),
        by(0, "d", 1, "d1"),
        by(1, "a", 2, "a2"),
        by(1, "b", 1, "b1"),
        by(2, "a", 3, "a3"),
        by(3, "a", 4, "a4"),
    )
    tombstone = FactRecord("c", "note", {}, 2, deleted=True, txid=txids[2])
    batches: list[list[Write]] = [
        [UpsertFact(a1, 0), UpsertFact(c1, 0), UpsertFact(d1, 0)],
        [UpsertFact(a2, 1), UpsertFact(b1, 0)],
        [UpsertFact(a3, 2), DeleteFact("c", 1, tombstone)],
        [UpsertFact(a4, 3)],  # after the two undone: "a" is at 4
    ]
    for txid, writes in zip(txids, batches, strict=True):
        await store.prepare(txid, writes)
        await store.commit(txid)
    # Enough unknown txids beside the two to need more than one query.
    unknown = [new_txid() for _ in range(600)]
    reads = await open_store().undo_reads([*unknown[:300], txids[2], txids[1], *unknown[300:]])
    # Each fact goes back to the version before the earliest one they wrote; "b" they
    # created, so it has none.
    assert dict(reads.before) == {"a": a1, "c": c1}
    # The heads are those of the facts they wrote, and of no other ("d" they did not).
    assert dict(reads.heads) == {"a": (a4, 4), "b": (b1, 1), "c": (None, 2)}
    nothing = await store.undo_reads(unknown[:3])
    assert (dict(nothing.before), dict(nothing.heads)) == ({}, {})


async def test_the_log_gives_the_latest_writes_a_rollback_may_undo_in_each_session(
    open_store: Opener,
) -> None:
    store = open_store()
    sessions = ["s1", "s2", None]
    live: list[tuple[str, str | None]] = []  # (txid, session), oldest first
    for i in range(24):
        session = sessions[i % 3]
        txid = await commit_writes(store, upsert(f"f{i}", 1), TransactionMeta(session_id=session))
        live.append((txid, session))
    # Undo one write of each session, then two more across sessions in one rollback.
    txids = [txid for txid, _ in live]
    for undone in ([txids[21]], [txids[22]], [txids[23]], [txids[3], txids[10]]):
        await commit_writes(
            store, TransactionMeta(session_id="s1", kind="rollback", undoes=tuple(undone))
        )
        live = [entry for entry in live if entry[0] not in undone]
    store = open_store()
    for session in ["s1", "s2"]:
        expected = [txid for txid, s in reversed(live) if s == session]
        assert [t.txid for t in await store.transactions(session, 3)] == expected[:3]
        assert [t.txid for t in await store.transactions(session, 100)] == expected
    newest = [t.txid for t in await store.transactions(None, 5)]
    assert newest == [txid for txid, _ in reversed(live)][:5]
    assert [t.session_id for t in await store.transactions(None, 3)] == [None, "s2", "s1"]
    assert await store.transactions("s1", 0) == [] and await store.transactions(None, 0) == []
