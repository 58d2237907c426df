"""Timeouts, retry bounds and optimisation switches of the protocol (plain values)."""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.errors import UsageError


@dataclass(frozen=True, slots=True)
class Policy:
    """How the coordinator and recovery behave. Every field has a safe default.

    :ivar prepare_timeout: seconds one participant may take to vote before the
        transaction aborts with ``PrepareTimeout``; the bound of every other call the
        coordinator makes to a participant too (phase 2, recovery's). The synchronous
        coordinator waits for a participant inside the process (``in_process``: SQLite,
        an embedded index) when it calls it alone: a timeout would leave its call working
        beside the next.
    :ivar in_doubt_timeout: age (seconds, from the txid's timestamp) after which recovery
        aborts a prepared branch that has no decision (G6). Safety never depends on it:
        the decision log arbitrates; it only says when recovery steps in.
    :ivar finish_attempts: how many times phase 2 is tried per branch before ``commit``
        returns with the branch listed as unfinished (recovery finishes it).
    :ivar finish_backoff: first pause between phase-2 attempts; doubles up to
        ``finish_backoff_max``.
    :ivar redrive_after: recovery re-drives COMMIT records without END older than this.
    :ivar one_phase: commit a single participant in one local step, with no log record.
    :ivar concurrent_prepare: prepare (and finish) participants concurrently.
    :ivar recovery_concurrency: branches recovery resolves at once.
    :ivar last_resource: the name of a participant whose database also holds the decision
        log (e.g. Postgres with :class:`PostgresDecisionLog` on the same database): it is
        committed last, in one local transaction that also records the COMMIT decision,
        so it needs no PREPARE and the commit needs no separate log write.
    :ivar stage_last_resource: let a last resource that can (Postgres) stage that
        transaction while the others prepare, so only its COMMIT waits for their votes
        (with ``concurrent_prepare``); off, it starts once they voted.
    :ivar deferred_finish: let the memory API queue its vector indexes' phase 2 (mark
        points committed, remove replaced versions) and finish it in batches, so a commit
        costs the index one write. ``MemoryStore.search`` stays exact (every hit is
        checked against the storage), but a program reading the vector collection
        directly sees replaced and deleted versions until the batch runs; so it is off
        unless asked for. Recovery, ``flush()`` and ``close()`` finish what is queued.
    :ivar deferred_batch: queued transactions that trigger a batch.
    :ivar deferred_max_age: seconds after which the next commit finishes the queue even
        when the batch is not full.
    """

    prepare_timeout: float = 10.0
    in_doubt_timeout: float = 30.0
    finish_attempts: int = 5
    finish_backoff: float = 0.02
    finish_backoff_max: float = 1.0
    redrive_after: float = 5.0
    one_phase: bool = True
    concurrent_prepare: bool = True
    recovery_concurrency: int = 16
    last_resource: str | None = None
    stage_last_resource: bool = True
    deferred_finish: bool = False
    deferred_batch: int = 64
    deferred_max_age: float = 1.0

    def __post_init__(self) -> None:
        for name in ("prepare_timeout", "in_doubt_timeout"):
            if not getattr(self, name) > 0:
                raise UsageError(f"Policy.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("finish_backoff", "finish_backoff_max", "redrive_after", "deferred_max_age"):
            if getattr(self, name) < 0:
                raise UsageError(f"Policy.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.finish_attempts < 1:
            raise UsageError(f"Policy.finish_attempts must be >= 1, got {self.finish_attempts}")
        if self.recovery_concurrency < 1:
            raise UsageError("Policy.recovery_concurrency must be >= 1")
        if self.deferred_batch < 1:
            raise UsageError(f"Policy.deferred_batch must be >= 1, got {self.deferred_batch}")

    def backoff(self, attempt: int) -> float:
        """Pause before phase-2 attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        return float(min(self.finish_backoff * 2 ** (attempt - 1), self.finish_backoff_max))
