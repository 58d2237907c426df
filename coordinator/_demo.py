"""``lockstep demo``: an agent writes memories while failures and crashes are injected.

Two stores stand for an agent's memory: the facts (SQLite) and an index (a second SQLite
file, standing in for the vector index). A writer process runs a workload of inserts,
updates and deletes; 10% of index writes fail, and the writer is killed with SIGKILL at a
random moment or at a named point of the protocol. Then recovery runs and the two stores
are compared fact by fact.

The same faults hit two writers: *unsynchronised* (write the facts, then the index, the
way agent-memory libraries do it) and *Lockstep* (one atomic commit across both).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from coordinator._sync.coordinator import Coordinator
from coordinator._tables import text_table
from coordinator.abc import Participant, SupportsOnePhase, Vote
from coordinator.errors import LockstepError, ParticipantError
from coordinator.faults import commit_points, hook_from_environment
from coordinator.ids import new_txid
from coordinator.plugins import open_decision_log, open_participant
from coordinator.policy import Policy
from coordinator.records import DeleteFact, FactRecord, UpsertFact, Write

NAMED_POINTS = commit_points(["facts", "index"])[:-1]  # up to the (lazy) END


class _FailingIndex:
    """The index participant, failing ``rate`` of its writes (a flaky vector store)."""

    def __init__(self, inner: Participant, rate: float, rng: random.Random) -> None:
        self.inner, self.rate, self.rng = inner, rate, rng
        self.failures = 0

    @property
    def name(self) -> str:
        return self.inner.name

    def _maybe_fail(self) -> None:
        if self.rng.random() < self.rate:
            self.failures += 1
            raise ParticipantError("injected index failure (timeout)", participant=self.name)

    def prepare(self, txid: str, writes: Sequence[Write]) -> Vote:
        self._maybe_fail()
        return self.inner.prepare(txid, writes)

    def commit_one_phase(self, txid: str, writes: Sequence[Write]) -> None:
        self._maybe_fail()
        assert isinstance(self.inner, SupportsOnePhase)
        self.inner.commit_one_phase(txid, writes)

    def commit(self, txid: str) -> None:
        self.inner.commit(txid)

    def abort(self, txid: str) -> None:
        self.inner.abort(txid)

    def recover(self) -> list[str]:
        return self.inner.recover()

    def close(self) -> None:
        self.inner.close()


def _stores(directory: Path) -> tuple[Participant, Participant]:
    facts = open_participant(f"sqlite:///{directory / 'facts.db'}", name="facts")
    index = open_participant(f"sqlite:///{directory / 'index.db'}", name="index")
    return facts, index


def _next_writes(facts: Participant, rng: random.Random, txid: str, n: int) -> list[Write]:
    fact_id = f"memory-{rng.randrange(12)}"
    current: FactRecord | None = facts.get(fact_id)  # type: ignore[attr-defined]
    if current is not None and rng.random() < 0.3:
        return [DeleteFact(fact_id, current.version)]
    version = 0 if current is None else current.version
    record = FactRecord(
        fact_id, "memory", {"content": f"note {n}"}, version + 1, actor="agent", txid=txid
    )
    return [UpsertFact(record, version)]


def worker(mode: str, directory: Path, seed: int, ops: int, fail_rate: float) -> None:
    """Run the workload; print one line per operation (the parent counts them)."""
    rng = random.Random(seed)
    facts, index_store = _stores(directory)
    index = _FailingIndex(index_store, fail_rate, random.Random(seed + 1))
    hook = hook_from_environment()
    coordinator = Coordinator(
        [facts, index],
        open_decision_log(f"sqlite:///{directory / 'decisions.db'}"),  # type: ignore[arg-type]
        fault_hook=hook,
    )
    for n in range(ops):
        txid = new_txid()
        writes = _next_writes(facts, rng, txid, n)
        if mode == "lockstep":
            try:
                coordinator.commit({"facts": writes, "index": writes}, txid=txid)
                result = "committed"
            except LockstepError:
                result = "aborted"
        else:
            # What agent-memory libraries do: the SQL write, then the vector write.
            assert isinstance(facts, SupportsOnePhase)
            try:
                facts.commit_one_phase(txid, writes)
            except LockstepError:
                print("aborted", flush=True)
                continue
            hook("between_writes")
            try:
                index.commit_one_phase(txid, writes)
                result = "committed"
            except LockstepError:
                result = "index-failed"  # logged and carried on: the stores now disagree
        print(result, flush=True)


@dataclass
class Tally:
    approach: str
    runs: int = 0
    writes: int = 0
    committed: int = 0
    aborted: int = 0
    kills: int = 0
    facts: int = 0
    index_records: int = 0
    drifted_runs: int = 0
    drifted_facts: int = 0
    left_staged: int = 0


def _drift(directory: Path) -> tuple[int, int, int, int]:
    """(facts, index records, facts that differ, branches left staged)."""
    facts, index = _stores(directory)
    in_facts = {f.id: f.version for f in facts.all_facts()}  # type: ignore[attr-defined]
    in_index = {f.id: f.version for f in index.all_facts()}  # type: ignore[attr-defined]
    drifted = sum(in_facts.get(k) != in_index.get(k) for k in set(in_facts) | set(in_index))
    staged = len(facts.recover()) + len(index.recover())
    facts.close()
    index.close()
    return len(in_facts), len(in_index), drifted, staged


def run_once(mode: str, seed: int, ops: int, fail_rate: float, tally: Tally) -> None:
    rng = random.Random(seed * 7919)
    with tempfile.TemporaryDirectory(prefix="lockstep-demo-") as tmp:
        directory = Path(tmp)
        env = dict(os.environ)
        named = rng.random() < 0.5
        if named:
            point = "between_writes" if mode == "unsynchronised" else rng.choice(NAMED_POINTS)
            env["LOCKSTEP_KILL_AT"] = point
            env["LOCKSTEP_KILL_SKIP"] = str(rng.randrange(ops // 2))
        args = [sys.executable, "-m", "coordinator._demo", "--worker", mode, "--dir", tmp]
        args += ["--seed", str(seed), "--ops", str(ops), "--fail-rate", str(fail_rate)]
        child = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)
        assert child.stdout is not None
        lines: list[str] = []
        kill_after = None if named else rng.randrange(1, ops)
        for line in child.stdout:
            lines.append(line.strip())
            if len(lines) == kill_after:
                # A random moment inside the next write: the kill lands mid-operation.
                time.sleep(rng.uniform(0, 0.004))
                child.send_signal(signal.SIGKILL)
                break
        child.wait(timeout=120)
        killed = child.returncode == -signal.SIGKILL
        if mode == "lockstep":
            # The writer is known dead, so recovery need not wait out the in-doubt timeout.
            facts, index = _stores(directory)
            log = open_decision_log(f"sqlite:///{directory / 'decisions.db'}")
            Coordinator(
                [facts, index],
                log,  # type: ignore[arg-type]
                policy=Policy(in_doubt_timeout=0.001, redrive_after=0),
            ).recover()
            facts.close()
            index.close()
            log.close()
        n_facts, n_index, drifted, staged = _drift(directory)
        tally.runs += 1
        tally.writes += len(lines) + (1 if killed else 0)
        tally.committed += lines.count("committed")
        tally.aborted += len(lines) - lines.count("committed")
        tally.kills += killed
        tally.facts += n_facts
        tally.index_records += n_index
        tally.drifted_facts += drifted
        tally.drifted_runs += drifted > 0 or staged > 0
        tally.left_staged += staged


def demo(runs: int, ops: int, fail_rate: float, as_json: bool) -> int:
    tallies = [Tally("unsynchronised (SQL, then index)"), Tally("Lockstep (one atomic commit)")]
    out = sys.stderr if as_json else sys.stdout
    print(
        f"Lockstep demo: {runs} runs per approach, {ops} memory writes each, "
        f"{fail_rate:.0%} of index writes fail, the writer is SIGKILLed in every run.",
        file=out,
    )
    for n in range(runs):
        for mode, tally in zip(("unsynchronised", "lockstep"), tallies, strict=True):
            run_once(mode, 1000 + n, ops, fail_rate, tally)
        print(f"  run {n + 1}/{runs} done", file=out, flush=True)
    if as_json:
        print(json.dumps([asdict(t) for t in tallies], indent=2))
    else:
        print(_table(tallies))
    lockstep = tallies[1]
    return 0 if lockstep.drifted_facts == 0 and lockstep.left_staged == 0 else 1


def _table(tallies: list[Tally]) -> str:
    return text_table(
        [
            {
                "approach": t.approach,
                "runs": t.runs,
                "writes": t.writes,
                "committed": t.committed,
                "killed": t.kills,
                "facts": t.facts,
                "index": t.index_records,
                "drifted facts": t.drifted_facts,
                "runs with drift": t.drifted_runs,
            }
            for t in tallies
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coordinator._demo")
    parser.add_argument("--worker", choices=["unsynchronised", "lockstep"])
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ops", type=int, default=40)
    parser.add_argument("--fail-rate", type=float, default=0.1)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.dir, args.seed, args.ops, args.fail_rate)
        return 0
    return demo(args.runs, args.ops, args.fail_rate, args.json)


if __name__ == "__main__":
    sys.exit(main())
