"""The LangGraph checkpoint saver, on real stores and real graphs.

LangGraph's own conformance suite runs against both savers (the sync twin through a thin
async shim) on the embedded default and on Postgres + a Redis mirror + a Chroma server.
Then graphs: time travel, pending writes on resume, values that keep their types, a
restart; checkpoints stay out of the index; a thread's deletion leaves the agent's own
facts; a put cut at every point of the protocol leaves a checkpoint whole or absent on
the storage and the mirror alike.
"""

from __future__ import annotations

import asyncio
import itertools
import operator
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypedDict

import chromadb
import pytest
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.channels.delta import DeltaChannel
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    empty_checkpoint,
)
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from qdrant_client import AsyncQdrantClient

from chaos.servers import ChromaServer, PostgresServer, RedisServer
from coordinator import AsyncMemoryStore, Fact, MemoryStore, Policy, UsageError
from coordinator.embeddings import HashingEmbedder
from coordinator.integrations.langgraph import (
    BLOB,
    CHECKPOINT,
    HEAD,
    THREAD_SESSION,
    WRITE,
    AsyncLockstepSaver,
    LockstepSaver,
)
from participants.chroma import AsyncChromaIndex
from participants.postgres import AsyncPostgresStorage, PostgresStorage
from participants.qdrant import AsyncQdrantIndex
from participants.redis import AsyncRedisStorage, RedisStorage
from tests.support.crash import CrashAt, SimulatedCrash

EMBEDDER = HashingEmbedder(16)
EVERY_CAPABILITY_BUT_PRUNE = {
    "put",
    "put_writes",
    "get_tuple",
    "list",
    "delete_thread",
    "delete_for_runs",
    "copy_thread",
}


# -- LangGraph's conformance suite ----------------------------------------------------------


