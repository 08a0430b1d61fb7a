"""OpenTelemetry: one trace per saga, its context carried by the envelope's `traceparent` only.

Causality, as every process records it:
  - a message's CONSUMER span is a child of the span in its envelope's traceparent: the CONSUMER
    span that emitted it (the first message of a saga: the client's root PRODUCER span);
  - an event a handler emits carries, as its traceparent, the context of that CONSUMER span;
  - a PRODUCER span (one per publish) is a child of the CONSUMER span that staged the message;
    the outbox relay's is too, and it also links to it.
There is one propagation path: Celery's own headers carry no trace context (no Celery
instrumentation is installed), so no span gets two parents.

Export: OTLP over HTTP when the standard OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is
set; otherwise a JSON-lines span file per process under `settings.trace_dir`, which
`choreo trace` reads, so traces work on a machine with no collector. A provider is built on
first use in the process that uses it (after any fork) and flushed by `shutdown()` and at exit.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from opentelemetry import context as otel_context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
    Tracer,
    set_span_in_context,
)

from choreo.infra.hotspans import HotTracer

log = logging.getLogger("choreo.infra.tracing")
ROTATE_BYTES = 64 * 1024 * 1024  # a span file is rotated once (to .1) past this size
_EXPORT_DELAY_MS = 1000  # spans reach the file (or collector) within about a second
_MAX_QUEUE = 65536  # spans waiting for export, per process (about 100 MB at worst)
_EXPORT_BATCH = 2048  # spans per export call (one write to the span file)


class SpanFile(SpanExporter):
    """Spans as JSON lines, one file per process; `choreo trace` reads them
    (choreo.ops.traceview)."""

    def __init__(self, path: Path, service: str) -> None:
        self.path = Path(path)
        self.service = service
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        dumps, service = _DUMPS, self.service
        lines = "".join([dumps(span_record(s, service)) + "\n" for s in spans])
        try:
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                if self.path.exists() and self.path.stat().st_size > ROTATE_BYTES:
                    self.path.replace(self.path.with_name(self.path.name + ".1"))
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(lines)
        except OSError as exc:
            log.warning("could not write spans to %s: %r", self.path, exc)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def span_record(span: ReadableSpan, service: str) -> dict:
    """The span file's format (one JSON object per line; choreo.ops.traceview reads it).

    Built on the exporter's thread for every span, so kept lean (it was a quarter of tracing's
    cost): no comprehension where a span has no events or links, which is nearly always."""
    ctx, parent = span.context, span.parent
    events, links = span.events, span.links
    return {
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "parent_span_id": format(parent.span_id, "016x") if parent is not None else None,
        "name": span.name,
        "kind": _KIND_NAMES[span.kind],
        "service": service,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "events": [
            {"name": e.name, "time_ns": e.timestamp, "attributes": dict(e.attributes or {})}
            for e in events
        ]
        if events
        else [],
        "links": [
            {
                "trace_id": format(lk.context.trace_id, "032x"),
                "span_id": format(lk.context.span_id, "016x"),
                "attributes": dict(lk.attributes or {}),
            }
            for lk in links
        ]
        if links
        else [],
    }


_KIND_NAMES = {kind: kind.name for kind in SpanKind}
_DUMPS = json.JSONEncoder(separators=(",", ":"), default=str).encode


class _Ids(RandomIdGenerator):
    """Random ids, except that a root span started under `root_trace` takes that trace id: a
    client publishing a saga's first message keeps the trace id its envelope already has."""

    forced: contextvars.ContextVar[int | None] = contextvars.ContextVar(
        "choreo_forced_trace_id", default=None
    )

    def generate_trace_id(self) -> int:
        return self.forced.get() or super().generate_trace_id()


_providers: dict[tuple, TracerProvider] = {}
_tracers: dict[tuple, Tracer] = {}
_hot: dict[tuple, HotTracer] = {}
_lock = threading.Lock()


