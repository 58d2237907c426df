"""The check every decision log makes of the decisions it is asked to record."""

from __future__ import annotations

from collections.abc import Sequence

from coordinator.abc import Decision
from coordinator.errors import UsageError


def check_decisions(decisions: Sequence[tuple[str, Decision, Sequence[str]]]) -> None:
    """:raises UsageError: a txid that is not a str, or a decision neither commit nor abort."""
    for txid, decision, _ in decisions:
        if not isinstance(txid, str) or decision not in ("commit", "abort"):
            raise UsageError(f"bad decision {decision!r} for txid {txid!r}")
