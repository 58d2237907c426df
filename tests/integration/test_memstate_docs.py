"""Every example of MemState's documentation, run with only imports and class names changed.

The examples are copied from MemState's README (quick start) and its "Core concept" page
(storage, schema registry, constraints, commit, rollback, hooks), sync and async. The
changes, each marked ``# changed:``, are import lines and class names
(``ChromaSyncHook`` -> ``ChromaIndex``), plus the private server's port for
``AsyncHttpClient`` (the docs assume one on localhost:8000). After each example the test
checks what the stores really hold.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import chromadb
import pytest
from pydantic import BaseModel

from chaos.servers import ChromaServer
from coordinator.embeddings import HashingEmbedder


@pytest.fixture(autouse=True)
def fresh_chroma(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The examples share Chroma's in-process client and a relative file: isolate them."""
    monkeypatch.chdir(tmp_path)
    try:
        chromadb.Client().delete_collection("agent_memory")
    except Exception:  # noqa: S110 - no such collection yet
        pass
    yield


@pytest.fixture(autouse=True)
def fast_embedder(monkeypatch: pytest.MonkeyPatch) -> None:
    # The examples pass no embedder, so the default (the offline e5 model) would run;
    # these tests check atomicity, not semantics, so a cheaper deterministic one stands in.
    from coordinator import embeddings

    monkeypatch.setattr(embeddings, "_default", HashingEmbedder(64))


def chroma_records(client: object, name: str = "agent_memory") -> list[dict[str, object]]:
    collection = client.get_collection(name)  # type: ignore[attr-defined]
    return list(collection.get(include=["metadatas"])["metadatas"])


def test_quick_start() -> None:
    from pydantic import BaseModel

    from coordinator import HookError, MemoryStore  # changed: from memstate import ...
    from participants.chroma import ChromaIndex  # changed: ...integrations.chroma ChromaSyncHook
    from participants.sqlite import SQLiteStorage  # changed: from memstate import SQLiteStorage

    # 1. Define Data Schema
    class UserPref(BaseModel):
        content: str
        role: str

    # 2. Setup Storage (Local)
    sqlite = SQLiteStorage("agent_memory.db")
    chroma = chromadb.Client()

    # 3. Initialize with Sync Hook
    mem = MemoryStore(sqlite)
    mem.add_hook(
        ChromaIndex(chroma, "agent_memory", text_field="content", metadata_fields=["role"])
    )
    mem.register_schema("preference", UserPref)

    # 4. Atomic Commit
    # Validates Pydantic model -> Writes SQL -> Upserts Vector
    try:
        mem.commit_model(model=UserPref(content="User prefers vegetarian", role="preference"))
    except HookError as e:
        print("Commit failed, SQL rolled back automatically:", e)  # noqa: T201

    [fact] = mem.query(typename="preference")
    assert fact["payload"] == {"content": "User prefers vegetarian", "role": "preference"}
    [point] = chroma_records(chroma)
    assert (point["fact_id"], point["state"], point["role"]) == (
        fact["id"],
        "committed",
        "preference",
    )

    # 5. Undo (if needed)
    mem.rollback(1)
    assert mem.query(typename="preference") == []
    assert chroma_records(chroma) == []
    assert mem.verify().clean


def test_storage() -> None:
    from coordinator import MemoryStore  # changed: from memstate import ...
    from participants.memory import InMemoryStorage  # changed: from memstate import ...

    store = MemoryStore(storage=InMemoryStorage())
    assert store.query() == []


def test_storage_async() -> None:
    from coordinator import AsyncMemoryStore  # changed: from memstate import ...
    from participants.memory import AsyncInMemoryStorage  # changed: from memstate import ...

    async def main() -> None:
        store = AsyncMemoryStore(storage=AsyncInMemoryStorage())
        assert await store.query() == []

    asyncio.run(main())


class UserPref(BaseModel):
    content: str
    role: str


def test_schema_registry() -> None:
    from coordinator import MemoryStore  # changed
    from participants.memory import InMemoryStorage  # changed

    store = MemoryStore(storage=InMemoryStorage())
    store.register_schema(typename="preference", model=UserPref)
    assert store.schemas.type_of(UserPref) == "preference"


def test_constraint() -> None:
    from coordinator import Constraint, MemoryStore  # changed
    from participants.memory import InMemoryStorage  # changed

    store = MemoryStore(storage=InMemoryStorage())
    store.register_schema(
        typename="preference",
        model=UserPref,
        constraint=Constraint(singleton_key="role", immutable=False),
    )
    first = store.commit_model(model=UserPref(content="I am vegetarian", role="preference"))
    second = store.commit_model(model=UserPref(content="I am vegan", role="preference"))
    assert first == second  # the insert became an update of the singleton
    [fact] = store.query(typename="preference")
    assert (fact["payload"]["content"], fact["version"]) == ("I am vegan", 2)


