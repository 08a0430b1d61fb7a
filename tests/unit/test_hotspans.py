"""The hot path's spans (choreo.infra.hotspans) reach the SDK's processor as the SDK's own spans
would: ids, parent, kind, attributes, events, status, sampling, and they end once."""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode

from choreo.infra import tracing
from choreo.infra.hotspans import HotTracer

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def _tracer(sampler=None):
    provider = TracerProvider(**({"sampler": sampler} if sampler is not None else {}))
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    return HotTracer(provider.resource, provider.sampler, processor), exporter, provider


def _ctx(flags="01"):
    return tracing.parent_context(f"00-{TRACE}-{PARENT}-{flags}")


def test_a_consumer_span_and_its_producer_child_are_exported_as_sdk_spans():
    hot, exporter, provider = _tracer()
    consumer = hot.start(
        "process order.placed",
        _ctx(),
        SpanKind.CONSUMER,
        {"choreo.order_id": "ord-1"},
        start_time=1_000,
    )
    producer = consumer.child(
        "send payment.completed", SpanKind.PRODUCER, {"messaging.message.id": "ev-2"}
    )
    producer.set_status(Status(StatusCode.ERROR, "not confirmed"))
    producer.end(end_time=5_000)
    consumer.set_attribute("choreo.outcome", "processed")
    consumer.add_event("retry", {"choreo.retry.rung": 1})
    consumer.end()
    done = {s.name: s for s in exporter.get_finished_spans()}
    c, p = done["process order.placed"], done["send payment.completed"]
    assert all(isinstance(s, ReadableSpan) for s in (c, p))
    assert (
        f"{c.context.trace_id:032x}" == TRACE
        and f"{c.parent.span_id:016x}" == PARENT
        and c.parent.is_remote
    )
    assert p.parent == c.context and p.context.trace_id == c.context.trace_id
    assert p.context.span_id not in (c.context.span_id, int(PARENT, 16))
    assert (c.kind, p.kind) == (SpanKind.CONSUMER, SpanKind.PRODUCER)
    assert dict(c.attributes) == {"choreo.order_id": "ord-1", "choreo.outcome": "processed"}
    assert [(e.name, dict(e.attributes)) for e in c.events] == [("retry", {"choreo.retry.rung": 1})]
    assert c.start_time == 1_000 and c.end_time >= c.start_time and p.end_time == 5_000
    assert p.status.status_code is StatusCode.ERROR and c.status.status_code is StatusCode.UNSET
    assert c.resource is provider.resource and c.instrumentation_scope.name == "choreo"
    assert c.context.trace_flags.sampled and tracing.traceparent_of(consumer).endswith("-01")


def test_a_span_ends_once_and_ignores_changes_after():
    hot, exporter, _ = _tracer()
    span = hot.start("process x", _ctx(), SpanKind.CONSUMER, {})
    span.end()
    span.set_attribute("late", True)
    span.add_event("late")
    span.end()
    (only,) = exporter.get_finished_spans()
    assert "late" not in only.attributes and not only.events and not span.is_recording()


def test_status_follows_the_sdk_rules():
    hot, exporter, _ = _tracer()
    span = hot.start("process x", _ctx(), SpanKind.CONSUMER, {})
    span.set_status(Status(StatusCode.ERROR, "boom"))
    span.set_status(StatusCode.UNSET)  # never clears a status already set
    span.end()
    assert exporter.get_finished_spans()[0].status.description == "boom"


def test_an_unsampled_parent_gives_a_non_recording_span_that_still_propagates():
    hot, exporter, _ = _tracer()
    span = hot.start("process x", _ctx("00"), SpanKind.CONSUMER, {"a": 1})
    assert not span.is_recording()
    assert tracing.traceparent_of(span) is not None and tracing.traceparent_of(span).endswith("-00")
    assert tracing.traceparent_of(span).split("-")[1] == TRACE
    span.end()
    assert exporter.get_finished_spans() == ()


def test_the_providers_sampler_decides():
    hot, exporter, _ = _tracer(ParentBased(ALWAYS_OFF))
    hot.start(
        "process root", None, SpanKind.CONSUMER, {}
    ).end()  # no parent: the root sampler says no
    hot.start("process child", _ctx(), SpanKind.CONSUMER, {}).end()  # sampled parent: followed
    assert [s.name for s in exporter.get_finished_spans()] == ["process child"]
    hot, exporter, _ = _tracer(TraceIdRatioBased(0.0))
    hot.start("process x", _ctx(), SpanKind.CONSUMER, {}).end()
    assert exporter.get_finished_spans() == ()


def test_the_runtime_tracer_shares_the_providers_span_file(tmp_path):
    import json

    from config.settings import Settings

    settings = Settings(run_dir=tmp_path / "run", data_dir=tmp_path / "data")
    hot = tracing.hot_tracer(settings, "payment")
    span = hot.start(
        "process order.placed", _ctx(), SpanKind.CONSUMER, {"choreo.order_id": "ord-1"}
    )
    span.add_event("dead_letter", {"choreo.reason": "poison"})
    span.end()
    tracing.force_flush()
    (line,) = [
        ln for f in settings.trace_dir.glob("payment-*.jsonl") for ln in f.read_text().splitlines()
    ]
    record = json.loads(line)
    assert (
        record["service"] == "payment"
        and record["kind"] == "CONSUMER"
        and record["parent_span_id"] == PARENT
    )
    assert record["attributes"] == {"choreo.order_id": "ord-1"}
    assert record["events"][0]["name"] == "dead_letter" and record["events"][0]["attributes"] == {
        "choreo.reason": "poison"
    }
    assert (
        tracing.hot_tracer(
            Settings(run_dir=tmp_path / "r2", data_dir=tmp_path / "d2", tracing=False), "payment"
        )
        is None
    )
    tracing.shutdown()


def test_a_burst_of_spans_is_not_dropped(tmp_path, monkeypatch):
    """The SDK's default queue (2048 spans) dropped spans in a burst of a few hundred sagas."""
    from config.settings import Settings

    for var in ("OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"):
        monkeypatch.delenv(var, raising=False)
    settings = Settings(run_dir=tmp_path / "run", data_dir=tmp_path / "data")
    hot = tracing.hot_tracer(settings, "inventory")
    for _ in range(6000):  # two spans per message, 3000 messages: faster than any export
        span = hot.start(
            "process payment.completed", _ctx(), SpanKind.CONSUMER, {"choreo.order_id": "ord-1"}
        )
        span.child("send inventory.reserved", SpanKind.PRODUCER, {}).end()
        span.end()
    tracing.force_flush()
    lines = sum(
        len(f.read_text().splitlines()) for f in settings.trace_dir.glob("inventory-*.jsonl")
    )
    tracing.shutdown()
    assert lines == 12000
