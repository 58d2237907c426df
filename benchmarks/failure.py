"""Failure benchmark: memory writes while the vector store fails 10% of the time.

MemState's headline benchmark (inserts, the failure raised *before* the vector write), and
the variants it leaves out: the failure raised *after* the vector write was applied (a
timeout), deletes, updates of existing facts, and two indexes where the second one fails. Three systems on the same stores (SQLite
facts, Qdrant local-mode vectors) with the same deterministic embedder, alternating in one
run: unsynchronised writes (SQL, then vector), MemState 0.5.1, Lockstep.

MemState runs in the benchmark's own environment (``benchmarks/.venv-memstate``, created on
first use from the package registry); it is never a project dependency.

    python -m benchmarks.failure [--ops 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks._common import ROOT, SameEmbedder, embed, ensure_memstate_env, machine

VARIANTS = [
    "insert, fail before",
    "insert, fail after",
    "update, fail before",
    "delete, fail before",
    "insert, fail second index",
]
SYSTEMS = ["unsynchronised", "memstate", "lockstep"]


class Injected(Exception):
    """The vector store failed."""


def workload(system: str, variant: str, ops: int, seed: int, directory: Path) -> dict[str, Any]:
    """Run one system; return what its stores hold afterwards."""
    rng = random.Random(seed)
    op, when = variant.split(", fail ")
    prepared = 200 if op in ("update", "delete") else 0  # facts written before the faults
    if system == "memstate":
        return _memstate(op, when, ops, prepared, rng, directory)
    return _ours(system, op, when, ops, prepared, rng, directory)


def _fails(rng: random.Random, armed: bool) -> bool:
    return armed and rng.random() < 0.10


def _memstate(
    op: str, when: str, ops: int, prepared: int, rng: random.Random, d: Path
) -> dict[str, Any]:
    from memstate import Fact, HookError, MemoryStore, SQLiteStorage
    from memstate.integrations.qdrant import QdrantSyncHook
    from qdrant_client import QdrantClient

    client = QdrantClient(path=str(d / "qdrant"))
    hook = QdrantSyncHook(client, "memories", embedding_fn=embed, text_field="content")
    armed = [False]

    def flaky(operation: Any, fact_id: str, fact: Any) -> None:
        if when == "before" and _fails(rng, armed[0]):
            raise HookError("injected vector failure")
        hook(operation, fact_id, fact)
        if when == "after" and _fails(rng, armed[0]):
            raise HookError("injected timeout after the vector write applied")

    flaky.search = hook.search  # type: ignore[attr-defined]
    hooks: list[Any] = [flaky]
    second = None
    if when == "second index":  # the first index always works; the second fails
        second = QdrantClient(path=str(d / "qdrant2"))
        hook2 = QdrantSyncHook(second, "memories", embedding_fn=embed, text_field="content")

        def flaky2(operation: Any, fact_id: str, fact: Any) -> None:
            if _fails(rng, armed[0]):
                raise HookError("injected failure of the second index")
            hook2(operation, fact_id, fact)

        flaky2.search = hook2.search  # type: ignore[attr-defined]
        hooks = [hook, flaky2]
    mem = MemoryStore(SQLiteStorage(str(d / "facts.db")), hooks=hooks)
    ids = [mem.commit(Fact(type="note", payload={"content": f"seed {i}"})) for i in range(prepared)]
    armed[0] = True
    for i in range(ops):
        try:
            if op == "insert":
                mem.commit(Fact(type="note", payload={"content": f"memory {i}"}))
            elif op == "update":
                mem.update(rng.choice(ids), {"payload": {"content": f"memory {i}"}})
            elif ids:
                mem.delete(None, ids.pop(rng.randrange(len(ids))))
        except HookError:
            pass
    facts = {f["id"]: f["payload"]["content"] for f in mem.query(typename="note")}
    others = [] if second is None else [_points(second)]
    return _compare(facts, _points(client), *others)


def _points(client: Any, collection: str = "memories") -> dict[str, str]:
    """``fact id -> text`` of a Qdrant collection's committed points (MemState's or ours;
    empty when the collection was never created)."""
    if not client.collection_exists(collection):
        return {}
    found: dict[str, str] = {}
    offset = None
    while True:
        page, offset = client.scroll(collection, limit=512, offset=offset, with_payload=True)
        for point in page:
            payload = point.payload or {}
            if payload.get("state", "committed") == "committed":
                key = str(payload.get("fact_id", point.id))
                found[key] = str(payload.get("document", payload.get("content", "")))
        if offset is None:
            return found


def _ours(
    system: str, op: str, when: str, ops: int, prepared: int, rng: random.Random, d: Path
) -> dict[str, Any]:

    from coordinator import Fact, LockstepError, new_txid
    from coordinator.records import DeleteFact, FactRecord, UpsertFact

    storage, index, maybe_mem = _ours_stores(system, d, two_indexes=when == "second index")
    indexes = [index, *([] if maybe_mem is None else maybe_mem.indexes[1:])]
    if maybe_mem is None and when == "second index":
        indexes.append(_second_index(d))
    target = indexes[-1]  # the index that fails
    armed = [False]
    original = target.prepare

    def flaky(txid: str, writes: Any) -> Any:
        if when in ("before", "second index") and _fails(rng, armed[0]):
            raise Injected("injected vector failure")
        vote = original(txid, writes)
        if when == "after" and _fails(rng, armed[0]):
            raise Injected("injected timeout after the vector write applied")
        return vote

    if system == "lockstep":
        target.prepare = flaky
        mem = maybe_mem
        assert mem is not None
        ids = [
            mem.commit(Fact(type="note", payload={"content": f"seed {i}"})) for i in range(prepared)
        ]
        armed[0] = True
        for i in range(ops):
            try:
                if op == "insert":
                    mem.commit(Fact(type="note", payload={"content": f"memory {i}"}))
                elif op == "update":
                    mem.update(rng.choice(ids), {"payload": {"content": f"memory {i}"}})
                elif ids:
                    fid = ids[rng.randrange(len(ids))]
                    mem.delete(None, fid)
                    ids.remove(fid)
            except LockstepError:
                pass
    else:

        def write(fact_id: str, text: str | None) -> None:
            current = storage.get(fact_id)
            version = 0 if current is None else current.version
            txid = new_txid()
            if text is None:
                writes: list[Any] = [DeleteFact(fact_id, version)]
            else:
                record = FactRecord(fact_id, "note", {"content": text}, version + 1)
                writes = [UpsertFact(record, version, embedding=tuple(embed(text)))]
            storage.commit_one_phase(txid, writes)  # the SQL write
            try:
                # Then the vector writes, one step each, as a client does it.
                for each in indexes:
                    if each is target and when != "after" and _fails(rng, armed[0]):
                        raise Injected("injected vector failure")
                    each.prepare(txid, writes)
                    each.commit(txid)
                if when == "after" and _fails(rng, armed[0]):
                    raise Injected("injected timeout after the vector write applied")
            except Injected:
                pass  # logged and carried on

        ids = [f"f{i}" for i in range(prepared)]
        for i, fid in enumerate(ids):
            write(fid, f"seed {i}")
        armed[0] = True
        for i in range(ops):
            if op == "insert":
                write(f"n{i}", f"memory {i}")
            elif op == "update":
                write(rng.choice(ids), f"memory {i}")
            elif ids:
                write(ids.pop(rng.randrange(len(ids))), None)
    rows = storage.all_facts()
    facts = {f.id: str(f.payload["content"]) for f in rows}
    versions = {f.id: f.version for f in rows}
    # A point of the fact's current version embeds its current content; any other is stale.
    held = [
        {
            fid: facts.get(fid, "") if versions.get(fid) == v else "stale"
            for fid, v in each.contents().committed.items()
        }
        for each in indexes
    ]
    return _compare(facts, *held)


def _second_index(d: Path) -> Any:
    from qdrant_client import QdrantClient

    from participants.qdrant import QdrantIndex

    client = QdrantClient(path=str(d / "qdrant2"))
    return QdrantIndex(
        client, "memories", "content", embedder=SameEmbedder(), owns_client=True, name="second"
    )


def _ours_stores(system: str, d: Path, two_indexes: bool = False) -> tuple[Any, Any, Any]:
    """SQLite facts + Qdrant local vectors with the shared embedder (+ a MemoryStore, with
    a second index when asked)."""
    from qdrant_client import QdrantClient

    from coordinator import MemoryStore
    from participants.qdrant import QdrantIndex
    from participants.sqlite import SQLiteStorage

    client = QdrantClient(path=str(d / "qdrant"))
    index = QdrantIndex(client, "memories", "content", embedder=SameEmbedder(), owns_client=True)
    storage = SQLiteStorage(d / "facts.db")
    indexes = [index, _second_index(d)] if two_indexes else [index]
    mem = MemoryStore(storage, indexes) if system == "lockstep" else None
    return storage, index, mem


def _compare(
    facts: dict[str, str], points: dict[str, str], *more: dict[str, str]
) -> dict[str, Any]:
    """Facts whose SQL row and vectors disagree (in any index); vector records of the first."""
    every = [points, *more]
    ids = set(facts).union(*every)
    drift = sum(any(facts.get(i) != p.get(i) for p in every) for i in ids)
    return {"sql_records": len(facts), "vector_records": len(points), "drift": drift}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ops", type=int, default=1000)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--one", nargs=4, metavar=("SYSTEM", "VARIANT", "SEED", "DIR"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.one:
        system, variant, seed, directory = args.one
        print(json.dumps(workload(system, variant, args.ops, int(seed), Path(directory))))
        return 0
    memstate_python = ensure_memstate_env()
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for variant in VARIANTS:
        for system in SYSTEMS:  # alternating systems inside each variant
            python = str(memstate_python) if system == "memstate" else sys.executable
            with tempfile.TemporaryDirectory() as tmp:
                done = subprocess.run(
                    [
                        python,
                        "-m",
                        "benchmarks.failure",
                        "--ops",
                        str(args.ops),
                        "--one",
                        system,
                        variant,
                        "42",
                        tmp,
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=ROOT,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                )
            results[(variant, system)] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"  {variant}: {system} done", file=sys.stderr, flush=True)
    print(f"## Failure benchmark\n\nMachine: {machine()}\n")
    print(f"{args.ops} operations per run, 10% vector-store failures, SQLite + Qdrant local.\n")
    print("| variant | system | SQL records | vector records | drift | inconsistency |")
    print("|---|---|---:|---:|---:|---:|")
    for (variant, system), r in results.items():
        rate = r["drift"] / args.ops
        print(
            f"| {variant} | {system} | {r['sql_records']} | {r['vector_records']} | {r['drift']} | {rate:.1%} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                [{"variant": v, "system": s, **r} for (v, s), r in results.items()], indent=2
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
