"""What another process sees of a store: used by tests that check a store's locks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_OPEN = """
import sys
from coordinator import MemoryStore, ParticipantError
from coordinator.embeddings import HashingEmbedder
try:
    MemoryStore.open(sys.argv[1], embedder=HashingEmbedder(int(sys.argv[2]))).close()
    print("opened")
except ParticipantError as exc:
    print(exc)
"""


def open_from_another_process(directory: Path, dim: int = 16) -> str:
    """``MemoryStore.open(directory)`` run in a new process: the ``ParticipantError`` it
    raised, or ``opened``."""
    done = subprocess.run(
        [sys.executable, "-c", _OPEN, str(directory), str(dim)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.strip()
