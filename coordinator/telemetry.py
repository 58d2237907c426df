"""OpenTelemetry spans and metrics, in one place (API only; no-op until configured).

One span per transaction (``lockstep.transaction``) with a child span per phase
(``lockstep.prepare``, ``lockstep.decide``, ``lockstep.commit``, ``lockstep.abort``) and,
under it, one per participant call. Recovery passes get ``lockstep.recover``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext

from opentelemetry import metrics, trace
from opentelemetry.util.types import Attributes

ATTR_TXID = "lockstep.txid"
ATTR_PARTICIPANT = "lockstep.participant"
ATTR_PARTICIPANTS = "lockstep.participants"
ATTR_PHASE = "lockstep.phase"
ATTR_OUTCOME = "lockstep.outcome"
ATTR_ACTION = "lockstep.action"
ATTR_REASON = "lockstep.reason"
ATTR_RESULT = "lockstep.result"

SPAN_TRANSACTION = "lockstep.transaction"
SPAN_RECOVER = "lockstep.recover"

_tracer = trace.get_tracer("lockstep")
_meter = metrics.get_meter("lockstep")
_phase_duration = _meter.create_histogram(
    "lockstep.phase.duration", unit="s", description="Duration of one protocol phase"
)
_aborts = _meter.create_counter(
    "lockstep.transactions.aborted", description="Transactions that aborted"
)
_recovered = _meter.create_counter(
    "lockstep.recovery.branches", description="Branches resolved by recovery"
)
_daemon_passes = _meter.create_counter(
    "lockstep.daemon.passes",
    description="Recovery daemon passes, by result (clean, unresolved, failed, standby)",
)


def _span(name: str, attributes: Attributes = None) -> AbstractContextManager[trace.Span]:
    """A span made current for the block, or a no-op while no tracer provider is installed
    (asked at every span: one may be installed after this module is imported). Without a
    provider a span records nothing, yet costs about 9 µs to open and close; a commit
    across two stores opens eight."""
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return nullcontext(trace.INVALID_SPAN)
    return _tracer.start_as_current_span(name, attributes=attributes)


def transaction_span(txid: str, participants: Sequence[str]) -> AbstractContextManager[trace.Span]:
    """The span of one transaction; the caller sets ``ATTR_OUTCOME`` on it."""
    return _span(SPAN_TRANSACTION, {ATTR_TXID: txid, ATTR_PARTICIPANTS: list(participants)})


def recovery_span() -> AbstractContextManager[trace.Span]:
    return _span(SPAN_RECOVER)


@contextmanager
def phase_span(phase: str, txid: str | None = None) -> Iterator[trace.Span]:
    """A child span for one phase; its duration also goes to the phase histogram."""
    attributes: dict[str, str] = {ATTR_PHASE: phase}
    if txid is not None:
        attributes[ATTR_TXID] = txid
    started = time.perf_counter()
    try:
        with _span(f"lockstep.{phase}", attributes) as span:
            yield span
    finally:
        _phase_duration.record(time.perf_counter() - started, {ATTR_PHASE: phase})


def participant_span(phase: str, participant: str) -> AbstractContextManager[trace.Span]:
    return _span(
        f"lockstep.{phase}.participant", {ATTR_PHASE: phase, ATTR_PARTICIPANT: participant}
    )


def count_abort(reason: str) -> None:
    _aborts.add(1, {ATTR_REASON: reason})


def count_recovered(action: str, branches: int) -> None:
    if branches:
        _recovered.add(branches, {ATTR_ACTION: action})


def count_daemon_pass(result: str) -> None:
    _daemon_passes.add(1, {ATTR_RESULT: result})
