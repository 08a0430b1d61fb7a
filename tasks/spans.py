"""The adapter's spans: a CONSUMER span per delivery, a PRODUCER span per publish of its batch.

Attributes follow OpenTelemetry's messaging conventions (messaging.system=rabbitmq, the
destination, the routing key, the message id), plus the saga's: order id, domain, outcome.
Retries, dead letters, duplicates and compensations are events on the CONSUMER span. The
causal links are described in choreo.infra.tracing. All of it is skipped when tracing is off.
"""

from __future__ import annotations

import re
import time
from typing import Any

from opentelemetry.trace import SpanKind, Status, StatusCode

from choreo.infra import tracing
from models.envelope import TRACEPARENT_RE
from tasks.outcome import Kind

_TRACEPARENT = re.compile(TRACEPARENT_RE)


def consumer_span(rt, delivery, envelope, queue: str):
    """Start the CONSUMER span of a delivery (when it was received), or None (tracing off, or
    poison without a readable traceparent: it still gets its metrics and its log line)."""
    if rt.tracer is None:
        return None
    traceparent = envelope.traceparent if envelope is not None else _raw_traceparent(delivery.args)
    if traceparent is None:
        return None
    attributes: dict[str, Any] = {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": queue,
        "messaging.message.id": envelope.event_id if envelope else delivery.task_id,
        "messaging.rabbitmq.destination.routing_key": delivery.name[:64],
        "choreo.domain": rt.domain,
        "choreo.event_type": delivery.name[:64],
        "choreo.attempt": delivery.attempt,
    }
    if envelope is not None:
        attributes.update(
            {"choreo.order_id": envelope.order_id, "choreo.correlation_id": envelope.correlation_id}
        )
    elif (
        isinstance(delivery.args, (list, tuple))
        and delivery.args
        and isinstance(delivery.args[0], dict)
    ):
        order_id = delivery.args[0].get("order_id")
        if isinstance(order_id, str) and len(order_id) <= 64:
            attributes["choreo.order_id"] = order_id
    return rt.tracer.start(
        f"process {delivery.name[:64]}",
        tracing.parent_context(traceparent),
        SpanKind.CONSUMER,
        attributes,
        start_time=delivery.received_ns or None,
    )


def _raw_traceparent(args) -> str | None:
    """A poison message's traceparent, if it carried a valid one (so it shows in its saga)."""
    if isinstance(args, (list, tuple)) and args and isinstance(args[0], dict):
        tp = args[0].get("traceparent")
        if isinstance(tp, str) and _TRACEPARENT.fullmatch(tp):
            return tp
    return None


def producer_spans(rt, sends: list[tuple[Any, dict]]) -> list:
    """A PRODUCER span per send-kwargs dict, each a child of the CONSUMER span that staged it."""
    if rt.tracer is None:
        return []
    out: list = []
    start = time.time_ns()
    for span, kw in sends:
        if span is None or not span.is_recording():  # no span, or not sampled
            out.append(None)
            continue
        destination = kw.get("exchange") or kw.get("queue") or ""
        attributes = {
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "send",
            "messaging.operation.name": "publish",
            "messaging.destination.name": destination,
            "messaging.rabbitmq.destination.routing_key": kw.get("routing_key")
            or kw.get("queue")
            or "",
            "messaging.message.id": kw["task_id"],
            "choreo.domain": rt.domain,
            "choreo.event_type": kw["name"][:64],
        }
        order_id = (kw.get("headers") or {}).get("choreo_order_id") or span.attributes.get(
            "choreo.order_id"
        )
        if order_id:
            attributes["choreo.order_id"] = order_id
        if kw.get("queue"):
            attributes["choreo.retry"] = True
        if kw.get("exchange") == rt.names.dlx:
            attributes["choreo.dead_letter"] = True
        out.append(
            span.child(f"send {kw['name'][:64]}", SpanKind.PRODUCER, attributes, start_time=start)
        )
    return out


def end_producers(spans: list, failed_flags: list[bool]) -> None:
    end = time.time_ns()
    # No tracer: no spans, while every send still has its flag.
    for span, failed in zip(spans, failed_flags, strict=False):
        if span is not None:
            if failed:
                span.set_status(Status(StatusCode.ERROR, "not confirmed by the broker"))
            span.end(end_time=end)


def finish(
    span,
    outcome: str,
    *,
    retry: tuple | None = None,
    error: Exception | None = None,
    reason: str | None = None,
    compensation: bool = False,
    duplicate_of: str | None = None,
) -> None:
    """Close a CONSUMER span with its outcome, and the events that say what happened."""
    if span is None:
        return
    span.set_attribute("choreo.outcome", outcome)
    if compensation:
        span.add_event("compensation")
    if retry is not None:
        rung, delay, queue = retry
        span.add_event(
            "retry",
            {
                "choreo.retry.rung": rung,
                "choreo.retry.delay_s": round(delay, 3),
                "choreo.retry.queue": queue,
                "exception.message": repr(error)[:300],
            },
        )
    if reason is not None:
        span.add_event("dead_letter", {"choreo.reason": reason[:500]})
        span.set_status(Status(StatusCode.ERROR, reason[:200]))
    if duplicate_of is not None:
        span.add_event("duplicate", {"choreo.absorbed_by": duplicate_of})
    if outcome == Kind.REQUEUE:
        span.set_status(Status(StatusCode.ERROR, "publish not confirmed; requeued"))
    span.end()
