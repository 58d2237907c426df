"""Chroma's calls, on real Chroma (embedded and server): concurrent prepares share one
upsert, concurrent commits one batch, and a commit makes only the calls it needs.

Each test holds the combiner's turn while transactions queue behind it, so the batch the
next turn writes is known exactly; assertions read the collection's real points.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import chromadb
import pytest

from chaos.servers import ChromaServer
from coordinator import DeleteFact, TransactionAborted, new_txid
from coordinator.embeddings import HashingEmbedder
from coordinator.records import Write
from participants._async.combine import AsyncWriteCombiner
from participants._sync.combine import RECENT, WriteCombiner
from participants.chroma import AsyncChromaIndex, ChromaIndex
from tests.contract.test_index_contract import fact, upsert

EMBEDDER = HashingEmbedder(16)


@pytest.fixture(params=["embedded", "server"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> object:
    if request.param == "embedded":
        return chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    server: ChromaServer = request.getfixturevalue("chroma_server")
    return chromadb.HttpClient(host="127.0.0.1", port=server.port)


@pytest.fixture
def index(client: object) -> Iterator[ChromaIndex]:
    opened = ChromaIndex(client, f"c{uuid.uuid4().hex[:12]}", "content", embedder=EMBEDDER)
    yield opened
    opened.close()


def stager_of(index: ChromaIndex) -> WriteCombiner[Any]:
    assert index._stager is not None
    return index._stager


def finisher_of(index: ChromaIndex) -> WriteCombiner[Any]:
    assert index._finisher is not None
    return index._finisher


def wait_queued(combiner: WriteCombiner[Any] | AsyncWriteCombiner[Any], n: int) -> None:
    deadline = time.monotonic() + 10
    while len(combiner._queue.requests) < n:
        assert time.monotonic() < deadline, "the calls never queued"
        time.sleep(0.005)


def queue_behind(
    combiner: WriteCombiner[Any],
    calls: dict[str, Callable[[], object]],
    meanwhile: Callable[[], object] = lambda: None,
) -> dict[str, BaseException | None]:
    """Run each call on its own thread while holding ``combiner``'s turn until all have
    queued (and ``meanwhile`` has run); return what each raised (``None``: nothing)."""
    outcome: dict[str, BaseException | None] = {}

    def run(key: str, call: Callable[[], object]) -> None:
        try:
            call()
            outcome[key] = None
        except BaseException as exc:
            outcome[key] = exc

    threads = [threading.Thread(target=run, args=item) for item in calls.items()]
    with combiner._turn:
        for thread in threads:
            thread.start()
        wait_queued(combiner, len(calls))
        assert outcome == {}, "no call may finish while the turn is held"
        meanwhile()
    for thread in threads:
        thread.join(30)
    return outcome


def prepare_call(index: ChromaIndex, i: int, txid: str) -> Callable[[], object]:
    return lambda: index.prepare(txid, [upsert(fact(f"f{i}", 1, f"note {i}"))])


def test_queued_prepares_and_commits_are_written_in_one_call_each(index: ChromaIndex) -> None:
    warm = new_txid()  # opens the collection, so every queued prepare is past that step
    index.prepare(warm, [upsert(fact("warm", 1, "opens the collection"))])
    index.abort(warm)
    txids = [new_txid() for _ in range(5)]
    written, fenced = txids[:-1], txids[-1]
    stager, finisher = stager_of(index), finisher_of(index)
    calls = stager.calls
    # Abort the last before its write starts: the fence keeps it out of the batch.
    outcome = queue_behind(
        stager,
        {t: prepare_call(index, i, t) for i, t in enumerate(txids)},
        meanwhile=lambda: index.abort(fenced),
    )
    assert all(outcome[t] is None for t in written), outcome
    assert isinstance(outcome[fenced], TransactionAborted), outcome
    assert stager.calls == calls + 1, "four prepares, one upsert"
    assert index.recover() == sorted(written) and index.contents().committed == {}

    calls = finisher.calls
    outcome = queue_behind(finisher, {t: functools.partial(index.commit, t) for t in written})
    assert all(outcome[t] is None for t in written), outcome
    assert finisher.calls == calls + 1, "four commits, one batch"
    assert index.recover() == []
    assert index.contents().committed == {f"f{i}": 1 for i in range(4)}


def test_a_failing_request_fails_alone(client: object) -> None:
    """A request Chroma refuses (a duplicate id) fails by itself; its batch mates land."""
    collection = client.get_or_create_collection(  # type: ignore[attr-defined]
        f"c{uuid.uuid4().hex[:12]}", embedding_function=None
    )

    def write(ids: list[str]) -> None:
        collection.upsert(ids=ids, embeddings=[[1.0, 0.0]] * len(ids))

    combiner: WriteCombiner[str] = WriteCombiner("chroma:test", write)
    requests = {"a": ["a1", "a2"], "bad": ["b1", "b1"], "c": ["c1"]}
    outcome = queue_behind(
        combiner,
        {key: functools.partial(combiner.submit, key, ids) for key, ids in requests.items()},
    )
    assert outcome["a"] is None and outcome["c"] is None, outcome
    assert outcome["bad"] is not None and "b1" in str(outcome["bad"])
    assert sorted(collection.get()["ids"]) == ["a1", "a2", "c1"]
    assert combiner.calls == 4, "the combined call, then each request on its own"


@pytest.mark.anyio
async def test_a_prepare_cancelled_while_queued_is_never_written(client: object) -> None:
    index = AsyncChromaIndex(client, f"c{uuid.uuid4().hex[:12]}", "content", embedder=EMBEDDER)
    first = new_txid()
    await index.prepare(first, [upsert(fact("a", 1, "first"))])
    combiner = index._stager
    assert combiner is not None
    given_up = new_txid()
    cancelled: list[bool] = []

    async def give_up() -> None:  # as the coordinator does at its prepare timeout
        with anyio.move_on_after(0.2) as scope:
            await index.prepare(given_up, [upsert(fact("b", 1, "given up"))])
        cancelled.append(scope.cancelled_caught)

    async with combiner._turn, anyio.create_task_group() as tasks:
        tasks.start_soon(give_up)
    assert cancelled == [True]
    assert combiner._queue.requests == [], "a cancelled prepare must leave the queue"
    later = new_txid()
    await index.prepare(later, [upsert(fact("c", 1, "later"))])
    assert await index.recover() == sorted([first, later])


@contextlib.contextmanager
def chroma_calls(index: ChromaIndex) -> Iterator[list[str]]:
    """The names of the collection methods called inside the block, in order."""
    calls: list[str] = []
    cls = type(index._collection)
    with pytest.MonkeyPatch.context() as patch:
        for name in ("get", "update", "upsert", "delete"):
            real = getattr(cls, name)

            def counted(
                self: object, *args: Any, _real: Any = real, _name: str = name, **kwargs: Any
            ) -> Any:
                calls.append(_name)
                return _real(self, *args, **kwargs)

            patch.setattr(cls, name, counted)
        yield calls


def test_a_commit_makes_only_the_calls_it_needs(client: object) -> None:
    """Points this process staged are committed without reading them back: an insert is
    one update, an update also deletes the version it replaces (one call, by filter), a
    delete then removes its marker. A branch staged elsewhere is read once."""
    name = f"c{uuid.uuid4().hex[:12]}"
    index = ChromaIndex(client, name, "content", embedder=EMBEDDER, combine_writes=False)
    steps: list[tuple[list[Write], list[str], dict[str, int]]] = [
        ([upsert(fact("a", 1, "green tea"))], ["update"], {"a": 1}),
        ([upsert(fact("a", 2, "mint tea"))], ["update", "delete"], {"a": 2}),
        ([DeleteFact("a", 2)], ["update", "delete", "delete"], {}),
    ]
    for writes, expected, committed in steps:
        txid = new_txid()
        index.prepare(txid, writes)
        with chroma_calls(index) as calls:
            index.commit(txid)
        assert calls == expected
        assert index.contents().committed == committed and index.recover() == []
    assert client.get_collection(name).get()["ids"] == []  # type: ignore[attr-defined]

    elsewhere = new_txid()  # staged by another process: this one knows nothing of it
    ChromaIndex(client, name, "content", embedder=EMBEDDER).prepare(
        elsewhere, [upsert(fact("b", 1, "oolong"))]
    )
    with chroma_calls(index) as calls:
        index.commit(elsewhere)
    assert calls == ["get", "update"]
    assert index.contents().committed == {"b": 1} and index.recover() == []
    assert index._staged == {}, "a branch that ended is forgotten"


def test_remembered_points_are_forgotten_and_a_stale_memory_writes_nothing(
    client: object,
) -> None:
    """What a prepare remembers goes when the branch ends, also when the abort lands while
    its upsert runs or comes from another process (a recovery listing forgets it); and a
    commit from memory whose points another process has since replaced (its finish
    deferred meanwhile) leaves the newer version alone."""
    name = f"c{uuid.uuid4().hex[:12]}"
    index = ChromaIndex(client, name, "content", embedder=EMBEDDER, combine_writes=False)
    aborted = new_txid()
    index.prepare(aborted, [upsert(fact("a", 1, "green tea"))])
    index.abort(aborted)
    assert index._staged == {} and index.recover() == []

    racing = new_txid()  # its abort lands while the upsert runs
    real_upsert = type(index._collection).upsert

    def upsert_then_aborted(self: object, *args: Any, **kwargs: Any) -> None:
        real_upsert(self, *args, **kwargs)
        index.abort(racing)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(index._collection), "upsert", upsert_then_aborted)
        index.prepare(racing, [upsert(fact("a", 1, "green tea"))])
    assert index._staged == {} and index.recover() == []

    first = new_txid()  # committed, its index finish deferred
    index.prepare(first, [upsert(fact("a", 1, "green tea"))])
    other = ChromaIndex(client, name, "content", embedder=EMBEDDER)  # another process
    second = new_txid()
    other.prepare(second, [upsert(fact("a", 2, "mint tea"))])
    other.commit_many([first, second])  # its recovery finishes both
    assert other.contents().committed == {"a": 2}
    index.commit(first)  # the deferred finish, from memory: its points are gone
    assert index.contents().committed == {"a": 2} and index.recover() == []
    assert index._staged == {}

    left = new_txid()  # this process's coordinator gave up on it; another's recovery aborts it
    index.prepare(left, [upsert(fact("b", 1, "oolong"))])
    kept = new_txid()  # still staged: its memory stays
    index.prepare(kept, [upsert(fact("c", 1, "sencha"))])
    other.abort(left)
    assert index.recover() == [kept]
    assert list(index._staged) == [kept], "a branch another process ended is forgotten"


@pytest.mark.parametrize("linger", [0.0, 0.5])
def test_after_a_combined_write_the_next_turn_waits_for_the_callers_it_released(
    linger: float,
) -> None:
    """Without the wait, callers released by one write come back while the next runs and
    write in alternate turns; with it, a caller arriving shortly after joins the turn."""
    batches: list[list[str]] = []

    def write(items: list[str]) -> None:
        time.sleep(0.2)  # the wait is up to linger x this
        batches.append(list(items))

    combiner: WriteCombiner[str] = WriteCombiner("chroma:test", write, linger=linger)
    combiner.submit("alone", ["alone"])  # no contention: written at once, nothing waits
    assert batches == [["alone"]] and not combiner._waited
    outcome = queue_behind(
        combiner, {key: functools.partial(combiner.submit, key, [key]) for key in "ab"}
    )
    assert outcome == {"a": None, "b": None} and batches[-1] == ["a", "b"]

    def late() -> None:
        time.sleep(0.01)  # after "c" took the turn, well inside the wait
        combiner.submit("d", ["d"])

    thread = threading.Thread(target=late)
    thread.start()
    combiner.submit("c", ["c"])
    thread.join(30)
    if linger:
        assert batches[2:] == [["c", "d"]] and list(combiner._waited) == [2]
    else:
        assert batches[2:] == [["c"], ["d"]] and not combiner._waited


def test_contention_is_remembered_so_callers_are_not_written_one_at_a_time() -> None:
    """A write that holds the interpreter (embedded Chroma) keeps the other callers from
    queueing while it runs: each turn found one request, did not wait, and the callers
    wrote one at a time (a probe, eight threads rolling back: two write calls in three
    carried one point). A turn waits when one of the recent turns wrote several requests
    or saw one arrive while it wrote; a lone caller's turns still write at once."""
    batches: list[list[str]] = []
    pause = [0.4]  # a turn waits up to half of the last write

    def write(items: list[str]) -> None:
        time.sleep(pause[0])
        batches.append(list(items))

    combiner: WriteCombiner[str] = WriteCombiner("chroma:test", write, linger=0.5)

    def submit_later(key: str, written: int, delay: float) -> threading.Thread:
        """Submit ``key`` ``delay`` seconds after ``written`` batches were written."""

        def run() -> None:
            deadline = time.monotonic() + 30
            while len(batches) < written and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(delay)
            combiner.submit(key, [key])

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    # "b" arrives while "a" is written alone, "c" just after b's turn began: b waits.
    late = [submit_later("b", 0, 0.1), submit_later("c", 1, 0.02)]
    combiner.submit("a", ["a"])
    for thread in late:
        thread.join(30)
    assert batches == [["a"], ["b", "c"]]

    # "d" waits and finds nobody; the turn after it still waits, and "f" joins "e".
    combiner.submit("d", ["d"])
    thread = submit_later("f", 3, 0.02)
    combiner.submit("e", ["e"])
    thread.join(30)
    assert batches[2:] == [["d"], ["e", "f"]]

    # A lone caller: once the recent turns saw no contention, its turns do not wait.
    pause[0] = 0.01
    for i in range(RECENT):
        combiner.submit(f"alone {i}", [f"alone {i}"])
    combiner._waited.clear()
    combiner.submit("last", ["last"])
    assert batches[-1] == ["last"] and not combiner._waited, "a lone caller waited"


