"""The coordinator end to end on real stores (SQLite file + in-process), sync and async.

Source of the generated sync twin. Every assertion reads the stores' committed contents
and their staged branches.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from coordinator import (
    AsyncCoordinator,
    Decision,
    DeleteFact,
    Policy,
    PrepareTimeout,
    TransactionAborted,
    TransactionInDoubt,
    UpsertFact,
    UsageError,
    VersionConflict,
    VoteRejected,
    new_txid,
)
from coordinator._acompat import asleep
from coordinator.log import AsyncSQLiteDecisionLog
from participants.memory import AsyncInMemoryStorage
from participants.sqlite import AsyncSQLiteStorage
from tests.support._async.flaky import AsyncFailingLog, AsyncFlaky, Script
from tests.support.crash import fact, upsert

pytestmark = pytest.mark.anyio

FAST = Policy(prepare_timeout=0.5, finish_attempts=3, finish_backoff=0.001)
RECOVER_NOW = Policy(in_doubt_timeout=0.001, redrive_after=0)


class Stores:
    """A SQLite store and an in-process store, one flaky, sharing a decision log."""

    def __init__(self, tmp_path: Path, policy: Policy = FAST) -> None:
        self.sqlite = AsyncSQLiteStorage(tmp_path / "facts.db", name="facts")
        self.script = Script()
        self.mirror = AsyncInMemoryStorage("mirror")
        self.flaky = AsyncFlaky(self.mirror, self.script)
        self.log = AsyncFailingLog(AsyncSQLiteDecisionLog(tmp_path / "log.db"))
        self.coordinator = AsyncCoordinator([self.sqlite, self.flaky], self.log, policy=policy)

    def recoverer(self) -> AsyncCoordinator:
        return AsyncCoordinator([self.sqlite, self.flaky], self.log, policy=RECOVER_NOW)

    async def both(self, fact_id: str) -> tuple[object, object]:
        return await self.sqlite.get(fact_id), await self.mirror.get(fact_id)

    async def staged(self) -> tuple[list[str], list[str]]:
        return await self.sqlite.recover(), await self.mirror.recover()

    async def close(self) -> None:
        """Let go of the SQLite files; nothing is finished or rolled back."""
        await self.sqlite.close()
        await self.log.close()


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[Stores]:
    made = Stores(tmp_path)
    yield made
    await made.close()


async def test_a_commit_lands_in_every_store(stores: Stores) -> None:
    outcome = await stores.coordinator.commit(
        {"facts": [upsert("a", 1, text="hi")], "mirror": [upsert("a", 1, text="hi")]}
    )
    assert outcome.complete and not outcome.one_phase
    assert await stores.both("a") == (fact("a", 1, text="hi"), fact("a", 1, text="hi"))
    assert await stores.staged() == ([], [])
    assert (await stores.log.records([outcome.txid]))[outcome.txid].ended


async def test_a_single_participant_commits_in_one_phase_without_a_log_record(
    stores: Stores,
) -> None:
    outcome = await stores.coordinator.commit({"facts": [upsert("a", 1)]})
    assert outcome.one_phase
    assert await stores.sqlite.get("a") == fact("a", 1)
    assert await stores.log.records([outcome.txid]) == {}


async def test_one_phase_can_be_switched_off(tmp_path: Path) -> None:
    stores = Stores(tmp_path, Policy(one_phase=False))
    outcome = await stores.coordinator.commit({"facts": [upsert("a", 1)]})
    assert not outcome.one_phase
    assert (await stores.log.records([outcome.txid]))[outcome.txid].participants == ("facts",)
    await stores.close()


async def test_a_no_vote_aborts_every_store(stores: Stores) -> None:
    stores.script.vote_no = True
    with pytest.raises(VoteRejected) as caught:
        await stores.coordinator.commit({"facts": [upsert("a", 1)], "mirror": [upsert("a", 1)]})
    assert caught.value.participant == "mirror"
    assert await stores.both("a") == (None, None)
    assert await stores.staged() == ([], [])


async def test_a_version_conflict_aborts_every_store(stores: Stores) -> None:
    await stores.coordinator.commit({"facts": [upsert("a", 1)], "mirror": [upsert("a", 1)]})
    with pytest.raises(VersionConflict):
        # The mirror would accept version 2, but the source of truth says it is stale.
        await stores.coordinator.commit(
            {"facts": [upsert("a", 1, lost=True)], "mirror": [upsert("a", 2, lost=True)]}
        )
    assert await stores.both("a") == (fact("a", 1), fact("a", 1))
    assert await stores.staged() == ([], [])


async def test_a_participant_that_does_not_vote_in_time_aborts_everything(
    stores: Stores,
) -> None:
    stores.script.prepare_delay = 1.0
    with pytest.raises(PrepareTimeout) as caught:
        await stores.coordinator.commit({"facts": [upsert("a", 1)], "mirror": [upsert("a", 1)]})
    assert caught.value.participant == "mirror"
    await asleep(1.2)  # a prepare that was still running may land now, after the abort
    await stores.recoverer().recover()
    assert await stores.both("a") == (None, None)
    assert await stores.staged() == ([], [])


async def test_transient_commit_failures_are_retried(stores: Stores) -> None:
    stores.script.commit_failures = 2
    outcome = await stores.coordinator.commit(
        {"facts": [upsert("a", 1)], "mirror": [upsert("a", 1)]}
    )
    assert outcome.complete
    assert await stores.both("a") == (fact("a", 1), fact("a", 1))


async def test_a_participant_that_keeps_failing_commit_is_reported_then_recovered(
    stores: Stores,
) -> None:
    stores.script.commit_always_fails = True
    outcome = await stores.coordinator.commit(
        {"facts": [upsert("a", 1)], "mirror": [upsert("a", 1)]}
    )
    assert outcome.unfinished == ("mirror",)
    assert "injected commit failure" in str(outcome.errors["mirror"])
    # Read your writes where acknowledged; the mirror still holds the branch staged.
    assert await stores.both("a") == (fact("a", 1), None)
    assert await stores.staged() == ([], [outcome.txid])
    stores.script.commit_always_fails = False
    report = await stores.recoverer().recover()
    assert ("mirror", outcome.txid) in report.committed  # (facts: an idempotent re-drive)
    assert await stores.both("a") == (fact("a", 1), fact("a", 1))
    assert await stores.staged() == ([], [])
    assert (await stores.log.records([outcome.txid]))[outcome.txid].ended


async def test_a_log_failure_at_the_decision_is_in_doubt_then_settled_by_recovery(
    stores: Stores,
) -> None:
    stores.log.failing = True
    with pytest.raises(TransactionInDoubt):
        await stores.coordinator.commit({"facts": [upsert("a", 1)], "mirror": [upsert("a", 1)]})
    assert len((await stores.staged())[0]) == 1  # nothing touched while in doubt
    stores.log.failing = False
    # Past the recoverer's in-doubt timeout (1 ms): a fast machine got here sooner once,
    # and the branch was left waiting, as it must be while it is younger.
    await asleep(0.01)
    report = await stores.recoverer().recover()
    assert len(report.fenced) == 1
    assert await stores.both("a") == (None, None)
    assert await stores.staged() == ([], [])


async def test_a_stalled_coordinator_cannot_revive_a_fenced_transaction(stores: Stores) -> None:
    txid = new_txid(now=1.0)  # prepared "long ago" by a coordinator that then stalled
    await stores.sqlite.prepare(txid, [upsert("a", 1)])
    await stores.mirror.prepare(txid, [upsert("a", 1)])
    report = await stores.recoverer().recover()
    assert report.fenced == (txid,)
    assert (await stores.log.records([txid]))[txid].decision is Decision.ABORT
    with pytest.raises(TransactionAborted, match="already aborted"):
        await stores.coordinator.commit(
            {"facts": [upsert("a", 1)], "mirror": [upsert("a", 1)]}, txid=txid
        )
    assert await stores.both("a") == (None, None)
    assert await stores.staged() == ([], [])


async def test_deletes_commit_atomically(stores: Stores) -> None:
    await stores.coordinator.commit({"facts": [upsert("a", 1)], "mirror": [upsert("a", 1)]})
    gone = [DeleteFact("a", 1)]
    await stores.coordinator.commit({"facts": gone, "mirror": gone})
    assert await stores.both("a") == (None, None)


@pytest.mark.parametrize(
    ("writes", "message"),
    [
        ({"nowhere": [upsert("a", 1)]}, "unknown participant"),
        ({"facts": upsert("a", 1)}, "must be a list of writes"),
        ({"facts": ["not a write"]}, "expected UpsertFact, DeleteFact, TransactionMeta or Execute"),
        ({"facts": [upsert("a", 1), upsert("a", 1)]}, "changes fact 'a' twice"),
        (
            {"facts": [UpsertFact(fact("a", 1), 1)], "mirror": [upsert("a", 1)]},
            "must be higher",
        ),
    ],
)
async def test_bad_writes_are_refused_and_nothing_is_staged(
    stores: Stores, writes: dict[str, object], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        await stores.coordinator.commit(writes)  # type: ignore[arg-type]
    assert await stores.both("a") == (None, None)
    assert await stores.staged() == ([], [])


async def test_a_txid_over_the_xa_limit_is_refused(stores: Stores) -> None:
    with pytest.raises(UsageError, match="XA limit"):
        await stores.coordinator.commit({"facts": [upsert("a", 1)]}, txid="f" * 65)
    assert await stores.sqlite.get("a") is None


async def test_duplicate_or_overlong_participant_names_are_refused(tmp_path: Path) -> None:
    log = AsyncSQLiteDecisionLog(tmp_path / "log.db")
    with pytest.raises(UsageError, match="two participants are named 'x'"):
        AsyncCoordinator([AsyncInMemoryStorage("x"), AsyncInMemoryStorage("x")], log)
    await log.close()
    with pytest.raises(UsageError, match="XA branch limit"):
        AsyncInMemoryStorage("n" * 65)
