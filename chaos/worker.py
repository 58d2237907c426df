"""A chaos writer: an agent process running a mixed memory workload against any stores.

    python -m chaos.worker --mode lockstep|unsynchronised --storage URL [--mirror URL]
        --index URL --log URL [--seed N] [--writes N] [--fail-rate 0.1]

Lockstep's workload also rolls the session back one transaction every seventh operation.
Prints one line per operation (``committed``, ``aborted``, ``vector-failed``,
``mirror-failed``; a rollback is a committed transaction) so the campaign can count them
even when the process is killed mid-run. ``LOCKSTEP_KILL_AT`` (and ``LOCKSTEP_KILL_SKIP``)
make it SIGKILL itself at a named fault point.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from coordinator import Fact, LockstepError, MemoryStore, Vote, Write, new_txid
from coordinator.abc import Index, Storage, SupportsOnePhase
from coordinator.embeddings import HashingEmbedder
from coordinator.errors import ParticipantError
from coordinator.faults import hook_from_environment
from coordinator.plugins import open_decision_log, open_participant
from coordinator.records import DeleteFact, FactRecord, UpsertFact

EMBEDDER = HashingEmbedder(32)
TOPICS = ["tea", "coffee", "london", "lisbon", "cats", "dogs", "dark mode", "peanuts"]


def stores(
    storage_url: str, index_urls: Sequence[str], mirror_urls: Sequence[str] = ()
) -> tuple[Storage, list[Storage], list[Index]]:
    """The storage (``facts``), its mirrors (``mirror0``...) and indexes (``index0``...)."""
    storage = open_participant(storage_url, name="facts")
    mirrors = [open_participant(u, name=f"mirror{i}") for i, u in enumerate(mirror_urls)]
    indexes = [
        open_participant(u, name=f"index{i}", embedder=EMBEDDER) for i, u in enumerate(index_urls)
    ]
    assert all(isinstance(s, Storage) for s in (storage, *mirrors))
    assert all(isinstance(i, Index) for i in indexes)
    return storage, mirrors, indexes  # type: ignore[return-value]


def write_through(store: Storage, txid: str, writes: Sequence[Write]) -> None:
    """Apply ``writes`` to one storage at once (no coordination: the unsynchronised way)."""
    if isinstance(store, SupportsOnePhase):
        store.commit_one_phase(txid, writes)
    else:
        store.prepare(txid, writes)
        store.commit(txid)


def flaky(prepare: Callable[..., Vote], rate: float, rng: random.Random) -> Callable[..., Vote]:
    def call(txid: str, writes: Sequence[Write]) -> Vote:
        if rng.random() < rate:
            raise ParticipantError("injected vector store failure", participant="index")
        return prepare(txid, writes)

    return call


def choose(rng: random.Random, existing: list[str]) -> tuple[str, str | None, str]:
    text = f"note about {rng.choice(TOPICS)} #{rng.randrange(10**6)}"
    roll = rng.random()
    if existing and roll < 0.2:
        return "delete", rng.choice(existing), text
    if existing and roll < 0.55:
        return "update", rng.choice(existing), text
    return "insert", None, text


def lockstep(args: argparse.Namespace, rng: random.Random) -> None:
    storage, mirrors, indexes = stores(args.storage, args.index, args.mirror)
    # A log in the storage's own database is the storage's default: it then commits last,
    # together with the decision.
    log = None if args.log == args.storage else open_decision_log(args.log)
    mem = MemoryStore(
        storage,
        indexes,
        mirrors=mirrors,
        log=log,  # type: ignore[arg-type]
        fault_hook=hook_from_environment(),
    )
    first = mem.indexes[0]
    first.prepare = flaky(first.prepare, args.fail_rate, random.Random(rng.random()))  # type: ignore[method-assign]
    for n in range(args.writes):
        try:
            existing = [f["id"] for f in mem.query()]
            op, fact_id, text = choose(rng, existing)
            if n % 7 == 6:
                # Undo the session's last transaction: a rollback re-creates deleted facts,
                # removes inserted ones and restores older versions, in every store at once.
                mem.rollback(1, "s")
            elif n % 10 == 9 and len(existing) > 2:  # a multi-fact transaction now and then
                with mem.transaction(session_id="s") as tx:
                    tx.commit(Fact(type="note", payload={"content": text}))
                    tx.delete(rng.choice(existing))
            elif op == "insert":
                mem.commit(Fact(type="note", payload={"content": text}), session_id="s")
            elif op == "update" and fact_id is not None:
                mem.update(fact_id, {"payload": {"content": text}})
            elif fact_id is not None:
                mem.delete("s", fact_id)
            print("committed", flush=True)
        except LockstepError:
            print("aborted", flush=True)


def unsynchronised(args: argparse.Namespace, rng: random.Random) -> None:
    """SQL (or Redis) first, then each mirror, then the vector write; a failed later write
    is left as is, as libraries without coordination do."""
    storage, mirrors, indexes = stores(args.storage, args.index, args.mirror)
    index = indexes[0]
    vector_write = flaky(index.prepare, args.fail_rate, random.Random(rng.random()))
    hook = hook_from_environment()
    for _ in range(args.writes):
        try:
            existing = [f.id for f in storage.all_facts()]
            op, fact_id, text = choose(rng, existing)
            txid = new_txid()
            current = None if fact_id is None else storage.get(fact_id)
            writes: list[Any]
            if op == "delete" and current is not None:
                writes = [DeleteFact(current.id, current.version)]
            else:
                version = 0 if current is None else current.version
                record = FactRecord(
                    fact_id or f"m-{txid}", "note", {"content": text}, version + 1, ts=time.time()
                )
                writes = [UpsertFact(record, version, embedding=tuple(EMBEDDER.embed([text])[0]))]
            write_through(storage, txid, writes)
        except LockstepError:
            print("aborted", flush=True)
            continue
        hook("between_writes")
        try:
            for mirror in mirrors:
                write_through(mirror, txid, writes)
        except LockstepError:
            print("mirror-failed", flush=True)
            continue
        try:
            vector_write(txid, writes)
            index.commit(txid)
            print("committed", flush=True)
        except LockstepError:
            print("vector-failed", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=["lockstep", "unsynchronised"], required=True)
    parser.add_argument("--storage", required=True)
    parser.add_argument("--mirror", action="append", default=[])
    parser.add_argument("--index", action="append", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--writes", type=int, default=20)
    parser.add_argument("--fail-rate", type=float, default=0.1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    (lockstep if args.mode == "lockstep" else unsynchronised)(args, rng)
    return 0


if __name__ == "__main__":
    sys.exit(main())
