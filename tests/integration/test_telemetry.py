"""Spans and metrics of a transaction and of recovery (OpenTelemetry SDK, in memory)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from coordinator import Coordinator, Policy, VoteRejected
from coordinator import telemetry as t
from coordinator.log import SQLiteDecisionLog
from participants.memory import InMemoryStorage
from participants.sqlite import SQLiteStorage
from tests.support._sync.flaky import Flaky, Script
from tests.support.crash import upsert

EXPORTER = InMemorySpanExporter()
READER = InMemoryMetricReader()


@pytest.fixture(scope="module", autouse=True)
def sdk() -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        pytest.skip("another tracer provider was installed first")


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    EXPORTER.clear()
    yield EXPORTER


def attr(span: ReadableSpan, key: str) -> object:
    assert span.attributes is not None
    return span.attributes[key]


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def metric_points(name: str) -> list[object]:
    data = READER.get_metrics_data()
    points: list[object] = []
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    points.extend(metric.data.data_points)
    return points


def test_a_transaction_has_one_span_with_children_per_phase_and_participant(
    tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    coord = Coordinator(
        [SQLiteStorage(tmp_path / "f.db", name="facts"), InMemoryStorage("mirror")],
        SQLiteDecisionLog(tmp_path / "log.db"),
    )
    outcome = coord.commit({"facts": [upsert("a", 1)], "mirror": [upsert("a", 1)]})
    finished = {s.name: s for s in spans.get_finished_spans()}
    root = finished[t.SPAN_TRANSACTION]
    assert attr(root, t.ATTR_TXID) == outcome.txid
    assert attr(root, t.ATTR_PARTICIPANTS) == ("facts", "mirror")
    assert attr(root, t.ATTR_OUTCOME) == "committed"
    for phase in ("lockstep.prepare", "lockstep.decide", "lockstep.commit"):
        assert parent_of(finished[phase]) == root.context.span_id
    per_participant = [
        s for s in spans.get_finished_spans() if s.name == "lockstep.prepare.participant"
    ]
    assert sorted(str(attr(s, t.ATTR_PARTICIPANT)) for s in per_participant) == ["facts", "mirror"]
    prepare_id = finished["lockstep.prepare"].context.span_id
    assert all(parent_of(s) == prepare_id for s in per_participant)
    phases = {p.attributes[t.ATTR_PHASE] for p in metric_points("lockstep.phase.duration")}  # type: ignore[attr-defined]
    assert {"prepare", "decide", "commit"} <= phases
    coord.close()


def test_an_abort_is_counted_and_marked_on_the_span(
    tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    flaky = Flaky(InMemoryStorage("mirror"), Script(vote_no=True))
    coord = Coordinator(
        [SQLiteStorage(tmp_path / "f.db", name="facts"), flaky],
        SQLiteDecisionLog(tmp_path / "log.db"),
    )
    with pytest.raises(VoteRejected):
        coord.commit({"facts": [upsert("a", 1)], "mirror": [upsert("a", 1)]})
    root = next(s for s in spans.get_finished_spans() if s.name == t.SPAN_TRANSACTION)
    assert root.attributes is not None and root.attributes[t.ATTR_OUTCOME] == "VoteRejected"
    reasons = [p.attributes[t.ATTR_REASON] for p in metric_points("lockstep.transactions.aborted")]  # type: ignore[attr-defined]
    assert "VoteRejected" in reasons
    coord.close()


def test_recovery_has_its_span_and_counts_what_it_resolved(
    tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    flaky = Flaky(InMemoryStorage("mirror"), Script(commit_always_fails=True))
    log = SQLiteDecisionLog(tmp_path / "log.db")
    facts = SQLiteStorage(tmp_path / "f.db", name="facts")
    Coordinator([facts, flaky], log).commit({"facts": [upsert("a", 1)], "mirror": [upsert("a", 1)]})
    flaky.script.commit_always_fails = False
    Coordinator([facts, flaky], log, policy=Policy(redrive_after=0)).recover()
    span = next(s for s in spans.get_finished_spans() if s.name == t.SPAN_RECOVER)
    assert span.attributes is not None and span.attributes["lockstep.recovery.committed"] == 2
    actions = [p.attributes[t.ATTR_ACTION] for p in metric_points("lockstep.recovery.branches")]  # type: ignore[attr-defined]
    assert "commit" in actions
    facts.close()
    log.close()
