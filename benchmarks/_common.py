"""What every benchmark shares: the machine line, the deterministic embedder both systems
get, MemState's own environment (never a project dependency), the check of named choices
on the command line (the chaos campaign's too), and the child processes measurements run
in (one run each, or kept open while systems take turns)."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import queue
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MEMSTATE_VENV = ROOT / "benchmarks" / ".venv-memstate"
#: What MemState's environment holds: MemState 0.5.1 with the backends the benchmarks use
#: (greenlet: SQLAlchemy's Postgres path needs it and the extra leaves it out).
MEMSTATE_REQUIREMENTS = [
    "memstate[postgres,redis,langgraph]==0.5.1",
    "aiosqlite",
    "greenlet",
    "qdrant-client",
    "chromadb",
]
DIM = 32


def embed(text: str) -> list[float]:
    """The same deterministic hashing embedder for every system (no model measured)."""
    vector = [0.0] * DIM
    for word in text.lower().split():
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        vector[int.from_bytes(digest[:4], "little") % DIM] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector] if any(vector) else [1.0] + [0.0] * (DIM - 1)


class SameEmbedder:
    """:func:`embed` as a Lockstep embedder."""

    dim = DIM
    inline = True  # as cheap as HashingEmbedder: called on the event loop, as MemState does

    def embed(self, texts: Any) -> list[list[float]]:
        return [embed(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return embed(text)


def percentile_ms(seconds: Sequence[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of durations in seconds, in milliseconds; 0 for
    none."""
    ordered = sorted(seconds)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


def pick(parser: argparse.ArgumentParser, flag: str, text: str, known: Iterable[str]) -> list[str]:
    """The comma-separated names of ``text`` given to ``flag``; exits with the known names
    when one is not among them."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        wanted = ", ".join(repr(k) for k in known)
        given = f"unknown {', '.join(repr(n) for n in unknown)}" if unknown else "nothing given"
        parser.error(f"{flag}: {given}; expected a comma-separated list of {wanted}")
    return names


def positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, Lockstep durable (SQLite synchronous=FULL, "
        f"Postgres fsync=on, Redis appendfsync always), disk: {tempfile.gettempdir()}"
    )


def ensure_memstate_env() -> Path:
    """MemState's own virtual environment, created or completed from the package registry."""
    python = MEMSTATE_VENV / "bin" / "python"
    stamp = MEMSTATE_VENV / "requirements.txt"
    wanted = "\n".join(MEMSTATE_REQUIREMENTS)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(MEMSTATE_VENV)], check=True)
    if not stamp.exists() or stamp.read_text() != wanted:
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *MEMSTATE_REQUIREMENTS], check=True
        )
        stamp.write_text(wanted)
    return python


