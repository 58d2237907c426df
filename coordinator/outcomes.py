"""What a commit and a recovery pass return."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from coordinator.abc import Decision


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of a transaction that committed.

    ``commit`` returns an ``Outcome`` once the COMMIT decision is durable, even if some
    branches did not acknowledge phase 2 within the retry bound: those are listed in
    ``unfinished`` (with the last error in ``errors``) and recovery finishes them. Reads on
    the participants not listed already reflect the commit (G4).

    :ivar participants: the participants that took part (wrote something).
    :ivar one_phase: committed by the one-phase optimisation (no log record).
    :ivar read_only: participants that had nothing to commit.
    :ivar deferred: participants whose phase 2 was queued for a later batch
        (``Policy.deferred_finish``): derived indexes whose memory-API reads already
        reflect the commit, because every hit is checked against the storage.
    """

    txid: str
    decision: Decision
    participants: tuple[str, ...]
    unfinished: tuple[str, ...] = ()
    read_only: tuple[str, ...] = ()
    one_phase: bool = False
    errors: Mapping[str, BaseException] = field(default_factory=dict)
    deferred: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """True when every participant has applied the commit."""
        return not self.unfinished


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What one recovery pass did.

    :ivar committed: ``(participant, txid)`` branches committed.
    :ivar aborted: ``(participant, txid)`` branches aborted.
    :ivar fenced: txids recovery decided ABORT for (no decision, older than the timeout).
    :ivar waiting: txids in doubt but too young to abort; a later pass looks again.
    :ivar failed: branches or participants that could not be resolved, with the error; a
        later pass retries them.
    """

    committed: tuple[tuple[str, str], ...] = ()
    aborted: tuple[tuple[str, str], ...] = ()
    fenced: tuple[str, ...] = ()
    waiting: tuple[str, ...] = ()
    failed: Mapping[str, BaseException] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        """True when nothing is left in doubt or failed."""
        return not self.waiting and not self.failed
