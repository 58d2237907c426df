"""A disk that fills up under the stores: refused commits leave nothing behind, the store
closes, and once there is space again, it opens with every committed fact in every store.

The disk is a small filesystem of the test's own (tmpfs, mounted for the test; root only),
grown again with a remount.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator import Fact, MemoryStore, TransactionAborted
from coordinator.embeddings import HashingEmbedder
from coordinator.settings import LockstepSettings

SMALL, LARGE = "6m", "64m"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A filesystem of its own, ``SMALL`` bytes, for the test to fill."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem to fill needs root")
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL}", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "--lazy", str(mountpoint)], check=True)


def grow(disk: Path) -> list[str]:
    """The command that gives ``disk`` room again."""
    return ["mount", "-o", f"remount,size={LARGE}", str(disk)]


def memory(n: int) -> Fact:
    return Fact(type="note", payload={"content": f"memory {n} " + "words " * 300})


def fill(mem: MemoryStore, until: str) -> tuple[list[str], list[str]]:
    """Commit memories until a refusal's message holds ``until``: the ids committed and
    the refusals' messages."""
    committed: list[str] = []
    refusals: list[str] = []
    for n in range(20_000):
        try:
            committed.append(mem.commit(memory(n)))
        except TransactionAborted as exc:
            refusals.append(str(exc))
            if until in str(exc) or len(refusals) == 20:
                break
    return committed, refusals


def test_the_embedded_default_on_a_full_disk_loses_nothing(small_disk: Path) -> None:
    directory = small_disk / "memory"
    mem = MemoryStore.open(directory, embedder=HashingEmbedder(64))
    committed, refusals = fill(mem, "disk is full")
    assert committed, "nothing fitted on the disk; the test proves nothing"
    assert any("disk is full" in refusal for refusal in refusals), refusals
    # Committed transactions' END marks are kept for a later write, which the full disk
    # refuses: that is no reason for close() to fail.
    mem.close()

    subprocess.run(grow(small_disk), check=True)
    with MemoryStore.open(directory, embedder=HashingEmbedder(64)) as mem:
        report = mem.verify()
        assert report.facts == len(committed)  # a refused commit left no fact behind
        assert report.clean, report
        assert set(mem.get_many(committed)) == set(committed)
        assert mem.search("memory 0", k=1)[0].fact["id"] == committed[0]
        mem.commit(memory(-1))  # and it goes on


CHROMA_WRITER = r"""
import json, subprocess, sys
from coordinator import Fact, MemoryStore, ParticipantError, TransactionAborted
from coordinator.settings import LockstepSettings
from tests.integration.test_full_disk import fill, memory

settings = LockstepSettings.model_validate_json(sys.argv[1])
mem = MemoryStore.from_settings(settings)
committed, refusals = fill(mem, "Chroma")
subprocess.run(json.loads(sys.argv[2]), check=True)  # room again
after = {}
try:
    mem.commit(memory(-1))
    after["commit"] = "committed"
except TransactionAborted as exc:
    after["commit"] = str(exc)
try:
    mem.search("memory", k=1)
    after["search"] = "answered"
except ParticipantError as exc:
    after["search"] = str(exc)
again = MemoryStore.from_settings(settings)  # the same collection, in the same process
try:
    again.commit(memory(-2))
    after["again"] = "committed"
except TransactionAborted as exc:
    after["again"] = str(exc)
print(json.dumps({"committed": committed, "refusals": refusals, **after}))
"""


def test_chroma_embedded_after_a_full_disk_refuses_rather_than_hangs(small_disk: Path) -> None:
    """Chroma's engine, once it failed to write its files, may hang the process on a later
    write (with the interpreter held: nothing in the process can end it), so the index
    refuses every call in that process; a new process recovers the store whole."""
    settings = LockstepSettings(
        storage=f"sqlite:///{small_disk}/facts.db",
        indexes=[f"chroma+local:///{small_disk}/vectors?collection=memories"],
        embedder="hashing:64",
        in_doubt_timeout=0.1,
    )
    try:
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                CHROMA_WRITER,
                settings.model_dump_json(),
                json.dumps(grow(small_disk)),
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the writer hung after Chroma's engine failed")
    assert child.returncode == 0, child.stderr
    seen = json.loads(child.stdout)
    assert seen["committed"], "nothing fitted on the disk; the test proves nothing"
    assert "Chroma" in seen["refusals"][-1], seen["refusals"]
    for call in ("commit", "search", "again"):
        assert "refuses every call here" in seen[call], (call, seen[call])

    with MemoryStore.from_settings(settings) as mem:  # a new process: Chroma reads it afresh
        report = mem.verify()
        assert report.facts == len(seen["committed"])
        assert report.clean, report
        assert mem.search("memory 0", k=1)[0].fact["id"] == seen["committed"][0]
        mem.commit(memory(-3))
        assert mem.verify().clean
