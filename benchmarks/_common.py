"""What every benchmark shares: the machine line, the deterministic embedder both systems
get, and MemState's own environment (never a project dependency)."""

from __future__ import annotations

import hashlib
import math
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
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