@pytest.mark.anyio
async def test_a_caller_cancelled_while_its_turn_waits_is_never_written() -> None:
    """The turn's holder cancelled inside the wait (its prepare timed out) leaves the queue
    and the turn; the caller queued behind it is written without it."""
    batches: list[list[str]] = []

    async def write(items: list[str]) -> None:
        await anyio.sleep(0.4)  # the next turn waits up to half of this
        batches.append(list(items))

    combiner: AsyncWriteCombiner[str] = AsyncWriteCombiner("chroma:test", write, linger=0.5)
    # Three arrive while "a" is written: the turns after wait, until three are queued.
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(combiner.submit, "a", ["a"])
        await anyio.sleep(0.05)
        for key in "bcd":
            tasks.start_soon(combiner.submit, key, [key])
    assert batches == [["a"], ["b", "c", "d"]]
    cancelled: list[bool] = []

    async def give_up() -> None:
        with anyio.move_on_after(0.08) as scope:  # inside the wait of up to 0.2 s
            await combiner.submit("x", ["x"])
        cancelled.append(scope.cancelled_caught)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(give_up)
        await anyio.sleep(0.01)  # "x" holds the turn and waits
        tasks.start_soon(combiner.submit, "y", ["y"])
    assert cancelled == [True]
    assert batches[2:] == [["y"]], "the cancelled caller must not be written"
    assert combiner._queue.requests == []


