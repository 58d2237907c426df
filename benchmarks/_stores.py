"""The stores each benchmark system runs on, built from one ``spec`` (a JSON-able dict).

``spec`` holds ``combo`` (one of :data:`COMBOS`, or a Redis storage's: ``redis``,
``redis + qdrant local``; those and ``sqlite + qdrant edge`` are Lockstep's only), ``dir`` (a private directory),
``collection`` and, per combination, ``pg_url``, ``redis_url`` + ``prefix``,
``chroma_port`` (from :class:`Servers`), and ``system`` (``lockstep-deferred`` turns on
``Policy(deferred_finish=True)``). Lockstep's stores are opened from their URLs, as a user
would; MemState's are built as its documentation shows, in its own environment.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from benchmarks._common import SameEmbedder, embed

COMBOS = [
    "sqlite",
    "sqlite + chroma embedded",
    "sqlite + qdrant local",
    "sqlite + qdrant edge",
    "postgres + qdrant local",
    "postgres + chroma server",
    "postgres + redis + chroma server",
]


def lockstep_store(spec: dict[str, Any], asynchronous: bool = False) -> Any:
    """Lockstep's memory store on the combination, from the stores' URLs.

    Optional ``spec["policy"]``: Policy fields to change; ``spec["log"]``: a decision log
    URL instead of the storage's own (``?group_commit=0`` on a SQLite log turns group
    commit off); ``spec["index_query"]``: more query parameters for the index URL
    (``&combine_writes=0``); ``spec["storage_query"]``: a query for a SQLite storage's URL
    (``?group_commit=0``).
    """
    from coordinator import AsyncMemoryStore, MemoryStore, Policy
    from coordinator.plugins import open_decision_log, open_participant

    d = Path(spec["dir"])
    combo = spec["combo"]
    if combo.startswith("sqlite"):
        storage_url = f"sqlite:///{d / 'facts.db'}{spec.get('storage_query', '')}"
    elif combo.startswith("redis"):
        storage_url = redis_storage_url(spec)
    else:
        storage_url = spec["pg_url"]
    mirror_urls = [redis_storage_url(spec)] if "+ redis" in combo else []
    options = f"collection={spec['collection']}&text_field=content{spec.get('index_query', '')}"
    index_urls = []
    if "qdrant edge" in combo:
        index_urls.append(f"qdrant+edge:///{d / 'edge'}?{options}")
    elif "qdrant" in combo:
        index_urls.append(f"qdrant+local:///{d / 'qdrant'}?{options}")
    elif "server" in combo:
        index_urls.append(f"chroma+http://127.0.0.1:{spec['chroma_port']}?{options}")
    elif "chroma" in combo:
        index_urls.append(f"chroma+local:///{d / 'chroma'}?{options}")

    def part(url: str, **kwargs: Any) -> Any:
        return open_participant(url, asynchronous=asynchronous, **kwargs)  # type: ignore[call-overload]

    policy = {"deferred_finish": spec["system"] == "lockstep-deferred", **spec.get("policy", {})}
    log: Any = spec.get("log")
    if log is not None:
        log = open_decision_log(log, asynchronous=asynchronous)
    store = AsyncMemoryStore if asynchronous else MemoryStore
    return store(
        part(storage_url, name="facts"),
        [part(url, embedder=SameEmbedder()) for url in index_urls],
        mirrors=[part(url, name="copy") for url in mirror_urls],
        log=log,
        policy=Policy(**policy),
    )


def redis_storage_url(spec: dict[str, Any]) -> str:
    """The URL of the spec's Redis storage (or mirror), which is also that of the decision
    log it keeps beside its facts."""
    return f"{spec['redis_url']}?prefix={spec['prefix']}"


def _chroma_client(spec: dict[str, Any]) -> Any:
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    import chromadb

    if "server" in spec["combo"]:
        return chromadb.HttpClient(host="127.0.0.1", port=spec["chroma_port"])
    return chromadb.PersistentClient(path=str(Path(spec["dir"]) / "chroma"))


# -- MemState's stores (run in its own environment) -------------------------------------


def _chroma_configuration(spec: dict[str, Any]) -> Any:
    """MemState's collection with Lockstep's HNSW persistence (``--memstate-chroma-sync``);
    the space stays Chroma's default, as MemState makes it."""
    return {"hnsw": {"sync_threshold": int(spec["memstate_chroma_sync"])}}


