"""What every decision log shares: the check of the decisions it is asked to record, and
``decide`` as ``decide_many`` of one."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from coordinator.abc import Decision
from coordinator.errors import UsageError


def check_decisions(decisions: Sequence[tuple[str, Decision, Sequence[str]]]) -> None:
    """:raises UsageError: a txid that is not a str, or a decision neither commit nor abort."""
    for txid, decision, _ in decisions:
        if not isinstance(txid, str) or decision not in ("commit", "abort"):
            raise UsageError(f"bad decision {decision!r} for txid {txid!r}")


class DecisionLogBase(ABC):
    """A synchronous decision log's ``decide``, made of its ``decide_many``."""

    def decide(self, txid: str, decision: Decision, participants: Sequence[str]) -> Decision:
        """Record ``decision`` unless one exists; return the one that holds (durable)."""
        return self.decide_many([(txid, decision, participants)])[txid]

    @abstractmethod
    def decide_many(
        self, decisions: Sequence[tuple[str, Decision, Sequence[str]]]
    ) -> dict[str, Decision]:
        """Insert-if-absent each decision (after :func:`check_decisions`); the winners."""
