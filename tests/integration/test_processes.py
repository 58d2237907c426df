"""Several agent processes writing the same facts through the engine (SQLite stores).

Each process increments a counter fact many times, reading its version and committing
version + 1 across two SQLite stores; a VersionConflict is retried on fresh data. No
increment may be lost, and both stores must end identical.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from participants.sqlite import SQLiteStorage

WRITER = r"""
import sys, time
from pathlib import Path
from coordinator import Coordinator, FactRecord, UpsertFact, VersionConflict, TransactionAborted
from coordinator.log import SQLiteDecisionLog
from participants.sqlite import SQLiteStorage

d = Path(sys.argv[1]); me = sys.argv[2]; increments = int(sys.argv[3])
facts = SQLiteStorage(d / "facts.db", name="facts")
index = SQLiteStorage(d / "index.db", name="index")
coord = Coordinator([facts, index], SQLiteDecisionLog(d / "log.db"))
(d / f"ready-{me}").touch()
while not (d / "go").exists():  # start together, so that the writers really contend
    time.sleep(0.001)
done = retries = 0
while done < increments:
    current = facts.get("counter")
    version = 0 if current is None else current.version
    count = 0 if current is None else current.payload["count"]
    record = FactRecord("counter", "counter", {"count": count + 1, "by": me}, version + 1)
    try:
        coord.commit({"facts": [UpsertFact(record, version)], "index": [UpsertFact(record, version)]})
        done += 1
    except (VersionConflict, TransactionAborted):
        retries += 1
print(retries)
"""


def test_concurrent_processes_lose_no_update(tmp_path: Path) -> None:
    processes, increments = 4, 40
    SQLiteStorage(tmp_path / "facts.db", name="facts").close()
    SQLiteStorage(tmp_path / "index.db", name="index").close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), f"p{i}", str(increments)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready-*"))) < processes and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()
    retries = [int(p.communicate(timeout=240)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    facts = SQLiteStorage(tmp_path / "facts.db", name="facts")
    index = SQLiteStorage(tmp_path / "index.db", name="index")
    counter = facts.get("counter")
    assert counter is not None
    assert counter.payload["count"] == processes * increments
    assert counter.version == processes * increments
    assert index.get("counter") == counter
    assert facts.recover() == [] and index.recover() == []
    assert sum(retries) > 0, "the writers never contended; the test proves nothing"