def run_child(
    module: str, spec: dict[str, Any], tmp: Path, python: str = sys.executable
) -> dict[str, Any] | str:
    """Run one measurement as ``python -m <module> --child <spec>`` in a fresh directory
    (``spec["dir"]``); its JSON result, or why there is none."""

    with tempfile.TemporaryDirectory(dir=tmp) as directory:
        done = subprocess.run(
            [python, "-m", module, "--child", json.dumps({**spec, "dir": directory})],
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


def serve_child(measure: Any, spec: str) -> None:
    """The child's side of :func:`run_child`: print ``measure(spec)`` as JSON, then end the
    process at once (client threads, pools and aiosqlite must not keep it alive)."""

    try:
        print(json.dumps(measure(json.loads(spec))), flush=True)
    except BaseException as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        os._exit(1)
    os._exit(0)


#: How a served child marks its answers on stdout (libraries may print there too).
ANSWER = "@answer "


class Child:
    """A measurement process that stays up between commands, so that systems can take
    turns every few operations on stores each keeps open (server-side noise, such as a
    Chroma server's latency drifting between 13 and 24 ms a write, then falls on every
    system alike). Started as ``python -m <module> --child <spec>``; each command
    is a JSON line on its stdin, answered by one line on its stdout (see
    :func:`serve_commands`)."""

    def __init__(
        self, module: str, spec: dict[str, Any], tmp: Path, python: str = sys.executable
    ) -> None:

        self._dir = tempfile.TemporaryDirectory(dir=tmp)
        self._stderr = open(Path(self._dir.name) / "stderr", "w+")  # noqa: SIM115 - closed in close()
        self._process = subprocess.Popen(
            [
                python,
                "-m",
                module,
                "--child",
                json.dumps({**spec, "dir": self._dir.name}),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "ANONYMIZED_TELEMETRY": "False"},
        )
        self._answers: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.failed: str | None = None
        self._await()  # the stores are open

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            if line.startswith(ANSWER):
                self._answers.put(line[len(ANSWER) :])
        self._answers.put(None)  # the process ended

    def ask(self, command: dict[str, Any]) -> dict[str, Any] | str:
        """The child's answer to ``command``, or why there is none (then and after)."""

        if self.failed is not None:
            return self.failed
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(json.dumps(command) + "\n")
            self._process.stdin.flush()
        except OSError:
            pass  # it died: _await says why
        return self._await()

    def _await(self, timeout: float = 1800) -> dict[str, Any] | str:

        try:
            line = self._answers.get(timeout=timeout)
        except queue.Empty:
            line = None
            self._process.kill()
        if line is None:
            self._process.wait()
            self._stderr.seek(0)
            said = self._stderr.read().strip().splitlines() or [
                f"exited {self._process.returncode}"
            ]
            self.failed = said[-1][:120]
            return self.failed
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        """End the process (its stdin closed, killed if it does not end) and remove its
        directory."""
        if self._process.stdin is not None:
            try:
                self._process.stdin.close()
            except OSError:
                pass
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._reader.join(timeout=10)  # at the end of stdout once the process is gone
        if self._process.stdout is not None and not self._reader.is_alive():
            self._process.stdout.close()
        self._stderr.close()
        self._dir.cleanup()


def serve_commands(start: Any, spec: str) -> None:
    """The child's side of :class:`Child`: ``run = start(spec)`` opens the stores, then
    every command line read is answered with ``run(command)`` as JSON, until stdin
    closes; the process then ends at once (as in :func:`serve_child`)."""

    def answer(value: Any) -> None:
        print(ANSWER + json.dumps(value), flush=True)

    try:
        run = start(json.loads(spec))
        answer({"ready": True})
        for line in sys.stdin:
            answer(run(json.loads(line)))
    except BaseException as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        os._exit(1)
    os._exit(0)


@contextmanager
def children(
    module: str, specs: Mapping[str, dict[str, Any]], tmp: Path, pythons: Mapping[str, str]
) -> Iterator[dict[str, Child]]:
    """A :class:`Child` for each name of ``specs`` (run by ``pythons[name]``, default this
    interpreter), all ended when the block ends."""
    started: dict[str, Child] = {}
    try:
        for name, spec in specs.items():
            started[name] = Child(module, spec, tmp, pythons.get(name, sys.executable))
        yield started
    finally:
        for child in started.values():
            child.close()


def take_turns(
    running: Mapping[str, Child], kinds: Sequence[str], share: int, size: int, round_: int
) -> Iterator[tuple[str, str, dict[str, Any] | str]]:
    """Every child runs ``share`` operations a writer of each of ``kinds`` in turn, in
    turns of ``size``; the first child of a turn rotates with the round and the turn, and
    a kind's last turn finishes its deferred work (``flush``). Yields ``(name, kind,
    answer)``, the answer a child's measurement or why it has none."""
    names = list(running)
    turns = -(-share // size)
    for kind in kinds:
        for turn in range(turns):
            command = {
                "op": kind,
                "ops": min(size, share - turn * size),
                "flush": turn == turns - 1,
            }
            first = (round_ + turn) % len(names)
            for name in names[first:] + names[:first]:
                yield name, kind, running[name].ask(command)


def accumulate(totals: dict[Any, dict[str, Any]], key: Any, answer: dict[str, Any]) -> None:
    """Add a turn's latencies, wall and CPU seconds to ``totals[key]``."""
    slot = totals.setdefault(key, {"latencies": [], "seconds": 0.0, "cpu_seconds": 0.0})
    slot["latencies"] += answer["latencies"]
    slot["seconds"] += answer["seconds"]
    slot["cpu_seconds"] += answer["cpu_seconds"]


def run_threads(work: Any, writers: int) -> None:
    """Run ``work(w)`` for each writer ``w`` on its own thread; return when all are done.

    :raises Exception: the first error a writer raised (a writer that failed must not
        pass for one that ran fewer operations)."""

    errors: list[BaseException] = []

    def run(w: int) -> None:
        try:
            work(w)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