def test_a_transaction_larger_than_chromas_batch_limit_is_written_in_parts(
    client: Any, tmp_path: Path
) -> None:
    """Chroma refuses a call of more records than its limit: such a transaction was a
    VoteRejected, and a deferred batch of large transactions could never be finished."""
    from coordinator import Fact, MemoryStore, Policy, VersionConflict
    from participants.sqlite import SQLiteStorage

    most = client.get_max_batch_size()
    collection = f"c{uuid.uuid4().hex[:12]}"
    index = ChromaIndex(client, collection, "content", embedder=EMBEDDER)
    storage = SQLiteStorage(tmp_path / "facts.db", name="facts")
    with MemoryStore(storage, [index], policy=Policy(deferred_finish=True)) as mem:
        with mem.transaction() as tx:
            ids = [
                tx.commit(Fact(type="note", payload={"content": f"n {i}"})) for i in range(most + 1)
            ]
        with mem.transaction() as tx:
            for fact_id in ids:
                tx.update(fact_id, {"payload": {"content": "revised"}})
        mem.flush()  # one batch: both transactions' points, twice the limit
        contents = index.contents()
        assert contents.committed == dict.fromkeys(ids, 2) and contents.pending == ()
        points = client.get_collection(collection)
        assert points.count() == most + 1  # the first versions are gone

        # Refused by the storage after the index staged more points than the limit: every
        # staged point is removed.
        with pytest.raises(VersionConflict), mem.transaction() as tx:
            for fact_id in ids:
                tx.update(fact_id, {"payload": {"content": "lost"}})
            mem.update(ids[0], {"payload": {"content": "first"}})
        mem.flush()  # that update's own phase 2
        contents = index.contents()
        assert contents.pending == () and points.count() == most + 1
        assert {f["payload"]["content"] for f in mem.query()} == {"revised", "first"}