def _chroma_embedding() -> Any:
    from chromadb import Documents, EmbeddingFunction, Embeddings

    class Same(EmbeddingFunction[Documents]):
        def __init__(self) -> None:
            pass

        def __call__(self, input: Documents) -> Embeddings:
            return [embed(t) for t in input]  # type: ignore[misc]

        @staticmethod
        def name() -> str:
            return "benchmark-hashing"

    return Same()


class _RedisCopy:
    """A MemState hook keeping a JSON copy of every fact in Redis (its way to add a store)."""

    def __init__(self, url: str, prefix: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.prefix = prefix

    def __call__(self, op: Any, fact_id: str, fact: Any) -> None:
        if fact is None or str(op).endswith("DELETE"):
            self.client.delete(f"{self.prefix}{fact_id}")
        else:
            self.client.set(f"{self.prefix}{fact_id}", fact.model_dump_json())

    def search(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []


class _AsyncRedisCopy:
    """:class:`_RedisCopy` for MemState's ``AsyncMemoryStore``."""

    def __init__(self, url: str, prefix: str) -> None:
        import redis.asyncio

        self.aclient = redis.asyncio.Redis.from_url(url)
        self.prefix = prefix

    async def __call__(self, op: Any, fact_id: str, fact: Any) -> None:
        if fact is None or str(op).endswith("DELETE"):
            await self.aclient.delete(f"{self.prefix}{fact_id}")
        else:
            await self.aclient.set(f"{self.prefix}{fact_id}", fact.model_dump_json())

    async def search(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []


NO_MEMSTATE_ON_EDGE = (
    "MemState's Qdrant hook takes a qdrant-client; Qdrant Edge has an API of its own"
)


def memstate_runs_on(combo: str) -> bool:
    """Whether MemState can run on ``combo`` (not on Qdrant Edge)."""
    return "qdrant edge" not in combo


def _no_edge(combo: str) -> None:
    if not memstate_runs_on(combo):
        raise NotImplementedError(NO_MEMSTATE_ON_EDGE)


def memstate_store(spec: dict[str, Any]) -> Any:
    from memstate import MemoryStore, SQLiteStorage

    d = Path(spec["dir"])
    combo = spec["combo"]
    _no_edge(combo)
    storage: Any
    if combo.startswith("sqlite"):
        storage = SQLiteStorage(str(d / "facts.db"))
        if spec.get("memstate_synchronous", "normal") != "normal":  # MemState sets NORMAL
            storage._conn.execute(f"PRAGMA synchronous={spec['memstate_synchronous'].upper()}")
    else:
        from memstate.backends.postgres import PostgresStorage

        storage = PostgresStorage(spec["pg_url"].replace("postgresql://", "postgresql+psycopg://"))
    hooks: list[Any] = []
    if "redis" in combo:
        hooks.append(_RedisCopy(spec["redis_url"], spec["prefix"]))
    if "qdrant" in combo:
        from memstate.integrations.qdrant import QdrantSyncHook
        from qdrant_client import QdrantClient

        client = QdrantClient(path=str(d / "qdrant"))
        hooks.append(QdrantSyncHook(client, "memories", embedding_fn=embed, text_field="content"))
    elif "chroma" in combo:
        from memstate.integrations.chroma import ChromaSyncHook

        client = _chroma_client(spec)
        if spec.get("memstate_chroma_sync"):  # made before MemState opens it
            client.get_or_create_collection(
                spec["collection"],
                embedding_function=_chroma_embedding(),
                configuration=_chroma_configuration(spec),
            )
        hooks.append(
            ChromaSyncHook(
                client,
                spec["collection"],
                embedding_fn=_chroma_embedding(),
                text_field="content",
            )
        )
    return MemoryStore(storage, hooks=hooks)


async def memstate_store_async(spec: dict[str, Any]) -> Any:
    from memstate import AsyncMemoryStore, AsyncSQLiteStorage

    d = Path(spec["dir"])
    combo = spec["combo"]
    _no_edge(combo)
    if "chroma" in combo and "server" not in combo:
        raise NotImplementedError("MemState's async Chroma hook needs a Chroma server")
    storage: Any
    if spec.get("memstate_synchronous", "normal") != "normal":
        raise NotImplementedError("--memstate-synchronous applies to the threaded modes")
    if combo.startswith("sqlite"):
        storage = AsyncSQLiteStorage(str(d / "facts.db"))
        await storage.connect()
    else:
        from memstate.backends.postgres import AsyncPostgresStorage

        url = spec["pg_url"].replace("postgresql://", "postgresql+psycopg://")
        storage = AsyncPostgresStorage(url)
        await storage.create_tables()
    hooks: list[Any] = []
    if "redis" in combo:
        hooks.append(_AsyncRedisCopy(spec["redis_url"], spec["prefix"]))
    if "qdrant" in combo:
        from memstate.integrations.qdrant import AsyncQdrantSyncHook
        from qdrant_client import AsyncQdrantClient

        client = AsyncQdrantClient(path=str(d / "qdrant"))
        hooks.append(
            AsyncQdrantSyncHook(client, "memories", embedding_fn=embed, text_field="content")
        )
    elif "chroma" in combo:
        import chromadb
        from memstate.integrations.chroma import AsyncChromaSyncHook

        server = await chromadb.AsyncHttpClient(host="127.0.0.1", port=spec["chroma_port"])
        if spec.get("memstate_chroma_sync"):
            await server.get_or_create_collection(
                spec["collection"],
                embedding_function=_chroma_embedding(),
                configuration=_chroma_configuration(spec),
            )
        hooks.append(
            AsyncChromaSyncHook(
                server, spec["collection"], embedding_fn=_chroma_embedding(), text_field="content"
            )
        )
    return AsyncMemoryStore(storage, hooks=hooks)


class Servers:
    """Private Postgres, Redis and Chroma servers, started on first use."""

    def __init__(self, base: Path) -> None:
        from chaos.campaign import Servers as CampaignServers

        self._servers = CampaignServers(base)

    def spec_for(self, combo: str) -> dict[str, Any]:
        spec: dict[str, Any] = {"collection": f"c{uuid.uuid4().hex[:12]}"}
        tag = uuid.uuid4().hex[:10]
        if combo.startswith("postgres"):
            pg = self._servers.pg()
            pg.create_database(f"b{tag}")
            spec["pg_url"] = f"postgresql://postgres@127.0.0.1:{pg.port}/b{tag}"
        if "redis" in combo:
            spec["redis_url"] = self._servers.rd().url
            spec["prefix"] = f"b{tag}:"
        if "server" in combo:
            spec["chroma_port"] = self._servers.ch().port
        return spec

    def release(self, spec: dict[str, Any]) -> None:
        """Drop what :meth:`spec_for` made on the servers (best effort)."""
        if "pg_url" in spec:
            import psycopg

            with psycopg.connect(self._servers.pg().dsn, autocommit=True) as conn:
                name = spec["pg_url"].rsplit("/", 1)[1]
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if "chroma_port" in spec:
            import chromadb

            client = chromadb.HttpClient(host="127.0.0.1", port=spec["chroma_port"])
            try:
                client.delete_collection(spec["collection"])
            except Exception:  # noqa: S110 - the run may have died before creating it
                pass

    def stop(self) -> None:
        self._servers.stop()
