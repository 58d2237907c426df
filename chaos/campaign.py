"""Chaos campaign: every backend combination, real processes, real servers, real kills.

For each combination and run, an agent process (``chaos.worker``) writes memories while
10% of vector writes fail and one fault hits: the agent SIGKILLed at a named fault point of
the protocol, the agent SIGKILLed at a random moment, or a server (Postgres, Redis, the
Chroma server) SIGKILLed mid-workload and restarted on its data. Then recovery runs and
the fact store and the vector index are compared fact by fact. The same faults hit an
unsynchronised writer (the store, then the vector) beside Lockstep.

    python -m chaos.campaign [--runs 2] [--combos a,b] [--json]

Servers are private children on free loopback ports, stopped at the end; every request
loop is bounded by ``--writes``.
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
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from chaos.servers import ChromaServer, PostgresServer, RedisServer
from chaos.worker import stores
from coordinator import MemoryStore, Policy
from coordinator._tables import text_table
from coordinator.faults import commit_points
from coordinator.plugins import open_decision_log

RECOVER_NOW = Policy(in_doubt_timeout=0.001, redrive_after=0, prepare_timeout=5)


@dataclass
class Urls:
    storage: str
    index: str
    log: str
    servers: tuple[str, ...]


class Servers:
    """The campaign's private servers, started on first use and stopped at the end."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.postgres: PostgresServer | None = None
        self.redis: RedisServer | None = None
        self.chroma: ChromaServer | None = None

    def pg(self) -> PostgresServer:
        if self.postgres is None:
            self.postgres = PostgresServer(self.base / "pg")
            self.postgres.start()
        return self.postgres

    def rd(self) -> RedisServer:
        if self.redis is None:
            self.redis = RedisServer(self.base / "redis")
            self.redis.start()
        return self.redis

    def ch(self) -> ChromaServer:
        if self.chroma is None:
            self.chroma = ChromaServer(self.base / "chroma")
            self.chroma.start()
        return self.chroma

    def kill(self, name: str) -> None:
        if name == "postgres":
            self.pg().kill()
        elif name == "redis":
            self.rd().kill()
        else:
            self.ch().kill()

    def ensure_up(self) -> None:
        for server in (self.postgres, self.redis, self.chroma):
            if server is not None and server.process is None:
                server.start()

    def stop(self) -> None:
        if self.postgres is not None:
            self.postgres.destroy()
        for server in (self.redis, self.chroma):
            if server is not None:
                server.kill()


def _local(d: Path) -> dict[str, str]:
    return {
        "sqlite": f"sqlite:///{d / 'facts.db'}",
        "log": f"sqlite:///{d / 'decisions.db'}",
        "qdrant": f"qdrant+local:///{d / 'qdrant'}?collection=notes&text_field=content",
        "chroma": f"chroma+local:///{d / 'chroma'}?collection=notes&text_field=content",
    }


def _pg_url(servers: Servers) -> str:
    pg = servers.pg()
    name = f"c{uuid.uuid4().hex[:12]}"
    pg.create_database(name)
    return f"postgresql://postgres@127.0.0.1:{pg.port}/{name}"


def _chroma_url(servers: Servers) -> str:
    port = servers.ch().port
    return f"chroma+http://127.0.0.1:{port}?collection=c{uuid.uuid4().hex[:12]}&text_field=content"


def _redis_url(servers: Servers) -> str:
    return f"redis://127.0.0.1:{servers.rd().port}/0?prefix=c{uuid.uuid4().hex[:12]}:"


COMBOS: dict[str, Callable[[Servers, Path], Urls]] = {
    "sqlite + chroma embedded": lambda s, d: Urls(
        _local(d)["sqlite"], _local(d)["chroma"], _local(d)["log"], ()
    ),
    "sqlite + qdrant local": lambda s, d: Urls(
        _local(d)["sqlite"], _local(d)["qdrant"], _local(d)["log"], ()
    ),
    "postgres + chroma server": lambda s, d: Urls(
        (pg := _pg_url(s)), _chroma_url(s), pg, ("postgres", "chroma")
    ),
    "redis + qdrant local": lambda s, d: Urls(
        _redis_url(s), _local(d)["qdrant"], _local(d)["log"], ("redis",)
    ),
}


@dataclass
class Tally:
    """One combination's runs. ``failed_writes`` counts writes that failed under a fault:
    an injected vector failure, or (Lockstep) any abort while a server was down."""

    combo: str
    runs: int = 0
    agent_kills: int = 0
    server_kills: int = 0
    failed_writes: int = 0
    committed: int = 0
    lockstep_drift: int = 0
    unsynchronised_drift: int = 0

    @property
    def faults(self) -> int:
        return self.agent_kills + self.server_kills + self.failed_writes