def tracer(settings, service: str) -> Tracer | None:
    """This process's tracer for `service`, or None when tracing is off (settings.tracing)."""
    if not settings.tracing:
        return None
    key = (os.getpid(), service, str(settings.trace_dir))
    found = _tracers.get(key)
    if found is not None:
        return found
    with _lock:
        if key not in _tracers:
            provider = TracerProvider(
                resource=Resource.create({"service.name": service}), id_generator=_Ids()
            )
            processor = BatchSpanProcessor(
                _exporter(settings, service),
                schedule_delay_millis=_EXPORT_DELAY_MS,
                **_queue_sizes(),
            )
            provider.add_span_processor(processor)
            _providers[key] = provider
            _tracers[key] = provider.get_tracer("choreo")
            _hot[key] = HotTracer(provider.resource, provider.sampler, processor)
        return _tracers[key]


def hot_tracer(settings, service: str) -> HotTracer | None:
    """The consumer hot path's tracer for `service` (choreo.infra.hotspans), on this process's
    provider and span processor; None when tracing is off."""
    if tracer(settings, service) is None:
        return None
    return _hot[(os.getpid(), service, str(settings.trace_dir))]


def _queue_sizes() -> dict:
    """The span processor's queue: the SDK's default (2048 spans) overflowed in a burst of a few
    hundred sagas ("Queue full, dropping span"): a worker emits two spans per message. The
    standard OTEL_BSP_* variables win when either is set (then both are theirs, so they agree)."""
    if os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE") or os.environ.get(
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"
    ):
        return {}
    return {"max_queue_size": _MAX_QUEUE, "max_export_batch_size": _EXPORT_BATCH}


def _exporter(settings, service: str) -> SpanExporter:
    if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    ):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()  # reads the standard OTEL_EXPORTER_OTLP_* variables
    return SpanFile(Path(settings.trace_dir) / f"{service}-{os.getpid()}.jsonl", service)


def shutdown() -> None:
    """Flush and close this process's providers (a worker's shutdown; atexit does it too)."""
    with _lock:
        mine = [k for k in _providers if k[0] == os.getpid()]
        for key in mine:
            provider = _providers.pop(key)
            _tracers.pop(key, None)
            _hot.pop(key, None)
            try:
                provider.shutdown()
            except Exception as exc:  # a collector away at exit: the spans are lost, nothing else
                log.warning("could not flush spans: %r", exc)


def force_flush() -> None:
    for key, provider in list(_providers.items()):
        if key[0] == os.getpid():
            provider.force_flush(5000)


# --- context <-> the envelope's traceparent ---------------------------------------------------


def parent_context(traceparent: str | None) -> otel_context.Context | None:
    """A context whose current span is the (remote) span a W3C traceparent names."""
    if traceparent is None:
        return None
    try:
        _v, trace_id, span_id, flags = traceparent.split("-")
        sc = SpanContext(
            trace_id=int(trace_id, 16),
            span_id=int(span_id, 16),
            is_remote=True,
            trace_flags=TraceFlags(int(flags, 16)),
        )
    except ValueError:
        return None
    return set_span_in_context(NonRecordingSpan(sc)) if sc.is_valid else None


def traceparent_of(span: Span | None) -> str | None:
    """The W3C traceparent of a recording span (what an envelope it causes carries)."""
    if span is None:
        return None
    sc = span.get_span_context()
    if not sc.is_valid:
        return None
    # Only the sampled bit: W3C level 2's "random" bit (0x02) is not part of choreo's wire contract.
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{'01' if sc.trace_flags.sampled else '00'}"


def span_id_of(span: Span | None) -> str | None:
    return f"{span.get_span_context().span_id:016x}" if span is not None else None


def start_root(t: Tracer, name: str, trace_id_hex: str, **kwargs) -> Span:
    """A root span that keeps `trace_id_hex` (the envelope's trace id)."""
    token = _Ids.forced.set(int(trace_id_hex, 16))
    try:
        return t.start_span(name, context=otel_context.Context(), **kwargs)
    finally:
        _Ids.forced.reset(token)
