"""Crash benchmark: a writer process SIGKILLed at a random moment, then reopened.

For each backend combination, run and system (unsynchronised writes, MemState 0.5.1,
Lockstep, Lockstep with deferred index finishing): a child process writes memories
(inserts, updates, deletes; with ``--rollbacks``, also rollbacks of the session's last
transaction), the parent SIGKILLs it after a random number of operations plus a random
fraction of the next one, then reopens the stores (Lockstep runs its
recovery; the others have none) and counts the facts whose storage record and vector
disagree. For Lockstep: ``verify`` after one recovery pass; a run drifted if a fact
disagrees then, or if anything is still staged after a second pass. Points staged after
the first pass are counted on their own: a write the killed process had already sent
can reach a vector server after the pass listed what was staged (a request the server
received is carried out though its client is dead), and only a later pass sees it;
searches never return it (every hit is checked against the fact store).
Systems alternate run by run; two runs go at once (the kill moment, not speed, matters).
MemState does not run on Qdrant Edge (:data:`benchmarks._stores.NO_MEMSTATE_ON_EDGE`).

    python -m benchmarks.crash [--runs 200] [--combos a,b] [--rollbacks 0.2] [--json out.json]
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

from benchmarks._common import ROOT, embed, ensure_memstate_env, machine, pick
from benchmarks._stores import (
    NO_MEMSTATE_ON_EDGE,
    Servers,
    lockstep_store,
    memstate_runs_on,
    memstate_store,
)
from benchmarks.failure import _compare, _points

COMBOS = [
    "sqlite + qdrant local",
    "sqlite + chroma embedded",
    "postgres + qdrant local",
    "postgres + chroma server",
    "sqlite + qdrant edge",
]
SYSTEMS = ["unsynchronised", "memstate", "lockstep", "lockstep-deferred"]
SESSION = "agent"


# -- the child: writes until it is killed ------------------------------------------------


def child(spec: dict[str, Any], seed: int) -> None:
    rng = random.Random(seed)
    system = spec["system"]
    mem = memstate_store(spec) if system == "memstate" else lockstep_store(spec)
    ids: list[str] = []
    share = spec.get("rollbacks", 0.0)  # with none, the draws are those of earlier releases
    for i in range(10_000):
        if share and ids and rng.random() < share:
            _roll_back(system, mem)
            ids = [f["id"] for f in mem.query()]  # it may have re-created or removed facts
            print("op", flush=True)
            continue
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
        mem.delete(SESSION, fact_id)
    elif mem.get(fact_id) is None:
        mem.commit(fact(id=fact_id, type="note", payload={"content": text}), session_id=SESSION)
    else:
        mem.update(fact_id, {"payload": {"content": text}})


def _roll_back(system: str, mem: Any) -> None:
    """Undo the session's last transaction (MemState's ``rollback`` takes the session first)."""
    if system == "memstate":
        mem.rollback(SESSION, 1)
    else:
        mem.rollback(1, SESSION)


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


def drift(spec: dict[str, Any]) -> tuple[int, int]:
    """(drifted facts, branches left staged by the first recovery pass) of one run."""
    if spec["system"] == "memstate":
        return _memstate_drift(spec), 0
    mem = lockstep_store(spec)
    try:
        if spec["system"] == "unsynchronised":  # no recovery: compare what is there
            facts = {f.id: f.version for f in mem.storage.all_facts()}
            held = dict(mem.indexes[0].contents().committed)
            return sum(facts.get(k) != held.get(k) for k in set(facts) | set(held)), 0
        coordinator = mem.coordinator_with(in_doubt_timeout=0.001, redrive_after=0)
        recovered = coordinator.recover()
        report = mem.verify()
        late = _staged(report)
        drifted = report.drifted_facts
        if late:  # arrived after the pass listed the staged branches: the next one settles them
            if spec.get("explain"):
                _explain(Path(spec["explain"]), spec, mem, recovered, report)
            recovered = coordinator.recover()
            report = mem.verify()
            drifted = max(drifted, report.drifted_facts) + _staged(report)
        if drifted and spec.get("explain"):
            _explain(Path(spec["explain"]), spec, mem, recovered, report)
        return drifted, late
    finally:
        mem.close()


def _staged(report: Any) -> int:
    """Branches a verify report finds staged, in the indexes and in the storage."""
    return sum(len(d.pending) for d in report.derived.values()) + sum(
        len(txids) for txids in report.staged.values()
    )


def _explain(path: Path, spec: dict[str, Any], mem: Any, recovered: Any, report: Any) -> None:
    """Append what a run left after a recovery pass: the recovery and verify reports,
    each fact's version and txid, and what each index holds (``--explain``)."""
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


