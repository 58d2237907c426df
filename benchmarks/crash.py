"""Crash benchmark: a writer process SIGKILLed at a random moment, then reopened.

For each backend combination, run and system (unsynchronised writes, MemState 0.5.1,
Lockstep, Lockstep with deferred index finishing): a child process writes memories
(inserts, updates, deletes), the parent SIGKILLs it after a random number of operations
plus a random fraction of the next one, then reopens the stores (Lockstep runs its
recovery; the others have none) and counts the facts whose storage record and vector
disagree (for Lockstep: ``verify`` after recovery, drift and anything left staged).
Systems alternate run by run; two runs go at once (the kill moment, not speed, matters).

    python -m benchmarks.crash [--runs 200] [--combos a,b] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks._common import ROOT, embed, ensure_memstate_env, machine
from benchmarks._stores import Servers, lockstep_store, memstate_store
from benchmarks.failure import _compare, _points

COMBOS = [
    "sqlite + qdrant local",
    "sqlite + chroma embedded",
    "postgres + qdrant local",
    "postgres + chroma server",
]
SYSTEMS = ["unsynchronised", "memstate", "lockstep", "lockstep-deferred"]


# -- the child: writes until it is killed ------------------------------------------------


def child(spec: dict[str, Any], seed: int) -> None:
    rng = random.Random(seed)
    system = spec["system"]
    mem = memstate_store(spec) if system == "memstate" else lockstep_store(spec)
    ids: list[str] = []
    for i in range(10_000):
        roll = rng.random()
        if ids and roll < 0.1:
            _write(system, mem, ids.pop(rng.randrange(len(ids))), None)
        elif ids and roll < 0.4:
            _write(system, mem, rng.choice(ids), f"memory {i}")
        else:
            fact_id = str(uuid.UUID(int=rng.getrandbits(128)))
            _write(system, mem, fact_id, f"memory {i}")
            ids.append(fact_id)
        print("op", flush=True)


def _write(system: str, mem: Any, fact_id: str, text: str | None) -> None:
    if system == "unsynchronised":
        _unsynchronised(mem, fact_id, text)
        return
    if system == "memstate":
        from memstate import Fact as MemStateFact

        fact: Any = MemStateFact
    else:
        from coordinator import Fact

        fact = Fact
    if text is None:
        mem.delete(None, fact_id)
    elif mem.get(fact_id) is None:
        mem.commit(fact(id=fact_id, type="note", payload={"content": text}))
    else:
        mem.update(fact_id, {"payload": {"content": text}})


def _unsynchronised(mem: Any, fact_id: str, text: str | None) -> None:
    """The storage, then the index, one after the other (what most libraries do)."""
    from coordinator import new_txid
    from coordinator.records import DeleteFact, FactRecord, UpsertFact

    current = mem.storage.get(fact_id)
    version = 0 if current is None else current.version
    txid = new_txid()
    if text is None:
        writes: list[Any] = [DeleteFact(fact_id, version)]
    else:
        record = FactRecord(fact_id, "note", {"content": text}, version + 1)
        writes = [UpsertFact(record, version, embedding=tuple(embed(text)))]
    mem.storage.commit_one_phase(txid, writes)
    index = mem.indexes[0]
    index.prepare(txid, writes)
    index.commit(txid)


# -- after the kill: count drifted facts --------------------------------------------------


def drift(spec: dict[str, Any]) -> int:
    if spec["system"] == "memstate":
        return _memstate_drift(spec)
    mem = lockstep_store(spec)
    try:
        if spec["system"] == "unsynchronised":  # no recovery: compare what is there
            facts = {f.id: f.version for f in mem.storage.all_facts()}
            held = dict(mem.indexes[0].contents().committed)
            return sum(facts.get(k) != held.get(k) for k in set(facts) | set(held))
        recovered = mem.coordinator_with(in_doubt_timeout=0.001, redrive_after=0).recover()
        report = mem.verify()
        count = int(report.drifted_facts + sum(len(d.pending) for d in report.derived.values()))
        if count and spec.get("explain"):
            _explain(Path(spec["explain"]), spec, mem, recovered, report)
        return count
    finally:
        mem.close()


def _explain(path: Path, spec: dict[str, Any], mem: Any, recovered: Any, report: Any) -> None:
    """Append what a drifted run left: the recovery and verify reports, each fact's
    version and txid, and what each index holds (``--explain``)."""
    facts = {f.id: (f.version, f.txid) for f in mem.storage.all_facts()}
    lines = [
        f"== {spec['combo']}, {spec['system']}, {spec['dir']}",
        f"recovery: {recovered!r}",
        f"verify: {report!r}",
        f"facts: {facts!r}",
        *(f"{index.name}: {index.contents()!r}" for index in mem.indexes),
    ]
    with path.open("a") as out:
        out.write("\n".join(lines) + "\n")


def _memstate_drift(spec: dict[str, Any]) -> int:
    mem = memstate_store(spec)
    facts = {f["id"]: f["payload"]["content"] for f in mem.query(typename="note")}
    vectors: dict[str, str] = {}
    for hook in mem._hooks:
        if hasattr(hook, "collection"):  # Chroma: the fact id is the record id
            found = hook.collection.get(include=["documents"])
            vectors = dict(zip(found["ids"], found["documents"] or [], strict=True))
        elif hasattr(hook, "client"):  # Qdrant
            vectors = _points(hook.client, hook.collection_name)
    return int(_compare(facts, vectors)["drift"])


# -- the driver ---------------------------------------------------------------------------


def one_run(python: str, spec: dict[str, Any], seed: int, rng: random.Random) -> int:
    """Start the writer, kill it at a random moment, count the drift (in a fresh process)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ANONYMIZED_TELEMETRY": "False"}
    target = rng.randrange(5, 40)
    pause = rng.uniform(0, 0.01)
    proc = subprocess.Popen(
        [python, "-m", "benchmarks.crash", "--child", json.dumps(spec), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert proc.stdout is not None
    for count, _ in enumerate(proc.stdout, 1):
        if count >= target:
            time.sleep(pause)  # lands inside the next operation
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    done = subprocess.run(
        [python, "-m", "benchmarks.crash", "--drift", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{spec['system']} on {spec['combo']}: {done.stderr[-300:]}")
    return int(done.stdout.strip().splitlines()[-1])


def _star(run: Any, combo: str, job: tuple[str, int, random.Random]) -> int:
    return int(run(combo, *job))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--combos", default=",".join(COMBOS))
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--explain", type=Path, help="append what each Lockstep run with drift left to this file"
    )
    parser.add_argument("--child", nargs=2, metavar=("SPEC", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--drift", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child[0]), int(args.child[1]))
        return 0
    if args.drift:
        print(drift(json.loads(args.drift)), flush=True)
        os._exit(0)  # client threads must not keep a measuring process alive
    combos = [c.strip() for c in args.combos.split(",") if c.strip()]
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    pythons = dict.fromkeys(systems, sys.executable)
    if "memstate" in systems:
        pythons["memstate"] = str(ensure_memstate_env())
    drifted: dict[str, dict[str, list[int]]] = {c: {s: [] for s in systems} for c in combos}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lockstep-crash-") as tmp:
        servers = Servers(Path(tmp))

        def run(combo: str, system: str, n: int, rng: random.Random) -> int:
            with tempfile.TemporaryDirectory(dir=tmp) as directory:
                spec = {**servers.spec_for(combo), "combo": combo, "system": system}
                if args.explain:
                    spec["explain"] = str(args.explain.resolve())
                try:
                    return one_run(pythons[system], {**spec, "dir": directory}, n, rng)
                finally:
                    servers.release(spec)

        try:
            for combo in combos:
                servers.spec_for(combo)  # start the servers before the runs share them
                seeds = random.Random(11)
                jobs = [
                    (system, n, random.Random(seeds.random()))
                    for n in range(args.runs)
                    for system in systems[n % len(systems) :] + systems[: n % len(systems)]
                ]
                with ThreadPoolExecutor(max_workers=2) as pool:
                    found = pool.map(functools.partial(_star, run, combo), jobs)
                    for (system, _, _), count in zip(jobs, found, strict=True):
                        drifted[combo][system].append(count)
                print(f"  {combo}: done", file=sys.stderr, flush=True)
        finally:
            servers.stop()
    minutes = (time.monotonic() - started) / 60
    print(f"## Crash benchmark\n\nMachine: {machine()}\n")
    print(
        f"{args.runs} SIGKILLed runs per system and combination, systems alternating "
        f"({minutes:.0f} min).\n"
    )
    print("| stores | system | runs | runs with drift | share | drifted facts |")
    print("|---|---|---:|---:|---:|---:|")
    for combo, by_system in drifted.items():
        for system, counts in by_system.items():
            bad = sum(c > 0 for c in counts)
            share = bad / len(counts) if counts else 0.0
            print(f"| {combo} | {system} | {len(counts)} | {bad} | {share:.0%} | {sum(counts)} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "drifted": drifted}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
