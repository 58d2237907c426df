"""Chaos campaign: every backend combination, real processes, real servers, real kills.

For each combination and run, an agent process (``chaos.worker``) writes memories while
10% of vector writes fail and one fault hits: the agent SIGKILLed at a named fault point of
the protocol, the agent SIGKILLed at a random moment, a server (Postgres, Redis, the
Chroma server) SIGKILLed mid-workload and restarted on its data, or the agent's connection
to a server cut, black-holed or delayed through our fault-injecting proxy
(:mod:`chaos.proxy`). Then recovery runs — in-process, as three ``lockstep recover``
processes at once, or as the ``lockstep recover --watch`` daemon running beside the agent
the whole time (where no store locks its files to one process) — and every derived store
is compared with the storage fact by fact. With the daemon, the time from the agent's end
until nothing is in doubt is measured (G6). The same faults hit an unsynchronised writer
(the store, then each mirror, then the vector) beside Lockstep.

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
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks._common import pick
from chaos.proxy import FaultProxy
from chaos.servers import ChromaServer, PostgresServer, RedisServer
from chaos.worker import stores
from coordinator import LockstepError, MemoryStore, Policy
from coordinator._tables import text_table
from coordinator.faults import commit_points, last_resource_points
from coordinator.plugins import open_decision_log

RECOVER_NOW = Policy(in_doubt_timeout=0.001, redrive_after=0, prepare_timeout=5)
DAEMON_TIMEOUT = 2.0  # the daemon's in-doubt timeout in the campaign (seconds)
DAEMON_INTERVAL = 0.5
FAULT_WINDOW = 2.0  # how long a black hole or a delay lasts
WORKER_DEADLINE = 300.0  # a worker still running after this is killed (bounded runs)


@dataclass
class Urls:
    storage: str
    index: str
    log: str
    servers: tuple[str, ...]
    mirrors: tuple[str, ...] = ()

    @property
    def last_resource(self) -> bool:
        """The storage holds the log and commits last with the decision (SQLite, Postgres
        and Redis, each keeping its log beside its facts)."""
        return self.log == self.storage

    @property
    def names(self) -> list[str]:
        """Participant names, as ``chaos.worker`` gives them."""
        return ["facts", *(f"mirror{i}" for i in range(len(self.mirrors))), "index0"]

    def stores_args(self) -> list[str]:
        """``--store NAME=URL`` options naming these stores for the ``lockstep`` CLI."""
        urls = [self.storage, *self.mirrors, self.index]
        return [
            arg for n, u in zip(self.names, urls, strict=True) for arg in ("--store", f"{n}={u}")
        ]

    def through(self, port: int, proxy_port: int) -> Urls:
        """The same stores, reached through a proxy listening on ``proxy_port``."""

        def swap(url: str) -> str:
            return url.replace(f"127.0.0.1:{port}", f"127.0.0.1:{proxy_port}")

        return Urls(
            swap(self.storage),
            swap(self.index),
            swap(self.log),
            self.servers,
            tuple(swap(m) for m in self.mirrors),
        )


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

    def by_name(self, name: str) -> PostgresServer | RedisServer | ChromaServer:
        if name == "postgres":
            return self.pg()
        return self.rd() if name == "redis" else self.ch()

    def kill(self, name: str) -> None:
        self.by_name(name).kill()

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


INDEX_OPTIONS = "text_field=content&embedder=hashing:32"  # the worker's embedder


def _local(d: Path) -> dict[str, str]:
    return {
        "sqlite": f"sqlite:///{d / 'facts.db'}",
        "qdrant": f"qdrant+local:///{d / 'qdrant'}?collection=notes&{INDEX_OPTIONS}",
        "edge": f"qdrant+edge:///{d / 'edge'}?collection=notes&{INDEX_OPTIONS}",
        "chroma": f"chroma+local:///{d / 'chroma'}?collection=notes&{INDEX_OPTIONS}",
    }


def _pg_url(servers: Servers) -> str:
    pg = servers.pg()
    name = f"c{uuid.uuid4().hex[:12]}"
    pg.create_database(name)
    return f"postgresql://postgres@127.0.0.1:{pg.port}/{name}"


def _chroma_url(servers: Servers) -> str:
    port = servers.ch().port
    return f"chroma+http://127.0.0.1:{port}?collection=c{uuid.uuid4().hex[:12]}&{INDEX_OPTIONS}"


def _redis_url(servers: Servers) -> str:
    return f"redis://127.0.0.1:{servers.rd().port}/0?prefix=c{uuid.uuid4().hex[:12]}:"


COMBOS: dict[str, Callable[[Servers, Path], Urls]] = {
    # Every storage keeps the decision log it opens by default: SQLite and Postgres in
    # their own database (and commit last, with the decision), Redis beside its facts
    # (two phases).
    "sqlite + chroma embedded": lambda s, d: Urls(
        _local(d)["sqlite"], _local(d)["chroma"], _local(d)["sqlite"], ()
    ),
    "sqlite + qdrant local": lambda s, d: Urls(
        _local(d)["sqlite"], _local(d)["qdrant"], _local(d)["sqlite"], ()
    ),
    "sqlite + qdrant edge": lambda s, d: Urls(
        _local(d)["sqlite"], _local(d)["edge"], _local(d)["sqlite"], ()
    ),
    "postgres + chroma server": lambda s, d: Urls(
        (pg := _pg_url(s)), _chroma_url(s), pg, ("postgres", "chroma")
    ),
    "redis + qdrant local": lambda s, d: Urls(
        (rd := _redis_url(s)), _local(d)["qdrant"], rd, ("redis",)
    ),
    "postgres + redis + chroma server": lambda s, d: Urls(
        (pg := _pg_url(s)),
        _chroma_url(s),
        pg,
        ("postgres", "redis", "chroma"),
        mirrors=(_redis_url(s),),
    ),
}

#: Combinations whose stores several processes may open at once (no embedded index that
#: locks its files to one process): there the daemon and concurrent recoverers run.
SHARED = {"postgres + chroma server", "postgres + redis + chroma server"}


@dataclass
class Tally:
    """One combination's runs. ``failed_writes`` counts writes that failed under a fault:
    an injected vector failure, or (Lockstep) any abort while a server was down or a
    connection was cut. ``in_doubt_max_s`` is the longest time, after an agent ended, that
    any branch stayed in doubt while the daemon ran (G6: under its timeout plus a pass)."""

    combo: str
    runs: int = 0
    agent_kills: int = 0
    server_kills: int = 0
    network_faults: int = 0
    failed_writes: int = 0
    committed: int = 0
    recovered_by: dict[str, int] = field(default_factory=dict)
    in_doubt_max_s: float = 0.0
    lockstep_drift: int = 0
    unsynchronised_drift: int = 0

    @property
    def faults(self) -> int:
        return self.agent_kills + self.server_kills + self.network_faults + self.failed_writes


@dataclass
class Run:
    """What one agent run went through."""

    lines: list[str]
    hit: str  # "agent", "server", "network" or "none"
    in_doubt_s: float = 0.0


def run_once(
    mode: str, urls: Urls, servers: Servers, rng: random.Random, writes: int, recovery: str
) -> Run:
    """Run one agent under one fault (and, for ``recovery == "daemon"``, the daemon)."""
    faults = ["agent at a fault point", "agent at a random moment"]
    if urls.servers:
        faults += ["server", "network"]
    fault = rng.choice(faults)
    env = dict(os.environ)
    if fault == "agent at a fault point":
        points = (
            # The storage holds the log; Postgres stages its transaction meanwhile.
            last_resource_points(urls.names, "facts", staged=urls.storage.startswith("postgres"))
            if urls.last_resource
            else commit_points(urls.names)
        )
        point = "between_writes" if mode == "unsynchronised" else rng.choice(points[:-1])
        env["LOCKSTEP_KILL_AT"] = point
        env["LOCKSTEP_KILL_SKIP"] = str(rng.randrange(writes // 2))
    proxy = None
    agent_urls = urls
    if fault == "network":
        target = servers.by_name(rng.choice(urls.servers))
        proxy = FaultProxy(target.port)
        agent_urls = urls.through(target.port, proxy.port)
    daemon = _start_daemon(urls) if recovery == "daemon" else None
    try:
        run = _agent(mode, agent_urls, servers, proxy, rng, writes, fault, env)
    finally:
        if proxy is not None:
            proxy.close()
        servers.ensure_up()
    if daemon is not None:
        run.in_doubt_s = _stop_daemon(daemon, urls)
    return run


def _agent(
    mode: str,
    urls: Urls,
    servers: Servers,
    proxy: FaultProxy | None,
    rng: random.Random,
    writes: int,
    fault: str,
    env: dict[str, str],
) -> Run:
    args = [sys.executable, "-m", "chaos.worker", "--mode", mode, "--storage", urls.storage]
    for mirror in urls.mirrors:
        args += ["--mirror", mirror]
    args += ["--index", urls.index, "--log", urls.log, "--seed", str(rng.randrange(10**6))]
    args += ["--writes", str(writes)]
    child = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    watchdog = threading.Timer(WORKER_DEADLINE, child.kill)
    watchdog.start()
    assert child.stdout is not None
    lines: list[str] = []
    trigger = rng.randrange(1, writes)
    hit = "none"
    try:
        for line in child.stdout:
            lines.append(line.strip())
            if len(lines) != trigger or hit != "none":
                continue
            if fault == "agent at a random moment":
                child.send_signal(signal.SIGKILL)
                break
            if fault == "server":
                servers.kill(rng.choice(urls.servers))
                hit = "server"
            elif fault == "network" and proxy is not None:
                _network_fault(proxy, rng.choice(["cut", "blackhole", "delay"]))
                hit = "network"
        child.wait(timeout=WORKER_DEADLINE + 60)
    finally:
        watchdog.cancel()
        if child.poll() is None:
            child.kill()
            child.wait()
    if fault.startswith("agent") and child.returncode == -signal.SIGKILL:
        hit = "agent"
    return Run(lines, hit)


def _network_fault(proxy: FaultProxy, kind: str) -> None:
    """Cut every connection now; or black-hole (then reset) or delay them for a while."""
    if kind == "cut":
        proxy.cut()
        return
    if kind == "blackhole":
        proxy.blackhole()
    else:
        proxy.delay(0.3)

    def heal() -> None:
        if kind == "blackhole":
            proxy.cut()  # what TCP does in the end to a connection that hears nothing
        proxy.heal()

    threading.Timer(FAULT_WINDOW, heal).start()


def _lockstep_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "coordinator.cli", *args]


def _start_daemon(urls: Urls) -> subprocess.Popen[bytes]:
    args = ["recover", "--watch", "--interval", str(DAEMON_INTERVAL), "--max-backoff", "2"]
    args += ["--in-doubt-timeout", str(DAEMON_TIMEOUT), *urls.stores_args(), "--log", urls.log]
    return subprocess.Popen(
        _lockstep_cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _stop_daemon(daemon: subprocess.Popen[bytes], urls: Urls) -> float:
    """Wait until no branch is in doubt (the daemon's work), then SIGTERM the daemon;
    returns the seconds that took after the agent ended."""
    ended = time.monotonic()
    deadline = ended + 10 * (DAEMON_TIMEOUT + DAEMON_INTERVAL) + 30
    storage, mirrors, indexes = stores(urls.storage, [urls.index], urls.mirrors)
    try:
        while time.monotonic() < deadline:
            try:
                if not any(p.recover() for p in (storage, *mirrors, *indexes)):
                    break
            except LockstepError:
                pass  # a server still coming back
            time.sleep(0.1)
        waited = time.monotonic() - ended
    finally:
        for participant in (storage, *mirrors, *indexes):
            participant.close()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
            raise RuntimeError("the recovery daemon ignored SIGTERM") from None
    return waited


def _concurrent_recoverers(urls: Urls, count: int = 3) -> None:
    """``count`` ``lockstep recover`` processes at once over the same stores (G5)."""
    args = _lockstep_cli("recover", *urls.stores_args(), "--log", urls.log)
    args += ["--in-doubt-timeout", "0.001"]
    children = [
        subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(count)
    ]
    for child in children:
        try:
            child.wait(timeout=120)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def drift(mode: str, urls: Urls, *, recover: bool = True) -> int:
    """Facts that differ between the storage and its mirrors and index (for Lockstep after
    recovery, ``recover=False`` when the daemon or other processes did it: then anything
    still staged counts as drift too)."""
    storage, mirrors, indexes = stores(urls.storage, [urls.index], urls.mirrors)
    try:
        if mode == "lockstep":
            log = None if urls.log == urls.storage else open_decision_log(urls.log)
            mem = MemoryStore(
                storage,
                indexes,
                mirrors=mirrors,
                log=log,  # type: ignore[arg-type]
                policy=RECOVER_NOW,
            )
            if recover:
                mem.recover()
            report = mem.verify()
            pending = sum(len(v) for v in report.staged.values())
            pending += sum(len(d.pending) for d in report.derived.values())
            mem.log.close()
            return report.drifted_facts + pending
        facts = {f.id: f.version for f in storage.all_facts()}
        copies = [{f.id: f.version for f in m.all_facts()} for m in mirrors]
        copies.append(dict(indexes[0].contents().committed))
        return sum(
            any(facts.get(k) != c.get(k) for c in copies)
            for k in set(facts).union(*(set(c) for c in copies))
        )
    finally:
        for participant in (storage, *mirrors, *indexes):
            participant.close()


def campaign(combos: list[str], runs: int, writes: int, seed: int) -> list[Tally]:
    rng = random.Random(seed)
    tallies: list[Tally] = []
    with tempfile.TemporaryDirectory(prefix="lockstep-campaign-") as tmp:
        servers = Servers(Path(tmp))
        try:
            for combo in combos:
                tally = Tally(combo)
                for n in range(runs):
                    styles = (
                        ["in-process", "recoverers", "daemon"]
                        if combo in SHARED
                        else ["in-process"]
                    )
                    recovery = styles[(n + len(tallies)) % len(styles)]  # every style in CI too
                    for mode in ("unsynchronised", "lockstep"):
                        directory = Path(tmp) / f"{len(tallies)}-{n}-{mode}"
                        directory.mkdir()
                        urls = COMBOS[combo](servers, directory)
                        style = recovery if mode == "lockstep" else "none"
                        run = run_once(
                            mode, urls, servers, random.Random(rng.random()), writes, style
                        )
                        if style == "recoverers":
                            _concurrent_recoverers(urls)
                        found = drift(mode, urls, recover=style == "in-process")
                        tally.failed_writes += sum(
                            run.lines.count(k) for k in ("vector-failed", "mirror-failed")
                        ) + (run.lines.count("aborted") if mode == "lockstep" else 0)
                        tally.agent_kills += run.hit == "agent"
                        tally.server_kills += run.hit == "server"
                        tally.network_faults += run.hit == "network"
                        if mode == "lockstep":
                            tally.committed += run.lines.count("committed")
                            tally.lockstep_drift += found
                            tally.recovered_by[style] = tally.recovered_by.get(style, 0) + 1
                            tally.in_doubt_max_s = max(tally.in_doubt_max_s, run.in_doubt_s)
                        else:
                            tally.unsynchronised_drift += found
                    tally.runs += 1
                    print(f"  {combo}: run {n + 1}/{runs}", file=sys.stderr, flush=True)
                tallies.append(tally)
                # Each combination's result as it ends: a long campaign cut short keeps it.
                print(
                    f"  {combo}: done, {tally.runs} runs, {tally.faults} faults, "
                    f"drift: Lockstep {tally.lockstep_drift}, "
                    f"unsynchronised {tally.unsynchronised_drift}",
                    file=sys.stderr,
                    flush=True,
                )
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
    combos = pick(parser, "--combos", args.combos, COMBOS)
    tallies = campaign(combos, args.runs, args.writes, args.seed)
    rows = [{**asdict(t), "faults": t.faults} for t in tallies]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(
            text_table(
                [
                    {
                        **row,
                        "recovered_by": " ".join(
                            f"{k}:{v}" for k, v in row["recovered_by"].items()
                        ),
                        "in_doubt_max_s": f"{row['in_doubt_max_s']:.1f}",
                    }
                    for row in rows
                ]
            )
        )
        total = sum(t.faults for t in tallies)
        print(
            f"\nfaults injected: {total}; drift: Lockstep {sum(t.lockstep_drift for t in tallies)}, "
            f"unsynchronised {sum(t.unsynchronised_drift for t in tallies)}"
        )
    return 0 if all(t.lockstep_drift == 0 for t in tallies) else 1


if __name__ == "__main__":
    sys.exit(main())
