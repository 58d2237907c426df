"""The recovery planner as a generator of effects.

Rules:

Rule 1. A branch is committed only when the log holds COMMIT for its txid, and aborted
        only when the log holds ABORT. Recovery never aborts on "no record" alone: it
        first wins the ABORT insert (decide-once), which fences a slow coordinator out.
Rule 2. No record and younger than ``in_doubt_timeout`` (age from the txid's own
        timestamp): the coordinator may still be working; leave it for a later pass.
Rule 3. COMMIT records without END are re-driven on every participant they name, once
        older than ``redrive_after``; commit is idempotent, so racing the live
        coordinator's phase 2 is harmless.
Rule 4. END is recorded only when every participant named by the record acknowledged.
Rule 5. Everything is idempotent: any number of recoverers may run this at once, and a
        pass cut at any yield is completed by the next.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Generator

from coordinator._core.effects import (
    BranchesResolved,
    DecisionsPersisted,
    Effect,
    InDoubtListed,
    ListInDoubt,
    PersistDecisions,
    ReadRecords,
    RecordEnd,
    RecordsRead,
    Reply,
    ResolveBranches,
)
from coordinator.abc import Decision, DecisionRecord
from coordinator.errors import ConfigurationError
from coordinator.ids import txid_time
from coordinator.outcomes import RecoveryReport
from coordinator.policy import Policy

RecoveryPlan = Generator[Effect, Reply, RecoveryReport]


def recovery_plan(participants: tuple[str, ...], policy: Policy) -> RecoveryPlan:
    """Resolve every in-doubt branch of ``participants`` (their names)."""
    failed: dict[str, BaseException] = {}

    listed = yield ListInDoubt(participants)
    assert isinstance(listed, InDoubtListed)
    now = listed.now
    failed.update(listed.failed)
    holders: dict[str, set[str]] = defaultdict(set)
    for name, txids in listed.branches.items():
        for txid in txids:
            holders[txid].add(name)

    read = yield ReadRecords(tuple(sorted(holders)))
    assert isinstance(read, RecordsRead)
    records: dict[str, DecisionRecord] = dict(read.records)
    for record in read.unended:
        if now - record.decided_at >= policy.redrive_after:  # Rule 3
            records.setdefault(record.txid, record)

    undecided = sorted(txid for txid in holders if txid not in records)
    stale = [t for t in undecided if now - txid_time(t) >= policy.in_doubt_timeout]
    waiting = tuple(t for t in undecided if t not in stale)  # Rule 2
    fenced: list[str] = []
    if stale:
        persisted = yield PersistDecisions(
            tuple((t, Decision.ABORT, tuple(sorted(holders[t]))) for t in stale)
        )
        assert isinstance(persisted, DecisionsPersisted)
        for txid in stale:
            won = persisted.decisions[txid]
            if won is Decision.ABORT:
                fenced.append(txid)
            # A COMMIT here means the coordinator decided first: its own record (with
            # all its voters) is finished by the coordinator or by a later pass.
            records[txid] = DecisionRecord(txid, won, tuple(sorted(holders[txid])), now)

    configured = set(participants)
    commit: dict[str, list[str]] = defaultdict(list)
    abort: dict[str, list[str]] = defaultdict(list)
    endable: set[str] = set()
    for txid, record in records.items():
        names = holders.get(txid, set()) | set(record.participants)
        missing = names - configured
        if missing:
            failed[txid] = ConfigurationError(
                f"decision names participants not configured here: {sorted(missing)}",
                txid=txid,
            )
        elif not record.ended and (record.decision is Decision.ABORT or txid not in stale):
            endable.add(txid)
        target = commit if record.decision is Decision.COMMIT else abort
        for name in sorted(names & configured):
            target[name].append(txid)

    resolved = yield ResolveBranches(
        {n: tuple(t) for n, t in commit.items()}, {n: tuple(t) for n, t in abort.items()}
    )
    assert isinstance(resolved, BranchesResolved)
    for (name, txid), err in resolved.failed.items():
        failed[f"{name}:{txid}"] = err
        endable.discard(txid)

    ended = tuple(sorted(endable))
    if ended:
        yield RecordEnd(ended)  # Rule 4
    return RecoveryReport(
        committed=tuple(
            (n, t) for n, ts in commit.items() for t in ts if (n, t) not in resolved.failed
        ),
        aborted=tuple(
            (n, t) for n, ts in abort.items() for t in ts if (n, t) not in resolved.failed
        ),
        fenced=tuple(fenced),
        waiting=waiting,
        failed=failed,
    )
