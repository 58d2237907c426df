"""OpenTelemetry spans and metrics, in one place (API only; no-op until configured).

One span per transaction (``lockstep.transaction``) with a child span per phase
(``lockstep.prepare``, ``lockstep.decide``, ``lockstep.commit``, ``lockstep.abort``) and,
under it, one per participant call. Recovery passes get ``lockstep.recover``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from opentelemetry import metrics, trace

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


def _tracing() -> bool:
    """Whether a tracer provider is installed (asked at every span: one may be installed
    after this module is imported). Until then spans would record nothing, and each
    costs about 10 µs to open and close; a commit opens eight."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


@contextmanager
def transaction_span(txid: str, participants: Sequence[str]) -> Iterator[trace.Span]:
    """The span of one transaction; the caller sets ``ATTR_OUTCOME`` on it."""
    if not _tracing():
        yield trace.INVALID_SPAN
        return
    with _tracer.start_as_current_span(
        SPAN_TRANSACTION,
        attributes={ATTR_TXID: txid, ATTR_PARTICIPANTS: list(participants)},
    ) as span:
        yield span


@contextmanager
def recovery_span() -> Iterator[trace.Span]:
    if not _tracing():
        yield trace.INVALID_SPAN
        return
    with _tracer.start_as_current_span(SPAN_RECOVER) as span:
        yield span


@contextmanager
def phase_span(phase: str, txid: str | None = None) -> Iterator[trace.Span]:
    """A child span for one phase; its duration also goes to the phase histogram."""
    attributes: dict[str, str] = {ATTR_PHASE: phase}
    if txid is not None:
        attributes[ATTR_TXID] = txid
    started = time.perf_counter()
    try:
        if not _tracing():
            yield trace.INVALID_SPAN
        else:
            with _tracer.start_as_current_span(f"lockstep.{phase}", attributes=attributes) as span:
                yield span
    finally:
        _phase_duration.record(time.perf_counter() - started, {ATTR_PHASE: phase})


@contextmanager
def participant_span(phase: str, participant: str) -> Iterator[trace.Span]:
    if not _tracing():
        yield trace.INVALID_SPAN
        return
    with _tracer.start_as_current_span(
        f"lockstep.{phase}.participant",
        attributes={ATTR_PHASE: phase, ATTR_PARTICIPANT: participant},
    ) as span:
        yield span


def count_abort(reason: str) -> None:
    _aborts.add(1, {ATTR_REASON: reason})


def count_recovered(action: str, branches: int) -> None:
    if branches:
        _recovered.add(branches, {ATTR_ACTION: action})


def count_daemon_pass(result: str) -> None:
    _daemon_passes.add(1, {ATTR_RESULT: result})
