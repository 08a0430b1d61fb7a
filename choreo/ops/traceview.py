"""One saga's spans across every service, as a tree in causal order (`choreo trace`).

Reads the span files the workers write under `settings.trace_dir` (one JSON object per line,
`*.jsonl` and rotated `*.jsonl.N`), or a Jaeger query service, and builds the view that
`choreo trace ORDER_ID --json` prints. Pure functions, no click: the command is in
choreo.cli.trace.

The JSON view is a stable contract:
    {order_id, trace_ids, services, span_count, started_at, duration_ms, spans: [...]}
each span: span_id, parent_span_id, depth, service, kind, name, message_type, message_id,
destination, start_offset_ms, duration_ms, queue_wait_ms, attempt, outcome, retries, relay,
events, status.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from config.settings import DOMAINS

ORDER_ID = "choreo.order_id"
EVENT_TYPE = "choreo.event_type"
MESSAGE_ID = "messaging.message.id"
DESTINATION = "messaging.destination.name"
OUTCOME = "choreo.outcome"
ATTEMPT = "choreo.attempt"
RELAY = "choreo.relay"

SPAN_FILE = re.compile(r".+\.jsonl(\.\d+)?$")  # payment-1234.jsonl, payment-1234.jsonl.1
SPAN_KEYS = (
    "span_id",
    "parent_span_id",
    "depth",
    "service",
    "kind",
    "name",
    "message_type",
    "message_id",
    "destination",
    "start_offset_ms",
    "duration_ms",
    "queue_wait_ms",
    "attempt",
    "outcome",
    "retries",
    "relay",
    "events",
    "status",
)
VIEW_KEYS = (
    "order_id",
    "trace_ids",
    "services",
    "span_count",
    "started_at",
    "duration_ms",
    "spans",
)


# --- reading span files -----------------------------------------------------------------------


def span_files(trace_dir: Path) -> list[Path]:
    """Every span file in the folder, current and rotated, in name order."""
    return sorted(p for p in trace_dir.iterdir() if p.is_file() and SPAN_FILE.fullmatch(p.name))


def _valid(record: Any) -> bool:
    return (
        isinstance(record, dict)
        and isinstance(record.get("trace_id"), str)
        and isinstance(record.get("span_id"), str)
        and isinstance(record.get("start_ns"), int)
        and isinstance(record.get("end_ns"), int)
    )


def read_spans(paths: Iterable[Path], needles: Iterable[str] = ()) -> Iterator[dict]:
    """The spans in these files; blank, torn or unparseable lines are skipped silently.
    `needles`: if any, only lines that contain one of them are parsed (a cheap prefilter)."""
    needles = tuple(needles)
    for path in paths:
        try:
            handle = path.open(encoding="utf-8", errors="replace")
        except OSError:
            continue  # rotated away between listing and opening
        with handle:
            for line in handle:
                if not line.strip() or (needles and not any(n in line for n in needles)):
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if _valid(record):
                    if not isinstance(record.get("attributes"), dict):
                        record["attributes"] = {}
                    yield record


def trace_ids_of(spans: Iterable[dict], order_id: str) -> set[str]:
    return {s["trace_id"] for s in spans if s["attributes"].get(ORDER_ID) == order_id}


def load_saga(trace_dir: Path, order_id: str) -> list[dict]:
    """Every span of the trace(s) that carry this order id, from all span files (two passes:
    find the trace ids, then take their spans, so a big folder is never held in memory)."""
    paths = span_files(trace_dir)
    plain = order_id.isascii() and not any(c in order_id for c in '"\\') and order_id.isprintable()
    ids = trace_ids_of(read_spans(paths, (order_id,) if plain else ()), order_id)
    if not ids:
        return []
    return dedupe(s for s in read_spans(paths, ids) if s["trace_id"] in ids)


def dedupe(spans: Iterable[dict]) -> list[dict]:
    """One record per (trace id, span id): the first one read wins."""
    seen: dict[tuple[str, str], dict] = {}
    for s in spans:
        seen.setdefault((s["trace_id"], s["span_id"]), s)
    return list(seen.values())


# --- Jaeger -----------------------------------------------------------------------------------

JAEGER_SERVICES = DOMAINS


def _tag_value(tag: dict) -> Any:
    value: Any = tag.get("value")  # JSON: anything, or absent
    kind = str(tag.get("type", "")).lower()
    try:
        if kind == "int64":
            return int(value)
        if kind == "float64":
            return float(value)
        if kind == "bool":
            return value if isinstance(value, bool) else str(value).lower() == "true"
    except (TypeError, ValueError):
        pass
    return value


def _tags(items: Iterable[dict] | None) -> dict[str, Any]:
    return {t["key"]: _tag_value(t) for t in items or () if isinstance(t, dict) and "key" in t}


def from_jaeger(payload: dict) -> list[dict]:
    """Jaeger query JSON (`GET /api/traces`: {"data": [trace, ...]}) as span dicts of the span-file
    format."""
    out: list[dict] = []
    for trace in payload.get("data") or ():
        processes = trace.get("processes") or {}
        for js in trace.get("spans") or ():
            tags = _tags(js.get("tags"))
            process = js.get("process") or processes.get(js.get("processID"), {})
            refs = js.get("references") or ()
            parent = next((r.get("spanID") for r in refs if r.get("refType") == "CHILD_OF"), None)
            start_us, duration_us = int(js.get("startTime", 0)), int(js.get("duration", 0))
            status = str(tags.pop("otel.status_code", "UNSET")).upper()
            if tags.pop("error", False) is True and status == "UNSET":
                status = "ERROR"
            events = []
            for log in js.get("logs") or ():
                fields = _tags(log.get("fields"))
                events.append(
                    {
                        "name": str(fields.pop("event", "log")),
                        "time_ns": int(log.get("timestamp", 0)) * 1000,
                        "attributes": fields,
                    }
                )
            out.append(
                {
                    "trace_id": js.get("traceID") or trace.get("traceID"),
                    "span_id": js.get("spanID"),
                    "parent_span_id": parent,
                    "name": js.get("operationName", ""),
                    "kind": str(tags.pop("span.kind", "internal")).upper(),
                    "service": process.get("serviceName", "unknown"),
                    "start_ns": start_us * 1000,
                    "end_ns": (start_us + duration_us) * 1000,
                    "status": status,
                    "attributes": tags,
                    "events": events,
                    "links": [
                        {"trace_id": r.get("traceID"), "span_id": r.get("spanID"), "attributes": {}}
                        for r in refs
                        if r.get("refType") == "FOLLOWS_FROM"
                    ],
                }
            )
    return [s for s in out if _valid(s)]


def load_saga_jaeger(
    url: str,
    order_id: str,
    services: Iterable[str] = JAEGER_SERVICES,
    timeout: float = 10.0,
    transport: Any = None,
) -> list[dict]:
    """Every span of the saga's trace(s) from a Jaeger query service (one search per service:
    a trace is returned whole, so any service that saw the order finds it). `transport`: an
    httpx transport (tests)."""
    import httpx

    spans: list[dict] = []
    tags = json.dumps({ORDER_ID: order_id})
    with httpx.Client(base_url=url.rstrip("/"), timeout=timeout, transport=transport) as client:
        for service in services:
            response = client.get(
                "/api/traces", params={"service": service, "tags": tags, "limit": 20}
            )
            if response.status_code == 404:
                continue  # Jaeger has never seen this service
            response.raise_for_status()
            spans.extend(from_jaeger(response.json()))
    ids = trace_ids_of(spans, order_id)
    return dedupe(s for s in spans if s["trace_id"] in ids)


# --- the view ---------------------------------------------------------------------------------


def _ms(ns: int | float) -> float:
    return round(ns / 1_000_000, 3)


def _order_key(span: dict) -> tuple:
    return span["start_ns"], span["end_ns"], span["span_id"]


def tree_order(spans: list[dict]) -> list[tuple[dict, int]]:
    """(span, depth) depth-first from the roots, children and roots by start time; a span whose
    parent is not among `spans` is a root. A parent always comes before its children."""
    by_id = {s["span_id"]: s for s in spans}
    children: dict[str, list[dict]] = {}
    roots = []
    for s in spans:
        parent = s.get("parent_span_id")
        if parent and parent in by_id and parent != s["span_id"]:
            children.setdefault(parent, []).append(s)
        else:
            roots.append(s)
    for kids in children.values():
        kids.sort(key=_order_key)
    ordered: list[tuple[dict, int]] = []
    visited: set[str] = set()
    pending = sorted(roots, key=_order_key)
    # For parent cycles, which have no root: break them at the earliest.
    remaining = sorted(spans, key=_order_key)
    while True:
        stack = [(s, 0) for s in reversed(pending)]
        while stack:
            span, depth = stack.pop()
            if span["span_id"] in visited:
                continue
            visited.add(span["span_id"])
            ordered.append((span, depth))
            stack.extend((c, depth + 1) for c in reversed(children.get(span["span_id"], ())))
        unvisited = next((s for s in remaining if s["span_id"] not in visited), None)
        if unvisited is None:
            return ordered
        pending = [unvisited]


def queue_waits(spans: list[dict]) -> dict[str, int]:
    """Consumer span id -> ns from the start of the latest publish (PRODUCER span) of the same
    message that began at or before the consumer's start (retry copies and relay republishes
    included). From the start, not the end: a PRODUCER span lasts until the broker's confirm,
    which often comes back after the consumer already has the message."""
    producer_starts: dict[str, list[int]] = {}
    for s in spans:
        message_id = s["attributes"].get(MESSAGE_ID)
        if s.get("kind") == "PRODUCER" and message_id is not None:
            producer_starts.setdefault(str(message_id), []).append(s["start_ns"])
    waits: dict[str, int] = {}
    for s in spans:
        message_id = s["attributes"].get(MESSAGE_ID)
        if s.get("kind") != "CONSUMER" or message_id is None:
            continue
        earlier = [
            start for start in producer_starts.get(str(message_id), ()) if start <= s["start_ns"]
        ]
        if earlier:
            waits[s["span_id"]] = s["start_ns"] - max(earlier)
    return waits


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _span_row(span: dict, depth: int, origin: int, wait_ns: int | None) -> dict:
    attrs = span["attributes"]
    attempt = attrs.get(ATTEMPT)
    events = [e for e in span.get("events") or () if isinstance(e, dict)]
    return {
        "span_id": span["span_id"],
        "parent_span_id": span.get("parent_span_id"),
        "depth": depth,
        "service": str(span.get("service") or "unknown"),
        "kind": str(span.get("kind") or "INTERNAL"),
        "name": str(span.get("name") or ""),
        "message_type": _str_or_none(attrs.get(EVENT_TYPE)),
        "message_id": _str_or_none(attrs.get(MESSAGE_ID)),
        "destination": _str_or_none(attrs.get(DESTINATION)),
        "start_offset_ms": _ms(span["start_ns"] - origin),
        "duration_ms": _ms(span["end_ns"] - span["start_ns"]),
        "queue_wait_ms": None if wait_ns is None else _ms(wait_ns),
        "attempt": attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else None,
        "outcome": _str_or_none(attrs.get(OUTCOME)),
        "retries": sum(1 for e in events if e.get("name") == "retry"),
        "relay": attrs.get(RELAY) is True,
        "events": [str(e.get("name", "")) for e in events],
        "status": str(span.get("status") or "UNSET"),
    }


def iso_utc(ns: int) -> str:
    """Epoch nanoseconds as ISO-8601 UTC to the microsecond (integer arithmetic: no float
    rounding)."""
    seconds, rest = divmod(ns, 1_000_000_000)
    return (
        datetime.fromtimestamp(seconds, tz=UTC) + timedelta(microseconds=rest // 1000)
    ).isoformat(timespec="microseconds")


def build_view(order_id: str, spans: list[dict]) -> dict:
    """The saga as `choreo trace --json` prints it (spans in tree order). `spans` must not be
    empty."""
    if not spans:
        raise ValueError("no spans")
    origin = min(s["start_ns"] for s in spans)
    end = max(s["end_ns"] for s in spans)
    first_start: dict[str, int] = {}
    for s in spans:
        first_start[s["trace_id"]] = min(
            first_start.get(s["trace_id"], s["start_ns"]), s["start_ns"]
        )
    waits = queue_waits(spans)
    return {
        "order_id": order_id,
        "trace_ids": sorted(first_start, key=lambda t: (first_start[t], t)),
        "services": sorted({str(s.get("service") or "unknown") for s in spans}),
        "span_count": len(spans),
        "started_at": iso_utc(origin),
        "duration_ms": _ms(end - origin),
        "spans": [
            _span_row(s, depth, origin, waits.get(s["span_id"])) for s, depth in tree_order(spans)
        ],
    }


# --- the waterfall ----------------------------------------------------------------------------


def waterfall_bar(offset_ms: float, duration_ms: float, total_ms: float, width: int = 40) -> str:
    """A text bar of `width` characters: `─` before and after, `█` over the span's time
    (at least one block, so an instant span still shows where it happened)."""
    if total_ms <= 0:
        return "█" + "─" * (width - 1)
    start = min(width - 1, int(offset_ms / total_ms * width))
    stop = max(start + 1, min(width, round((offset_ms + duration_ms) / total_ms * width)))
    return "─" * start + "█" * (stop - start) + "─" * (width - stop)
