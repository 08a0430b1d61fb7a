"""Spans for the consumer's hot path at a fraction of the SDK's per-span cost.

A worker records two spans per message (its delivery's CONSUMER span and a PRODUCER span per
publish). Through the SDK's `Tracer.start_span` each cost about 35 µs of CPU here (sampler call,
`BoundedAttributes` cleaning every value recursively under a lock, context objects), which with
the export alone put tracing at +11..16 % of a worker's CPU per message, over the 10 % budget
(`bench.handler_profile --ab base,dark`). These spans implement the OpenTelemetry API's `Span`
and, when they end, hand an SDK `ReadableSpan` to the provider's own span processor, so they
reach the same exporters (OTLP or the span file) in the same batches and look exactly like SDK
spans to every consumer of them. What they leave out: attribute cleaning (choreo builds every
attribute itself, as str, int, float or bool, truncated where it comes from a message), span
limits, and the processor's `on_start` (a BatchSpanProcessor does nothing there).

Sampling is the SDK's: a CONSUMER span asks the provider's sampler (so OTEL_TRACES_SAMPLER and
its argument apply as they would), and a child span (a PRODUCER span the delivery caused) takes
its parent's decision, as the default parent-based sampler would.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)
_SCOPE = InstrumentationScope("choreo")


def _span_id() -> int:
    # As the SDK's RandomIdGenerator: `random`'s shared generator, which Python reseeds in a
    # forked child (a pool child never repeats its parent's ids).
    while True:
        n = random.getrandbits(64)
        if n:
            return n


class HotTracer:
    """Starts hot-path spans for one service; ended spans go to `processor` (the provider's)."""

    def __init__(self, resource: Resource, sampler: Sampler, processor: SpanProcessor) -> None:
        self.resource = resource
        self.sampler = sampler
        self.processor = processor

    def start(
        self,
        name: str,
        context: Context | None,
        kind: SpanKind,
        attributes: dict[str, Any],
        start_time: int | None = None,
    ) -> trace_api.Span:
        """A span under the span current in `context` (a remote parent; None: a new trace)."""
        parent = (
            trace_api.get_current_span(context).get_span_context() if context is not None else None
        )
        if parent is not None and not parent.is_valid:
            parent = None
        trace_id = parent.trace_id if parent is not None else random.getrandbits(128) or 1
        decision = self.sampler.should_sample(context, trace_id, name, kind, attributes)
        flags = _SAMPLED if decision.decision.is_sampled() else TraceFlags(TraceFlags.DEFAULT)
        ctx = SpanContext(
            trace_id,
            _span_id(),
            is_remote=False,
            trace_flags=flags,
            trace_state=decision.trace_state,
        )
        if not decision.decision.is_recording():
            return trace_api.NonRecordingSpan(ctx)
        if decision.attributes:
            attributes = {**attributes, **decision.attributes}
        return HotSpan(self, name, ctx, parent, kind, attributes, start_time or time.time_ns())


class HotSpan(trace_api.Span):
    """A recording span of the hot path (see the module's docstring). Not thread-safe: a span is
    used by the one thread handling its delivery."""

    __slots__ = (
        "_tracer",
        "_name",
        "_context",
        "_parent",
        "_kind",
        "attributes",
        "_events",
        "_links",
        "_status",
        "_start",
        "_ended",
    )

    def __init__(
        self,
        tracer: HotTracer,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, Any],
        start_time: int,
        links: Sequence[Link] = (),
    ) -> None:
        self._tracer, self._name, self._context, self._parent, self._kind = (
            tracer,
            name,
            context,
            parent,
            kind,
        )
        self.attributes = attributes  # read by the spans it causes (the order id)
        self._events: list[Event] = []
        self._links = tuple(links)
        self._status = _UNSET
        self._start = start_time
        self._ended = False

    def child(
        self, name: str, kind: SpanKind, attributes: dict[str, Any], start_time: int | None = None
    ) -> HotSpan:
        """A span caused by this one, with its sampling decision (this span records: so does it)."""
        ctx = SpanContext(
            self._context.trace_id,
            _span_id(),
            is_remote=False,
            trace_flags=self._context.trace_flags,
            trace_state=self._context.trace_state,
        )
        return HotSpan(
            self._tracer, name, ctx, self._context, kind, attributes, start_time or time.time_ns()
        )

    # --- the API ---------------------------------------------------------------------------------

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return not self._ended

    def set_attribute(self, key: str, value: Any) -> None:
        if not self._ended:
            self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        if not self._ended:
            self.attributes.update(attributes)

    def add_event(
        self, name: str, attributes: Mapping[str, Any] | None = None, timestamp: int | None = None
    ) -> None:
        if not self._ended:
            self._events.append(
                Event(name, MappingProxyType(dict(attributes or {})), timestamp or time.time_ns())
            )

    def add_link(self, context: SpanContext, attributes: Mapping[str, Any] | None = None) -> None:
        if not self._ended and context.is_valid:
            self._links += (Link(context, attributes),)

    def update_name(self, name: str) -> None:
        if not self._ended:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._ended:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        # as the SDK: OK is final, and UNSET never overrides a status already set
        if self._status.status_code is StatusCode.OK or status.status_code is StatusCode.UNSET:
            return
        self._status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: Mapping[str, Any] | None = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        self.add_event(
            "exception",
            {
                "exception.type": type(exception).__name__,
                "exception.message": str(exception)[:500],
                **(attributes or {}),
            },
            timestamp,
        )

    def end(self, end_time: int | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        t = self._tracer
        t.processor.on_end(
            ReadableSpan(
                name=self._name,
                context=self._context,
                parent=self._parent,
                resource=t.resource,
                attributes=MappingProxyType(self.attributes),
                events=tuple(self._events),
                links=self._links,
                kind=self._kind,
                status=self._status,
                start_time=self._start,
                end_time=end_time or time.time_ns(),
                instrumentation_scope=_SCOPE,
            )
        )