def one_run(python: str, spec: dict[str, Any], seed: int, rng: random.Random) -> tuple[int, int]:
    """Start the writer, kill it at a random moment, count the drift (in a fresh process):
    (drifted facts, branches the first recovery pass left staged)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ANONYMIZED_TELEMETRY": "False"}
    target = rng.randrange(5, 40)
    pause = rng.uniform(0, 0.01)
    errors = Path(spec["dir"]) / "child.err"
    with errors.open("w") as err:
        proc = subprocess.Popen(
            [python, "-m", "benchmarks.crash", "--child", json.dumps(spec), str(seed)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=ROOT,
            env=env,
        )
    assert proc.stdout is not None
    with proc.stdout:
        for count, _ in enumerate(proc.stdout, 1):
            if count >= target:
                time.sleep(pause)  # lands inside the next operation
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    if proc.returncode != -signal.SIGKILL:  # it ended on its own: an error, not our kill
        raise RuntimeError(
            f"{spec['system']} on {spec['combo']}: the writer exited with {proc.returncode} "
            f"before it was killed: {errors.read_text()[-300:]}"
        )
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
    drifted, late = done.stdout.strip().splitlines()[-1].split()
    return int(drifted), int(late)


def _star(run: Any, combo: str, job: tuple[str, int, random.Random]) -> tuple[int, int]:
    drifted, late = run(combo, *job)
    return int(drifted), int(late)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--combos", default=",".join(COMBOS))
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--rollbacks",
        type=float,
        default=0.0,
        help="share of operations that roll the session's last transaction back (MemState "
        "and Lockstep only: the unsynchronised writer has no rollback)",
    )
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
        print(*drift(json.loads(args.drift)), flush=True)
        os._exit(0)  # client threads must not keep a measuring process alive
    combos = pick(parser, "--combos", args.combos, COMBOS)
    systems = pick(parser, "--systems", args.systems, SYSTEMS)
    if not 0 <= args.rollbacks < 1:
        parser.error(f"--rollbacks is a share of the operations, in [0, 1); got {args.rollbacks}")
    if args.rollbacks and "unsynchronised" in systems:
        systems.remove("unsynchronised")
        if not systems:
            parser.error("--rollbacks: the unsynchronised writer has no rollback; name another")
        print("  unsynchronised: left out (it has no rollback)", file=sys.stderr, flush=True)
    pythons = dict.fromkeys(systems, sys.executable)
    if "memstate" in systems:
        pythons["memstate"] = str(ensure_memstate_env())
    measured = {c: [s for s in systems if s != "memstate" or memstate_runs_on(c)] for c in combos}
    drifted: dict[str, dict[str, list[int]]] = {c: {s: [] for s in measured[c]} for c in combos}
    late: dict[str, dict[str, list[int]]] = {c: {s: [] for s in measured[c]} for c in combos}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lockstep-crash-") as tmp:
        servers = Servers(Path(tmp))

        def run(combo: str, system: str, n: int, rng: random.Random) -> tuple[int, int]:
            with tempfile.TemporaryDirectory(dir=tmp) as directory:
                spec = {**servers.spec_for(combo), "combo": combo, "system": system}
                spec["rollbacks"] = args.rollbacks
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
                turn = measured[combo]
                if not turn:
                    continue
                jobs = [
                    (system, n, random.Random(seeds.random()))
                    for n in range(args.runs)
                    for system in turn[n % len(turn) :] + turn[: n % len(turn)]
                ]
                with ThreadPoolExecutor(max_workers=2) as pool:
                    found = pool.map(functools.partial(_star, run, combo), jobs)
                    for (system, _, _), (count, left) in zip(jobs, found, strict=True):
                        drifted[combo][system].append(count)
                        late[combo][system].append(left)
                print(f"  {combo}: done", file=sys.stderr, flush=True)
        finally:
            servers.stop()
    minutes = (time.monotonic() - started) / 60
    print(f"## Crash benchmark\n\nMachine: {machine()}\n")
    print(
        f"{args.runs} SIGKILLed runs per system and combination, systems alternating "
        f"({minutes:.0f} min).\n"
    )
    if args.rollbacks:
        print(
            f"The workload: inserts, updates and deletes in one session, and {args.rollbacks:.0%} "
            "rollbacks of the session's last transaction.\n"
        )
    print(
        "Lockstep: drift after one recovery pass, plus anything still staged after a second; "
        "the last column counts the runs where something was still staged after the first "
        "pass (a write of the killed process that arrived after the pass had listed what was "
        "staged), which the second pass must settle.\n"
    )
    print(
        "| stores | system | runs | runs with drift | share | drifted facts "
        "| runs with branches staged after one pass |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for combo, by_system in drifted.items():
        for system, counts in by_system.items():
            bad = sum(c > 0 for c in counts)
            share = bad / len(counts) if counts else 0.0
            arrived = sum(n > 0 for n in late[combo][system])
            shown = str(arrived) if system.startswith("lockstep") else "n/a"
            print(
                f"| {combo} | {system} | {len(counts)} | {bad} | {share:.0%} | {sum(counts)} "
                f"| {shown} |"
            )
    for combo in combos:
        if "memstate" in systems and "memstate" not in measured[combo]:
            print(f"\nnot measured: MemState on {combo}: {NO_MEMSTATE_ON_EDGE}")
    if args.json:
        args.json.write_text(
            json.dumps({"machine": machine(), "drifted": drifted, "late": late}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