def test_commit_and_its_async_twin() -> None:
    from coordinator import AsyncMemoryStore, Constraint, MemoryStore  # changed
    from participants.memory import AsyncInMemoryStorage, InMemoryStorage  # changed

    store = MemoryStore(storage=InMemoryStorage())
    store.register_schema(
        typename="preference",
        model=UserPref,
        constraint=Constraint(singleton_key="role", immutable=False),
    )
    fact_id = store.commit_model(
        model=UserPref(content="I am vegetarian", role="preference"),
        session_id="session_1",
    )
    fact = store.get(fact_id)
    assert fact is not None and fact["session_id"] == "session_1"

    async def main() -> None:
        store = AsyncMemoryStore(storage=AsyncInMemoryStorage())
        store.register_schema(
            typename="preference",
            model=UserPref,
            constraint=Constraint(singleton_key="role", immutable=False),
        )
        fact_id = await store.commit_model(
            model=UserPref(content="I am vegetarian", role="preference"),
            session_id="session_1",
        )
        fact = await store.get(fact_id)
        assert fact is not None and fact["payload"]["content"] == "I am vegetarian"

    asyncio.run(main())


def test_rollback_and_its_async_twin() -> None:
    from coordinator import AsyncMemoryStore, Constraint, MemoryStore  # changed
    from participants.memory import AsyncInMemoryStorage, InMemoryStorage  # changed

    store = MemoryStore(storage=InMemoryStorage())
    store.register_schema(
        typename="preference",
        model=UserPref,
        constraint=Constraint(singleton_key="role", immutable=False),
    )
    fact_id = store.commit_model(
        model=UserPref(content="I am vegetarian", role="preference"),
        session_id="session_1",
    )
    store.rollback(steps=1, session_id="session_1")
    assert store.get(fact_id) is None
    # Unlike MemState, the undo is itself history: nothing is erased.
    assert [h["deleted"] for h in store.history(fact_id)] == [False, True]

    async def main() -> None:
        store = AsyncMemoryStore(storage=AsyncInMemoryStorage())
        store.register_schema(
            typename="preference",
            model=UserPref,
            constraint=Constraint(singleton_key="role", immutable=False),
        )
        fact_id = await store.commit_model(
            model=UserPref(content="I am vegetarian", role="preference"),
            session_id="session_1",
        )
        await store.rollback(steps=1, session_id="session_1")
        assert await store.get(fact_id) is None

    asyncio.run(main())


def test_hooks() -> None:
    from coordinator import Constraint, HookError, MemoryStore  # changed
    from participants.chroma import ChromaIndex  # changed: ChromaSyncHook
    from participants.memory import InMemoryStorage  # changed

    client = chromadb.Client()

    hook = ChromaIndex(  # changed: ChromaSyncHook
        client=client,
        collection_name="agent_memory",
        text_field="content",
        metadata_fields=["role"],
    )

    store = MemoryStore(storage=InMemoryStorage(), hooks=[hook])
    store.register_schema(
        typename="preference",
        model=UserPref,
        constraint=Constraint(singleton_key="role", immutable=False),
    )

    try:
        fact_id = store.commit_model(
            model=UserPref(content="I am vegetarian", role="preference"),
            session_id="session_1",
        )
    except HookError as e:
        print("Commit failed, operation rolled back automatically:", e)  # noqa: T201

    assert [m["fact_id"] for m in chroma_records(client)] == [fact_id]
    store.rollback(steps=1, session_id="session_1")
    assert store.get(fact_id) is None
    assert chroma_records(client) == []


def test_hooks_async(chroma_server: ChromaServer) -> None:
    from coordinator import AsyncMemoryStore, Constraint, HookError  # changed
    from participants.chroma import AsyncChromaIndex  # changed: AsyncChromaSyncHook
    from participants.memory import AsyncInMemoryStorage  # changed

    async def main() -> None:
        client = await chromadb.AsyncHttpClient(port=chroma_server.port)  # changed: port
        try:
            await client.delete_collection("agent_memory")
        except Exception:  # noqa: S110 - a fresh server has none
            pass

        hook = AsyncChromaIndex(  # changed: AsyncChromaSyncHook
            client=client,
            collection_name="agent_memory",
            text_field="content",
            metadata_fields=["role"],
        )

        store = AsyncMemoryStore(storage=AsyncInMemoryStorage(), hooks=[hook])
        store.register_schema(
            typename="preference",
            model=UserPref,
            constraint=Constraint(singleton_key="role", immutable=False),
        )

        try:
            fact_id = await store.commit_model(
                model=UserPref(content="I am vegetarian", role="preference"),
                session_id="session_1",
            )
        except HookError as e:
            print("Commit failed, operation rolled back automatically:", e)  # noqa: T201

        collection = await client.get_collection("agent_memory")
        points = await collection.get(include=["metadatas"])
        assert [m["fact_id"] for m in points["metadatas"] or []] == [fact_id]

        await store.rollback(steps=1, session_id="session_1")
        assert await store.get(fact_id) is None
        assert (await collection.get())["ids"] == []

    asyncio.run(main())
