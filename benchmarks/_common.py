"""What every benchmark shares: the machine line, the deterministic embedder both systems
get, MemState's own environment (never a project dependency), and the check of named
choices on the command line (the chaos campaign's too)."""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MEMSTATE_VENV = ROOT / "benchmarks" / ".venv-memstate"
#: What MemState's environment holds: MemState 0.5.1 with the backends the benchmarks use
#: (greenlet: SQLAlchemy's Postgres path needs it and the extra leaves it out).
MEMSTATE_REQUIREMENTS = [
    "memstate[postgres,redis]==0.5.1",
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

    def embed(self, texts: Any) -> list[list[float]]:
        return [embed(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return embed(text)


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
    import json

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
    import json

    try:
        print(json.dumps(measure(json.loads(spec))), flush=True)
    except BaseException as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        os._exit(1)
    os._exit(0)


def run_threads(work: Any, writers: int) -> None:
    """Run ``work(w)`` for each writer ``w`` on its own thread; return when all are done."""
    import threading

    threads = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
