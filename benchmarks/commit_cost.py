"""Commit cost: Lockstep against MemState 0.5.1 on the same stores, side by side.

Inserts, updates, rollbacks and deletes through each system's memory API, with 1 writer,
8 writer threads and 8 asyncio tasks, on every backend combination. Each writer has its
own facts and session (no conflicts). Both systems get the same deterministic embedder, so
the layer is measured, not a model. Every measurement runs in its own child process (MemState
in its own environment, ``benchmarks/.venv-memstate``); systems alternate inside every round,
and the first system of a round alternates too. Lockstep is durable (SQLite
``synchronous=FULL``, Postgres ``fsync=on``, Redis ``appendfsync always``); MemState keeps its
own settings (SQLite ``synchronous=NORMAL``).

    python -m benchmarks.commit_cost [--ops 200] [--rounds 2] [--combos a,b] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks._common import ROOT, SameEmbedder, embed, ensure_memstate_env, machine

COMBOS = [
    "sqlite",
    "sqlite + chroma embedded",
    "sqlite + qdrant local",
    "postgres + qdrant local",
    "postgres + chroma server",
    "postgres + redis + chroma server",
]
MODES = {"1 writer": (1, False), "8 threads": (8, False), "8 asyncio tasks": (8, True)}
OPS = ["insert", "update", "rollback", "delete"]
SYSTEMS = ["memstate", "lockstep"]


# -- the child: one system, one combination, one mode -------------------------------------


def child(spec: dict[str, Any]) -> dict[str, Any]:
    writers, asynchronous = MODES[spec["mode"]]
    per_writer = max(1, spec["ops"] // writers)
    if asynchronous:
        return asyncio.run(_async_child(spec, writers, per_writer))
    mem = _memstate(spec) if spec["system"] == "memstate" else _lockstep(spec)
    results: dict[str, Any] = {}
    ids: list[list[str]] = [[] for _ in range(writers)]
    lock = threading.Lock()
    for op in OPS:
        latencies: list[float] = []

        def work(w: int, op: str = op, latencies: list[float] = latencies) -> None:
            mine = []
            for i in range(per_writer):
                started = time.perf_counter()
                _one(spec["system"], mem, op, w, i, ids[w])
                mine.append(time.perf_counter() - started)
            with lock:
                latencies.extend(mine)

        started = time.perf_counter()
        threads = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        results[op] = {"latencies": latencies, "seconds": time.perf_counter() - started}
    return results


def _one(system: str, mem: Any, op: str, w: int, i: int, ids: list[str]) -> None:
    session = f"s{w}"
    if op == "insert":
        fact = _fact(system, f"writer {w} remembers thing {i}")
        ids.append(mem.commit(fact, session_id=session))
    elif op == "update":
        mem.update(ids[i], {"payload": {"content": f"writer {w} revised thing {i}"}})
    elif op == "rollback":
        if system == "memstate":
            mem.rollback(session, 1)
        else:
            mem.rollback(1, session_id=session)
    else:
        mem.delete(session, ids[i])


async def _async_child(spec: dict[str, Any], writers: int, per_writer: int) -> dict[str, Any]:
    mem = await (_memstate_async(spec) if spec["system"] == "memstate" else _lockstep_async(spec))
    results: dict[str, Any] = {}
    ids: list[list[str]] = [[] for _ in range(writers)]
    system = spec["system"]
    for op in OPS:
        latencies: list[float] = []

        async def work(w: int, op: str = op, latencies: list[float] = latencies) -> None:
            session = f"s{w}"
            for i in range(per_writer):
                started = time.perf_counter()
                if op == "insert":
                    fact = _fact(system, f"writer {w} remembers thing {i}")
                    ids[w].append(await mem.commit(fact, session_id=session))
                elif op == "update":
                    await mem.update(ids[w][i], {"payload": {"content": f"revised {w} {i}"}})
                elif op == "rollback":
                    if system == "memstate":
                        await mem.rollback(session, 1)
                    else:
                        await mem.rollback(1, session_id=session)
                else:
                    await mem.delete(session, ids[w][i])
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(work(w) for w in range(writers)))
        results[op] = {"latencies": latencies, "seconds": time.perf_counter() - started}
    return results


def _fact(system: str, text: str) -> Any:
    if system == "memstate":
        from memstate import Fact as MemStateFact

        return MemStateFact(type="note", payload={"content": text})
    from coordinator import Fact

    return Fact(type="note", payload={"content": text})


# -- Lockstep's stores ------------------------------------------------------------------


def _lockstep(spec: dict[str, Any]) -> Any:
    from coordinator import MemoryStore

    d = Path(spec["dir"])
    combo = spec["combo"]
    storage: Any
    mirrors: list[Any] = []
    if combo.startswith("sqlite"):
        from participants.sqlite import SQLiteStorage

        storage = SQLiteStorage(d / "facts.db", name="facts")
    else:
        from participants.postgres import PostgresStorage

        storage = PostgresStorage(spec["pg_url"], name="facts")
    if "redis" in combo:
        from participants.redis import RedisStorage

        mirrors.append(RedisStorage(spec["redis_url"], name="copy", prefix=spec["prefix"]))
    indexes: list[Any] = []
    if "qdrant" in combo:
        from qdrant_client import QdrantClient

        from participants.qdrant import QdrantIndex

        client = QdrantClient(path=str(d / "qdrant"))
        indexes.append(QdrantIndex(client, "memories", "content", embedder=SameEmbedder()))
    elif "chroma" in combo:
        from participants.chroma import ChromaIndex

        indexes.append(
            ChromaIndex(
                _chroma_client(spec), spec["collection"], "content", embedder=SameEmbedder()
            )
        )
    return MemoryStore(storage, indexes, mirrors=mirrors)


async def _lockstep_async(spec: dict[str, Any]) -> Any:
    from coordinator import AsyncMemoryStore

    d = Path(spec["dir"])
    combo = spec["combo"]
    storage: Any
    mirrors: list[Any] = []
    if combo.startswith("sqlite"):
        from participants.sqlite import AsyncSQLiteStorage

        storage = AsyncSQLiteStorage(d / "facts.db", name="facts")
    else:
        from participants.postgres import AsyncPostgresStorage

        storage = AsyncPostgresStorage(spec["pg_url"], name="facts")
    if "redis" in combo:
        from participants.redis import AsyncRedisStorage

        mirrors.append(AsyncRedisStorage(spec["redis_url"], name="copy", prefix=spec["prefix"]))
    indexes: list[Any] = []
    if "qdrant" in combo:
        from qdrant_client import AsyncQdrantClient

        from participants.qdrant import AsyncQdrantIndex

        client = AsyncQdrantClient(path=str(d / "qdrant"))
        indexes.append(AsyncQdrantIndex(client, "memories", "content", embedder=SameEmbedder()))
    elif "chroma" in combo:
        from participants.chroma import AsyncChromaIndex

        indexes.append(
            AsyncChromaIndex(
                _chroma_client(spec), spec["collection"], "content", embedder=SameEmbedder()
            )
        )
    return AsyncMemoryStore(storage, indexes, mirrors=mirrors)


def _chroma_client(spec: dict[str, Any]) -> Any:
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    import chromadb

    if "server" in spec["combo"]:
        return chromadb.HttpClient(host="127.0.0.1", port=spec["chroma_port"])
    return chromadb.PersistentClient(path=str(Path(spec["dir"]) / "chroma"))


# -- MemState's stores (run in its own environment) -------------------------------------


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


def _memstate(spec: dict[str, Any]) -> Any:
    from memstate import MemoryStore, SQLiteStorage

    d = Path(spec["dir"])
    combo = spec["combo"]
    storage: Any
    if combo.startswith("sqlite"):
        storage = SQLiteStorage(str(d / "facts.db"))
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

        hooks.append(
            ChromaSyncHook(
                _chroma_client(spec),
                spec["collection"],
                embedding_fn=_chroma_embedding(),
                text_field="content",
            )
        )
    return MemoryStore(storage, hooks=hooks)


async def _memstate_async(spec: dict[str, Any]) -> Any:
    from memstate import AsyncMemoryStore, AsyncSQLiteStorage

    d = Path(spec["dir"])
    combo = spec["combo"]
    if "chroma" in combo and "server" not in combo:
        raise NotImplementedError("MemState's async Chroma hook needs a Chroma server")
    storage: Any
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
        hooks.append(
            AsyncChromaSyncHook(
                server, spec["collection"], embedding_fn=_chroma_embedding(), text_field="content"
            )
        )
    return AsyncMemoryStore(storage, hooks=hooks)


# -- the driver -------------------------------------------------------------------------


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

    def stop(self) -> None:
        self._servers.stop()


def measure(
    python: str, spec: dict[str, Any], tmp: Path
) -> dict[str, Any] | str:  # the results, or why there are none
    with tempfile.TemporaryDirectory(dir=tmp) as directory:
        spec = {**spec, "dir": directory}
        done = subprocess.run(
            [python, "-m", "benchmarks.commit_cost", "--child", json.dumps(spec)],
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "ANONYMIZED_TELEMETRY": "False"},
            timeout=1800,
        )
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or ["failed"])[-1][:120]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ops", type=int, default=200, help="operations of each kind per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--combos", default=",".join(COMBOS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        try:
            print(json.dumps(child(json.loads(args.child))), flush=True)
        except BaseException as exc:
            print(f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            os._exit(1)  # client threads (aiosqlite, pools) must not keep the child alive
        os._exit(0)
    combos = [c.strip() for c in args.combos.split(",") if c.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    pythons = {"memstate": str(ensure_memstate_env()), "lockstep": sys.executable}
    merged: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    failures: dict[tuple[str, str, str], str] = {}
    with tempfile.TemporaryDirectory(prefix="lockstep-commit-cost-") as tmp:
        servers = Servers(Path(tmp))
        try:
            for round_ in range(args.rounds):
                for combo in combos:
                    for mode in modes:
                        order = SYSTEMS if round_ % 2 == 0 else SYSTEMS[::-1]
                        for system in order:
                            spec = {
                                **servers.spec_for(combo),
                                "combo": combo,
                                "mode": mode,
                                "system": system,
                                "ops": args.ops,
                            }
                            result = measure(pythons[system], spec, Path(tmp))
                            if isinstance(result, str):
                                failures[(combo, mode, system)] = result
                                continue
                            for op, r in result.items():
                                slot = merged.setdefault(
                                    (combo, mode, op, system), {"latencies": [], "seconds": 0.0}
                                )
                                slot["latencies"] += r["latencies"]
                                slot["seconds"] += r["seconds"]
                        print(f"  round {round_ + 1}: {combo}, {mode}", file=sys.stderr, flush=True)
        finally:
            servers.stop()
    rows = _rows(merged, combos, modes)
    _print(rows, args.ops, args.rounds, failures)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "ops": args.ops,
                    "rounds": args.rounds,
                    "results": rows,
                    "not_measured": [
                        {"combo": c, "mode": m, "system": s, "why": why}
                        for (c, m, s), why in failures.items()
                    ],
                },
                indent=2,
            )
        )
    return 0


def _rows(
    merged: dict[tuple[str, str, str, str], dict[str, Any]], combos: list[str], modes: list[str]
) -> list[dict[str, Any]]:
    rows = []
    for combo in combos:
        for mode in modes:
            for op in OPS:
                row: dict[str, Any] = {"combo": combo, "mode": mode, "op": op}
                for system in SYSTEMS:
                    r = merged.get((combo, mode, op, system))
                    if r is None or not r["latencies"]:
                        continue
                    row[f"{system}_p50_ms"] = round(_pct(r["latencies"], 0.5), 2)
                    row[f"{system}_p99_ms"] = round(_pct(r["latencies"], 0.99), 2)
                    row[f"{system}_ops_per_s"] = round(len(r["latencies"]) / r["seconds"], 1)
                if "memstate_p50_ms" in row and "lockstep_p50_ms" in row:
                    row["p50_ratio"] = round(row["lockstep_p50_ms"] / row["memstate_p50_ms"], 2)
                    row["throughput_ratio"] = round(
                        row["lockstep_ops_per_s"] / row["memstate_ops_per_s"], 2
                    )
                rows.append(row)
    return rows


def _print(
    rows: list[dict[str, Any]], ops: int, rounds: int, failures: dict[tuple[str, str, str], str]
) -> None:
    print(f"## Commit cost: Lockstep vs MemState 0.5.1\n\nMachine: {machine()}\n")
    print(f"{ops} operations of each kind per run and system, {rounds} rounds.\n")
    print(
        "| stores | writers | op | MemState p50 / p99 ms | Lockstep p50 / p99 ms | p50 ratio "
        "| MemState ops/s | Lockstep ops/s | throughput ratio |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    dash = "—"
    for r in rows:

        def cell(system: str, r: dict[str, Any] = r) -> tuple[str, str]:
            if f"{system}_p50_ms" not in r:
                return dash, dash
            return (
                f"{r[f'{system}_p50_ms']} / {r[f'{system}_p99_ms']}",
                str(r[f"{system}_ops_per_s"]),
            )

        ms, ms_tput = cell("memstate")
        ls, ls_tput = cell("lockstep")
        ratio = f"{r['p50_ratio']}x" if "p50_ratio" in r else dash
        tratio = f"{r['throughput_ratio']}x" if "throughput_ratio" in r else dash
        print(
            f"| {r['combo']} | {r['mode']} | {r['op']} | {ms} | {ls} | {ratio} | {ms_tput} "
            f"| {ls_tput} | {tratio} |"
        )
    for (combo, mode, system), why in failures.items():
        print(f"\nnot measured: {system} on {combo}, {mode}: {why}")


if __name__ == "__main__":
    sys.exit(main())