class SyncShim(BaseCheckpointSaver[str]):
    """The conformance suite calls the async methods: these call the saver's synchronous
    ones, on this thread or (``threaded``, as a caller outside the event loop would) on a
    worker thread."""

    def __init__(self, saver: BaseCheckpointSaver[str], *, threaded: bool = False) -> None:
        super().__init__(serde=saver.serde)
        self.saver = saver
        self.threaded = threaded

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.threaded:
            return await asyncio.to_thread(fn, *args, **kwargs)
        return fn(*args, **kwargs)

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        put: RunnableConfig = await self._call(
            self.saver.put, config, checkpoint, metadata, new_versions
        )
        return put

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await self._call(self.saver.put_writes, config, writes, task_id, task_path)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        found: CheckpointTuple | None = await self._call(self.saver.get_tuple, config)
        return found

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        def every() -> list[CheckpointTuple]:
            return list(self.saver.list(config, filter=filter, before=before, limit=limit))

        for found in await self._call(every):
            yield found

    async def adelete_thread(self, thread_id: str) -> None:
        await self._call(self.saver.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await self._call(self.saver.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self._call(self.saver.copy_thread, source_thread_id, target_thread_id)


def assert_conformant(report: Any) -> None:
    failures = {name: r.failures for name, r in report.results.items() if r.failures}
    assert not failures, failures
    passed = {name for name, r in report.results.items() if r.passed}
    assert passed == EVERY_CAPABILITY_BUT_PRUNE
    assert report.results["put"].tests_passed >= 10  # the suite ran, not skipped


@pytest.mark.anyio
async def test_the_async_saver_passes_langgraph_conformance_on_the_embedded_default(
    tmp_path: Path,
) -> None:
    @checkpointer_test(name="lockstep embedded")
    async def fresh() -> AsyncIterator[AsyncLockstepSaver]:
        store = await AsyncMemoryStore.open(tmp_path / uuid.uuid4().hex, embedder=EMBEDDER)
        yield AsyncLockstepSaver(store)
        assert (await store.verify()).clean
        await store.close()

    assert_conformant(await validate(fresh))


@pytest.mark.anyio
async def test_the_async_saver_passes_langgraph_conformance_on_postgres_redis_chroma(
    postgres_server: PostgresServer, redis_server: RedisServer, chroma_server: ChromaServer
) -> None:
    client = await chromadb.AsyncHttpClient(host="127.0.0.1", port=chroma_server.port)

    @checkpointer_test(name="lockstep postgres")
    async def fresh() -> AsyncIterator[AsyncLockstepSaver]:
        tag = uuid.uuid4().hex[:10]
        store = AsyncMemoryStore(
            AsyncPostgresStorage(postgres_server.create_database(f"lg_{tag}")),
            [AsyncChromaIndex(client, f"lg{tag}", embedder=EMBEDDER)],
            mirrors=[AsyncRedisStorage(redis_server.url, name="copy", prefix=f"lg{tag}:")],
        )
        yield AsyncLockstepSaver(store)
        assert (await store.verify()).clean  # the mirror holds what the storage holds
        await store.close()

    assert_conformant(await validate(fresh))


@pytest.mark.anyio
async def test_the_async_saver_passes_langgraph_conformance_on_redis(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    @checkpointer_test(name="lockstep redis")
    async def fresh() -> AsyncIterator[AsyncLockstepSaver]:
        prefix = f"lg{uuid.uuid4().hex[:10]}:"
        client = AsyncQdrantClient(path=str(tmp_path / prefix.rstrip(":")))
        index = AsyncQdrantIndex(client, "memories", embedder=EMBEDDER, owns_client=True)
        store = AsyncMemoryStore(AsyncRedisStorage(redis_server.url, prefix=prefix), [index])
        yield AsyncLockstepSaver(store)
        assert (await store.verify()).clean
        await store.close()

    assert_conformant(await validate(fresh))


@pytest.mark.anyio
async def test_the_sync_saver_passes_langgraph_conformance(tmp_path: Path) -> None:
    @checkpointer_test(name="lockstep sync")
    async def fresh() -> AsyncIterator[SyncShim]:
        store = MemoryStore.open(tmp_path / uuid.uuid4().hex, embedder=EMBEDDER)
        yield SyncShim(LockstepSaver(store))
        store.close()

    assert_conformant(await validate(fresh))


@pytest.mark.anyio
async def test_the_async_savers_synchronous_methods_pass_langgraph_conformance(
    tmp_path: Path,
) -> None:
    """Called from worker threads, as code outside the event loop calls them, the async
    saver's synchronous methods run on its loop and answer as its async ones."""

    @checkpointer_test(name="lockstep async, called synchronously")
    async def fresh() -> AsyncIterator[SyncShim]:
        store = await AsyncMemoryStore.open(tmp_path / uuid.uuid4().hex, embedder=EMBEDDER)
        yield SyncShim(AsyncLockstepSaver(store), threaded=True)
        assert (await store.verify()).clean
        await store.close()

    assert_conformant(await validate(fresh))


@pytest.mark.anyio
async def test_the_async_saver_serves_a_synchronous_graph_from_another_thread(
    tmp_path: Path,
) -> None:
    config: RunnableConfig = {"configurable": {"thread_id": "chat-1"}}
    store = await AsyncMemoryStore.open(tmp_path / "memory", embedder=EMBEDDER)
    saver = AsyncLockstepSaver(store)
    graph = chat_graph(saver)
    hello = {"messages": [HumanMessage(content="hello")]}
    await asyncio.to_thread(graph.invoke, hello, config)  # a synchronous caller
    await graph.ainvoke(hello, config)  # the same thread, on the loop
    state = await asyncio.to_thread(graph.get_state, config)
    assert state.values["turns"] == 2
    assert state.values == (await graph.aget_state(config)).values
    history = await asyncio.to_thread(lambda: list(saver.list(config)))
    assert [c.checkpoint["id"] for c in history] == [
        c.checkpoint["id"] async for c in saver.alist(config)
    ]
    with pytest.raises(UsageError, match="await its async methods"):
        saver.get_tuple(config)  # on the loop's own thread: waiting would stop it
    await asyncio.to_thread(saver.delete_thread, "chat-1")
    assert await saver.aget_tuple(config) is None
    assert (await store.verify()).clean
    await store.close()


# -- graphs ---------------------------------------------------------------------------------


class Chat(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    turns: int
    seen: datetime


def chat_graph(saver: BaseCheckpointSaver[Any]) -> Any:
    def reply(state: Chat) -> Chat:
        turns = state.get("turns", 0) + 1
        return {
            "messages": [AIMessage(content=f"reply {turns}")],
            "turns": turns,
            "seen": datetime(2026, 1, turns, tzinfo=UTC),
        }

    builder = StateGraph(Chat)
    builder.add_node("reply", reply)
    builder.add_edge(START, "reply")
    builder.add_edge("reply", END)
    return builder.compile(checkpointer=saver)


def messages_of(state: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(type(m).__name__, m.content) for m in state.get("messages", [])]


def test_a_thread_survives_a_restart_and_travels_back_in_time(tmp_path: Path) -> None:
    config: RunnableConfig = {"configurable": {"thread_id": "chat-1"}}
    inputs = [{"messages": [HumanMessage(content=f"hello {n}")]} for n in range(3)]
    with MemoryStore.open(tmp_path / "memory", embedder=EMBEDDER) as mem:
        graph = chat_graph(LockstepSaver(mem))
        for given in inputs:
            graph.invoke(given, config)
    reference = chat_graph(InMemorySaver())  # LangGraph's own saver, the same run
    for given in inputs:
        reference.invoke(given, config)

    with MemoryStore.open(tmp_path / "memory", embedder=EMBEDDER) as mem:
        graph = chat_graph(LockstepSaver(mem))
        state = graph.get_state(config)
        assert state.values["turns"] == 3
        messages = state.values["messages"]
        assert [type(m) for m in messages] == [HumanMessage, AIMessage] * 3  # not dicts
        assert messages[-1].content == "reply 3"
        assert state.values["seen"] == datetime(2026, 1, 3, tzinfo=UTC)  # not a str

        history = list(graph.get_state_history(config))
        expected = list(reference.get_state_history(config))
        assert [(s.metadata or {}).get("step") for s in history] == [
            (s.metadata or {}).get("step") for s in expected
        ]
        assert [messages_of(s.values) for s in history] == [messages_of(s.values) for s in expected]
        for newer, older in itertools.pairwise(history):
            assert newer.parent_config == older.config
        assert history[-1].parent_config is None

        after_first = [s for s in history if s.values.get("turns") == 1][-1]  # oldest
        back = graph.get_state(after_first.config)
        assert back.values["turns"] == 1 and len(back.values["messages"]) == 2
        # Forking from there continues that past, and leaves the thread's other branch.
        forked = graph.invoke({"messages": [HumanMessage(content="again")]}, after_first.config)
        assert forked["turns"] == 2 and len(forked["messages"]) == 4
        assert mem.verify().clean


def extend(state: list[str] | None, writes: Sequence[list[str]]) -> list[str]:
    return [*(state or []), *(item for write in writes for item in write)]


class Journal(TypedDict, total=False):
    # A DeltaChannel keeps most checkpoints' value as a sentinel: reading it walks the
    # parents' pending writes back to a snapshot, in get_tuple's order.
    log: Annotated[list[str], DeltaChannel(extend, snapshot_frequency=3)]


def test_a_delta_channel_is_rebuilt_from_the_stored_writes(tmp_path: Path) -> None:
    def note(state: Journal) -> Journal:
        return {"log": [f"entry {len(state.get('log') or [])}"]}

    def journal(saver: BaseCheckpointSaver[Any]) -> Any:
        builder = StateGraph(Journal)
        builder.add_node("note", note)
        builder.add_edge(START, "note")
        builder.add_edge("note", END)
        return builder.compile(checkpointer=saver)

    config: RunnableConfig = {"configurable": {"thread_id": "journal"}}
    reference = journal(InMemorySaver())
    with MemoryStore.open(tmp_path / "memory", embedder=EMBEDDER) as mem:
        graph = journal(LockstepSaver(mem))
        for n in range(8):
            graph.invoke({"log": [f"input {n}"]}, config)
            reference.invoke({"log": [f"input {n}"]}, config)
    with MemoryStore.open(tmp_path / "memory", embedder=EMBEDDER) as mem:
        graph = journal(LockstepSaver(mem))
        log = graph.get_state(config).values["log"]
        assert log == reference.get_state(config).values["log"]
        assert len(log) == 16 and log[-2:] == ["input 7", "entry 15"]
        ours = [s.values.get("log") for s in graph.get_state_history(config)]
        assert ours == [s.values.get("log") for s in reference.get_state_history(config)]


class Fan(TypedDict, total=False):
    done: Annotated[list[str], operator.add]


def test_a_finished_branch_is_not_run_again_when_a_failed_run_resumes(tmp_path: Path) -> None:
    runs = {"steady": 0, "flaky": 0}

    def steady(state: Fan) -> Fan:
        runs["steady"] += 1
        return {"done": ["steady"]}

    def flaky(state: Fan) -> Fan:
        runs["flaky"] += 1
        if runs["flaky"] == 1:
            raise RuntimeError("the tool timed out")
        return {"done": ["flaky"]}

    builder = StateGraph(Fan)
    builder.add_node("steady", steady)
    builder.add_node("flaky", flaky)
    builder.add_edge(START, "steady")
    builder.add_edge(START, "flaky")
    builder.add_edge("steady", END)
    builder.add_edge("flaky", END)
    config: RunnableConfig = {"configurable": {"thread_id": "fan"}}

    with MemoryStore.open(tmp_path / "memory", embedder=EMBEDDER) as mem:
        graph = builder.compile(checkpointer=LockstepSaver(mem))
        with pytest.raises(RuntimeError, match="timed out"):
            graph.invoke({"done": []}, config)
        # The steady branch's writes were saved against the checkpoint as pending writes.
        pending = graph.get_state(config).tasks
        assert {t.name for t in pending} == {"steady", "flaky"}
    with MemoryStore.open(tmp_path / "memory", embedder=EMBEDDER) as mem:
        graph = builder.compile(checkpointer=LockstepSaver(mem))
        result = graph.invoke(None, config)
    assert sorted(result["done"]) == ["flaky", "steady"]
    assert runs == {"steady": 1, "flaky": 2}


def test_checkpoints_stay_out_of_the_index_and_a_thread_deletion_spares_the_agents_facts(
    tmp_path: Path,
) -> None:
    with MemoryStore.open(tmp_path / "memory", embedder=EMBEDDER) as mem:
        note = mem.commit(
            Fact(type="note", payload={"content": "the user likes tea"}), session_id="chat-1"
        )
        graph = chat_graph(LockstepSaver(mem))
        config: RunnableConfig = {"configurable": {"thread_id": "chat-1"}}
        graph.invoke({"messages": [HumanMessage(content="hi")]}, config)
        graph.invoke(
            {"messages": [HumanMessage(content="hi again")]},
            {"configurable": {"thread_id": "chat-2"}},
        )

        saved = mem.query(session_id=THREAD_SESSION + "chat-1")
        assert {f["type"] for f in saved} == {CHECKPOINT, BLOB, HEAD}
        threads_written = {f["payload"]["thread_id"] for f in mem.query(typename=WRITE)}
        assert threads_written == {"chat-1", "chat-2"}
        assert mem.indexes[0].contents().committed == {note: 1}  # no checkpoint embedded
        assert [h.fact["id"] for h in mem.search("reply", k=10)] == [note]
        assert mem.verify().clean
        # repair has nothing to add either: the index still holds the note alone
        mem.repair()
        assert mem.indexes[0].contents().committed == {note: 1}

        LockstepSaver(mem).delete_thread("chat-1")
        assert mem.query(session_id=THREAD_SESSION + "chat-1") == []
        assert {f["payload"]["thread_id"] for f in mem.query(typename=WRITE)} == {"chat-2"}
        assert graph.get_state(config).values == {}
        assert mem.get(note) is not None  # the agent's own session "chat-1" is not touched
        assert graph.get_state({"configurable": {"thread_id": "chat-2"}}).values["turns"] == 1
        assert mem.verify().clean


def test_a_config_without_a_thread_id_is_refused_by_name(tmp_path: Path) -> None:
    with MemoryStore.open(tmp_path / "memory", embedder=EMBEDDER) as mem:
        saver = LockstepSaver(mem)
        with pytest.raises(UsageError, match=r"config\['configurable'\]\['thread_id'\]"):
            saver.get_tuple({"configurable": {}})
        with pytest.raises(UsageError, match="checkpoint_id"):
            saver.put_writes({"configurable": {"thread_id": "t"}}, [("ch", 1)], "task")
        assert mem.query() == []


# -- a put cut at every point ---------------------------------------------------------------


@pytest.fixture
def postgres_and_mirror(
    postgres_server: PostgresServer, redis_server: RedisServer
) -> Iterator[Callable[..., MemoryStore]]:
    opened: list[MemoryStore] = []

    def open_(dsn: str, prefix: str, **options: Any) -> MemoryStore:
        mem = MemoryStore(
            PostgresStorage(dsn, name="facts"),
            mirrors=[RedisStorage(redis_server.url, name="copy", prefix=prefix)],
            **options,
        )
        opened.append(mem)
        return mem

    yield open_
    for mem in opened:
        mem.close()


def checkpoint_with(saver: LockstepSaver, parent: Checkpoint | None, **values: Any) -> Checkpoint:
    checkpoint = empty_checkpoint()
    versions: dict[str, Any] = {} if parent is None else dict(parent["channel_versions"])
    for channel in values:
        versions[channel] = saver.get_next_version(versions.get(channel), None)
    checkpoint["channel_values"] = values
    checkpoint["channel_versions"] = versions
    return checkpoint


def test_a_put_cut_at_every_point_leaves_the_checkpoint_whole_or_absent(
    postgres_server: PostgresServer, postgres_and_mirror: Callable[..., MemoryStore]
) -> None:
    def attempt(point: str | None) -> tuple[CrashAt, str, str, Checkpoint, Checkpoint]:
        dsn = postgres_server.create_database(f"cut_{uuid.uuid4().hex[:12]}")
        prefix = f"cut{uuid.uuid4().hex[:8]}:"
        saver = LockstepSaver(postgres_and_mirror(dsn, prefix))
        config: RunnableConfig = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        first = checkpoint_with(saver, None, a="a1", b="b1")
        saver.put(config, first, {"step": 0}, first["channel_versions"])
        config["configurable"]["checkpoint_id"] = first["id"]
        second = checkpoint_with(saver, first, a="a2", c="c2")
        second["channel_values"]["b"] = "b1"
        changed = {c: second["channel_versions"][c] for c in ("a", "c")}
        hook = CrashAt(point)
        cut = LockstepSaver(postgres_and_mirror(dsn, prefix, fault_hook=hook))
        try:
            cut.put(config, second, {"step": 1}, changed)
        except SimulatedCrash:
            pass
        return hook, dsn, prefix, first, second

    probe = attempt(None)[0]
    assert "before_decision" in probe.seen and "after_decision" in probe.seen
    for point in probe.seen:
        hook, dsn, prefix, first, second = attempt(point)
        assert hook.fired, point
        again = postgres_and_mirror(dsn, prefix, policy=Policy(in_doubt_timeout=0.001))
        again.recover()
        latest = LockstepSaver(again).get_tuple({"configurable": {"thread_id": "t"}})
        assert latest is not None, point
        if probe.seen.index(point) >= probe.seen.index("after_decision"):
            assert latest.checkpoint["id"] == second["id"], point
            assert latest.checkpoint["channel_values"] == {"a": "a2", "b": "b1", "c": "c2"}
            assert latest.parent_config is not None
            assert latest.parent_config["configurable"]["checkpoint_id"] == first["id"]
        else:
            assert latest.checkpoint["id"] == first["id"], point
            assert latest.checkpoint["channel_values"] == {"a": "a1", "b": "b1"}
            assert len(again.query(typename=BLOB)) == 2, point  # nothing of the cut put
        report = again.verify()
        assert report.clean, (point, report)
        assert not any(report.staged.values()), point


def test_deleting_a_threads_latest_run_moves_its_head_back(tmp_path: Path) -> None:
    with MemoryStore.open(tmp_path / "memory", embedder=EMBEDDER) as mem:
        saver = LockstepSaver(mem)
        config: RunnableConfig = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        first = checkpoint_with(saver, None, a="a1")
        stored = saver.put(config, first, {"run_id": "run-1"}, first["channel_versions"])
        second = checkpoint_with(saver, first, a="a2")
        later = saver.put(stored, second, {"run_id": "run-2"}, second["channel_versions"])
        saver.put_writes(later, [("a", "pending")], "task-1")

        saver.delete_for_runs(["run-2"])
        latest = saver.get_tuple({"configurable": {"thread_id": "t"}})
        assert latest is not None and latest.checkpoint["id"] == first["id"]
        assert latest.checkpoint["channel_values"] == {"a": "a1"}
        assert [f["payload"]["value"] is not None for f in mem.query(typename=BLOB)] == [True]
        assert mem.query(typename=WRITE) == []  # the deleted checkpoint's writes went too

        saver.delete_for_runs(["run-1"])
        assert saver.get_tuple({"configurable": {"thread_id": "t"}}) is None
        assert mem.query() == []  # head included
        assert mem.verify().clean


@pytest.mark.parametrize("saver", ["lockstep", "langgraph-sqlite"])
def test_the_saver_benchmark_measures_a_whole_thread(tmp_path: Path, saver: str) -> None:
    from benchmarks.langgraph_saver import measure

    result = measure({"saver": saver, "turns": 3, "dir": str(tmp_path)})
    assert result["checkpoints"] == 9  # three a turn, as LangGraph writes them
    assert result["turn_p50_ms"] > 0 and result["get_state_ms"] > 0


def test_copying_an_older_thread_onto_a_newer_one_keeps_the_newer_latest(tmp_path: Path) -> None:
    with MemoryStore.open(tmp_path / "memory", embedder=EMBEDDER) as mem:
        saver = LockstepSaver(mem)
        old = checkpoint_with(saver, None, a="old")
        source: RunnableConfig = {"configurable": {"thread_id": "source", "checkpoint_ns": ""}}
        saver.put(source, old, {}, old["channel_versions"])
        new = checkpoint_with(saver, None, a="new")  # a later id
        target: RunnableConfig = {"configurable": {"thread_id": "target", "checkpoint_ns": ""}}
        saver.put(target, new, {}, new["channel_versions"])
        saver.copy_thread("source", "target")
        latest = saver.get_tuple({"configurable": {"thread_id": "target"}})
        assert latest is not None and latest.checkpoint["channel_values"] == {"a": "new"}
        assert len(list(saver.list({"configurable": {"thread_id": "target"}}))) == 2
        saver.copy_thread("target", "empty")  # into a thread with nothing: its latest too
        copied = saver.get_tuple({"configurable": {"thread_id": "empty"}})
        assert copied is not None and copied.checkpoint["id"] == new["id"]