def run_once(
    mode: str, urls: Urls, servers: Servers, rng: random.Random, writes: int
) -> tuple[list[str], str]:
    """Run one agent under one fault; returns its output lines and the fault it got."""
    faults = ["agent at a fault point", "agent at a random moment"]
    if urls.servers:
        faults.append("server")
    fault = rng.choice(faults)
    env = dict(os.environ)
    if fault == "agent at a fault point":
        point = (
            "between_writes"
            if mode == "unsynchronised"
            else rng.choice(commit_points(["facts", "index0"])[:-1])
        )
        env["LOCKSTEP_KILL_AT"] = point
        env["LOCKSTEP_KILL_SKIP"] = str(rng.randrange(writes // 2))
    args = [sys.executable, "-m", "chaos.worker", "--mode", mode, "--storage", urls.storage]
    args += ["--index", urls.index, "--log", urls.log, "--seed", str(rng.randrange(10**6))]
    args += ["--writes", str(writes)]
    child = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    assert child.stdout is not None
    lines: list[str] = []
    trigger = rng.randrange(1, writes)
    killed_server = False
    for line in child.stdout:
        lines.append(line.strip())
        if len(lines) == trigger and fault == "agent at a random moment":
            child.send_signal(signal.SIGKILL)
            break
        if len(lines) == trigger and fault == "server" and not killed_server:
            servers.kill(rng.choice(urls.servers))
            killed_server = True
    child.wait(timeout=600)
    servers.ensure_up()
    if fault == "server":
        return lines, "server" if killed_server else "none"
    return lines, "agent" if child.returncode == -signal.SIGKILL else "none"


def drift(mode: str, urls: Urls) -> int:
    """Facts that differ between the store and the index (after recovery, for Lockstep)."""
    storage, indexes = stores(urls.storage, [urls.index])
    try:
        if mode == "lockstep":
            log = open_decision_log(urls.log)
            mem = MemoryStore(storage, indexes, log=log, policy=RECOVER_NOW)  # type: ignore[arg-type]
            mem.recover()
            report = mem.verify()
            pending = sum(len(v) for v in report.staged.values())
            pending += sum(len(d.pending) for d in report.derived.values())
            log.close()
            return report.drifted_facts + pending
        facts = {f.id: f.version for f in storage.all_facts()}
        held = dict(indexes[0].contents().committed)
        return sum(facts.get(k) != held.get(k) for k in set(facts) | set(held))
    finally:
        storage.close()
        indexes[0].close()


def campaign(combos: list[str], runs: int, writes: int, seed: int) -> list[Tally]:
    rng = random.Random(seed)
    tallies: list[Tally] = []
    with tempfile.TemporaryDirectory(prefix="lockstep-campaign-") as tmp:
        servers = Servers(Path(tmp))
        try:
            for combo in combos:
                tally = Tally(combo)
                for n in range(runs):
                    for mode in ("unsynchronised", "lockstep"):
                        directory = Path(tmp) / f"{len(tallies)}-{n}-{mode}"
                        directory.mkdir()
                        urls = COMBOS[combo](servers, directory)
                        lines, hit = run_once(
                            mode, urls, servers, random.Random(rng.random()), writes
                        )
                        found = drift(mode, urls)
                        tally.failed_writes += lines.count("vector-failed") + (
                            lines.count("aborted") if mode == "lockstep" else 0
                        )
                        tally.agent_kills += hit == "agent"
                        tally.server_kills += hit == "server"
                        if mode == "lockstep":
                            tally.committed += lines.count("committed")
                            tally.lockstep_drift += found
                        else:
                            tally.unsynchronised_drift += found
                    tally.runs += 1
                    print(f"  {combo}: run {n + 1}/{runs}", file=sys.stderr, flush=True)
                tallies.append(tally)
        finally:
            servers.stop()
    return tallies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--runs", type=int, default=2, help="runs per combination (each: both writers)"
    )
    parser.add_argument("--writes", type=int, default=20)
    parser.add_argument("--combos", default=",".join(COMBOS))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    combos = [c.strip() for c in args.combos.split(",") if c.strip()]
    tallies = campaign(combos, args.runs, args.writes, args.seed)
    rows = [{**asdict(t), "faults": t.faults} for t in tallies]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(text_table(rows))
        total = sum(t.faults for t in tallies)
        print(
            f"\nfaults injected: {total}; drift: Lockstep {sum(t.lockstep_drift for t in tallies)}, "
            f"unsynchronised {sum(t.unsynchronised_drift for t in tallies)}"
        )
    return 0 if all(t.lockstep_drift == 0 for t in tallies) else 1


if __name__ == "__main__":
    sys.exit(main())
