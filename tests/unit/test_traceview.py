"""`choreo trace`: a synthetic saga written as span files (several processes, a rotated file, a torn
last line, another order's trace in the same files), read back as the waterfall view."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from choreo.cli.base import cli
from choreo.ops import traceview
from config.settings import DOMAINS, get_settings

T0 = 1_700_000_000_123_456_789  # 2023-11-14T22:13:20.123456789Z
ORDER = "ord-42"
OTHER = "ord-99"
TRACE = "0af7651916cd43dd8448eb211c80319c"
OTHER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
MISSING_PARENT = "ffffffffffffffff"


def ns(ms: float) -> int:
    return T0 + int(round(ms * 1_000_000))


def span(
    span_id,
    parent,
    service,
    kind,
    name,
    start_ms,
    end_ms,
    *,
    trace=TRACE,
    order=ORDER,
    message=None,
    event_type=None,
    dest=None,
    outcome=None,
    attempt=None,
    events=(),
    relay=False,
    retry=False,
    status="UNSET",
):
    attrs = {}
    if order is not None:
        attrs["choreo.order_id"] = order
    if message is not None:
        attrs.update(
            {
                "messaging.system": "rabbitmq",
                "messaging.message.id": message,
                "messaging.operation.type": "process" if kind == "CONSUMER" else "send",
            }
        )
    if event_type:
        attrs["choreo.event_type"] = event_type
    if dest:
        attrs["messaging.destination.name"] = dest
    if outcome:
        attrs["choreo.outcome"] = outcome
    if attempt is not None:
        attrs["choreo.attempt"] = attempt
    if relay:
        attrs["choreo.relay"] = True
    if retry:
        attrs["choreo.retry"] = True
    return {
        "trace_id": trace,
        "span_id": span_id,
        "parent_span_id": parent,
        "name": name,
        "kind": kind,
        "service": service,
        "start_ns": ns(start_ms),
        "end_ns": ns(end_ms),
        "status": status,
        "attributes": attrs,
        "events": [{"name": e, "time_ns": ns(start_ms), "attributes": {}} for e in events],
        "links": [],
    }


def sid(n: int) -> str:
    return f"{n:016x}"


C1, O1, OP1, P1, PR1, P2, PP1, O2, I1, OP1B, P3, X1 = (sid(n) for n in range(1, 13))

SAGA = {
    # read last (files in name order): the root order must come from start times
    "web-client-99.jsonl": [
        span(
            C1,
            None,
            "client",
            "PRODUCER",
            "send place_order",
            0,
            1,
            message="m1",
            event_type="place_order",
            dest="choreo.events",
        ),
    ],
    "order-100.jsonl": [
        span(
            O1,
            C1,
            "order",
            "CONSUMER",
            "process place_order",
            3,
            10,
            message="m1",
            event_type="place_order",
            dest="choreo.order",
            outcome="processed",
            attempt=0,
        ),
        span(
            OP1,
            O1,
            "order",
            "PRODUCER",
            "send order.placed",
            8,
            9,
            message="m2",
            event_type="order.placed",
            dest="choreo.events",
        ),
        span(
            OP1B,
            O1,
            "order",
            "PRODUCER",
            "send order.placed",
            1035,
            1040,
            message="m2",
            event_type="order.placed",
            dest="choreo.events",
            relay=True,
        ),
        span(
            O2,
            P2,
            "order",
            "CONSUMER",
            "process payment.completed",
            1028,
            1032,
            message="m3",
            event_type="payment.completed",
            dest="choreo.order",
            outcome="processed",
            attempt=0,
            events=("compensation",),
        ),
    ],
    "payment-200.jsonl": [
        span(
            P1,
            O1,
            "payment",
            "CONSUMER",
            "process order.placed",
            12,
            15.25,
            message="m2",
            event_type="order.placed",
            dest="choreo.payment",
            outcome="retry",
            attempt=0,
            events=("retry",),
            status="ERROR",
        ),
        span(
            PR1,
            P1,
            "payment",
            "PRODUCER",
            "send order.placed",
            14,
            14.5,
            message="m2",
            event_type="order.placed",
            dest="choreo.payment.retry.1",
            retry=True,
        ),
        span(
            P3,
            O1,
            "payment",
            "CONSUMER",
            "process order.placed",
            1045,
            1046,
            message="m2",
            event_type="order.placed",
            dest="choreo.payment",
            outcome="duplicate",
            attempt=0,
            events=("duplicate",),
        ),
        span(
            PP1,
            P2,
            "payment",
            "PRODUCER",
            "send payment.completed",
            1025,
            1026,
            message="m3",
            event_type="payment.completed",
            dest="choreo.events",
        ),
    ],
    "payment-200.jsonl.1": [  # rotated
        span(
            P2,
            O1,
            "payment",
            "CONSUMER",
            "process order.placed",
            1020,
            1030.1234,
            message="m2",
            event_type="order.placed",
            dest="choreo.payment",
            outcome="processed",
            attempt=1,
        ),
    ],
    "inventory-300.jsonl": [
        span(
            I1,
            P2,
            "inventory",
            "CONSUMER",
            "process payment.completed",
            1030,
            1050,
            message="m3",
            event_type="payment.completed",
            dest="choreo.inventory",
            outcome="processed",
            attempt=0,
        ),
        span(X1, MISSING_PARENT, "inventory", "INTERNAL", "reserve stock", 1060, 1070, order=None),
    ],
}
TREE = [
    (C1, 0),
    (O1, 1),
    (OP1, 2),
    (P1, 2),
    (PR1, 3),
    (P2, 2),
    (PP1, 3),
    (O2, 3),
    (I1, 3),
    (OP1B, 2),
    (P3, 2),
    (X1, 0),
]
# Another saga in the same files: its spans must never show up.
OTHER_SPANS = [
    span(
        sid(101),
        None,
        "client",
        "PRODUCER",
        "send place_order",
        2,
        3,
        trace=OTHER_TRACE,
        order=OTHER,
        message="n1",
    ),
    span(
        sid(102),
        sid(101),
        "order",
        "CONSUMER",
        "process place_order",
        4,
        6,
        trace=OTHER_TRACE,
        order=OTHER,
        message="n1",
        outcome="processed",
        attempt=0,
    ),
    span(sid(103), sid(102), "order", "INTERNAL", "save", 4, 5, trace=OTHER_TRACE, order=None),
]

SPAN_KEYS = {
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
}
VIEW_KEYS = {
    "order_id",
    "trace_ids",
    "services",
    "span_count",
    "started_at",
    "duration_ms",
    "spans",
}


@pytest.fixture
def trace_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "traces"
    folder.mkdir()
    rng = random.Random(7)
    for name, spans in SAGA.items():
        lines = [json.dumps(s) for s in spans]
        if name == "order-100.jsonl":
            lines += [json.dumps(s) for s in OTHER_SPANS[1:]]
        if name == "web-client-99.jsonl":
            lines += [json.dumps(OTHER_SPANS[0]), ""]  # and a blank line
        rng.shuffle(
            lines
        )  # files are in end order, not causal order: the view must not depend on it
        text = "\n".join(lines) + "\n"
        if name == "inventory-300.jsonl":  # a half-written last line (a span of this saga, torn)
            torn = json.dumps(span(sid(200), I1, "inventory", "INTERNAL", "torn", 1051, 1052))
            text += torn[: len(torn) // 2]
        (folder / name).write_text(text)
    # not a span file: ignored even though it holds a span of the saga
    (folder / "notes.txt").write_text(
        json.dumps(span(sid(300), C1, "client", "INTERNAL", "stray", 1, 2)) + "\n"
    )
    return folder


@pytest.fixture
def view(trace_dir: Path) -> dict:
    return traceview.build_view(ORDER, traceview.load_saga(trace_dir, ORDER))


def by_id(view: dict) -> dict[str, dict]:
    return {s["span_id"]: s for s in view["spans"]}


def test_the_view_has_exactly_the_contract_keys_and_types(view):
    assert set(view) == VIEW_KEYS
    assert view["order_id"] == ORDER
    assert view["trace_ids"] == [TRACE]
    assert view["services"] == ["client", "inventory", "order", "payment"]
    assert view["span_count"] == len(TREE) == len(view["spans"])
    assert view["started_at"] == "2023-11-14T22:13:20.123456+00:00"
    assert view["duration_ms"] == 1070.0
    for s in view["spans"]:
        assert set(s) == SPAN_KEYS, s["span_id"]
        assert (
            isinstance(s["depth"], int)
            and isinstance(s["retries"], int)
            and isinstance(s["relay"], bool)
        )
        assert isinstance(s["start_offset_ms"], float) and isinstance(s["duration_ms"], float)
        assert isinstance(s["events"], list)
    json.dumps(view)  # serialisable as is


def test_spans_come_in_tree_order_with_depths(view):
    assert [(s["span_id"], s["depth"]) for s in view["spans"]] == TREE
    position = {s["span_id"]: i for i, s in enumerate(view["spans"])}
    for s in view["spans"]:
        if s["parent_span_id"] in position:
            assert position[s["parent_span_id"]] < position[s["span_id"]]
            assert s["depth"] == view["spans"][position[s["parent_span_id"]]]["depth"] + 1


def test_queue_wait_is_from_the_latest_publish_that_began_before_the_consumer(view):
    spans = by_id(view)
    assert spans[O1]["queue_wait_ms"] == 3.0  # client publish began at 0 ms, consumed at 3 ms
    assert spans[P1]["queue_wait_ms"] == 4.0  # order's publish began at 8 ms
    assert (
        spans[P2]["queue_wait_ms"] == 1006.0
    )  # the retry copy (14 ms), not the first publish; relay is later
    assert spans[P3]["queue_wait_ms"] == 10.0  # the relay republish (1035 ms)
    assert spans[I1]["queue_wait_ms"] == 5.0  # began at 1025 ms, its confirm (1026) is irrelevant
    assert spans[OP1]["queue_wait_ms"] is None and spans[X1]["queue_wait_ms"] is None


def test_message_fields_offsets_and_rounding(view):
    spans = by_id(view)
    p1, p2, p3 = spans[P1], spans[P2], spans[P3]
    assert (p1["attempt"], p1["outcome"], p1["retries"], p1["events"], p1["status"]) == (
        0,
        "retry",
        1,
        ["retry"],
        "ERROR",
    )
    assert (p2["attempt"], p2["outcome"], p2["retries"], p2["events"]) == (1, "processed", 0, [])
    assert (p3["outcome"], p3["events"], p3["retries"]) == ("duplicate", ["duplicate"], 0)
    assert spans[O2]["retries"] == 0  # only "retry" events count
    assert p2["duration_ms"] == 10.123 and p2["start_offset_ms"] == 1020.0
    assert p1["duration_ms"] == 3.25
    assert (p1["message_type"], p1["message_id"], p1["destination"], p1["kind"], p1["service"]) == (
        "order.placed",
        "m2",
        "choreo.payment",
        "CONSUMER",
        "payment",
    )
    assert spans[PR1]["destination"] == "choreo.payment.retry.1"
    assert spans[OP1B]["relay"] is True and spans[OP1]["relay"] is False
    assert spans[O2]["events"] == ["compensation"]
    assert (
        spans[X1]["message_type"] is None
        and spans[X1]["attempt"] is None
        and spans[X1]["outcome"] is None
    )


def test_a_span_whose_parent_is_missing_is_a_root(view):
    x1 = by_id(view)[X1]
    assert x1["depth"] == 0
    assert x1["parent_span_id"] == MISSING_PARENT
    assert view["spans"][-1]["span_id"] == X1  # roots by start time


def test_torn_and_blank_lines_are_skipped(trace_dir):
    spans = list(
        traceview.read_spans([trace_dir / "inventory-300.jsonl", trace_dir / "web-client-99.jsonl"])
    )
    assert sorted(s["span_id"] for s in spans) == sorted([I1, X1, C1, sid(101)])


def test_other_orders_and_non_span_files_are_excluded(trace_dir, view):
    ids = {s["span_id"] for s in view["spans"]}
    assert ids == {span_id for span_id, _ in TREE}
    other = traceview.build_view(OTHER, traceview.load_saga(trace_dir, OTHER))
    assert other["trace_ids"] == [OTHER_TRACE]
    assert [(s["span_id"], s["depth"]) for s in other["spans"]] == [
        (sid(101), 0),
        (sid(102), 1),
        (sid(103), 2),
    ]
    assert traceview.load_saga(trace_dir, "ord-nobody") == []


def test_spans_of_the_trace_without_the_order_attribute_are_included(view):
    # X1 carries no choreo.order_id: it belongs to the saga by its trace id
    assert X1 in by_id(view)


def test_waterfall_bar_places_the_span_proportionally():
    assert traceview.waterfall_bar(50, 25, 100, 40) == "─" * 20 + "█" * 10 + "─" * 10
    assert traceview.waterfall_bar(0, 100, 100, 40) == "█" * 40
    assert (
        traceview.waterfall_bar(100, 0, 100, 40) == "─" * 39 + "█"
    )  # an instant at the very end still shows
    assert len(traceview.waterfall_bar(3.3, 0.01, 1070.0, 40)) == 40


# --- the command ------------------------------------------------------------------------------


@pytest.fixture
def run_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("CHOREO_RUN_DIR", str(tmp_path))
    get_settings.cache_clear()

    def run(*args):
        return CliRunner().invoke(cli, ["trace", *args])

    yield run
    get_settings.cache_clear()


def test_cli_json_prints_the_view(trace_dir, run_cli):
    result = run_cli(ORDER, "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == traceview.build_view(ORDER, traceview.load_saga(trace_dir, ORDER))
    assert [(s["span_id"], s["depth"]) for s in printed["spans"]] == TREE


def test_cli_table_shows_the_waterfall(trace_dir, run_cli):
    result = run_cli(ORDER)
    assert result.exit_code == 0, result.output
    out = result.stdout
    lines = out.splitlines()
    assert ORDER in lines[0] and TRACE in lines[0] and "1,070.000 ms" in lines[0]
    for service in ("client", "order", "payment", "inventory"):
        assert service in lines[0]
    assert "█" in out and "─" in out
    for shown in (
        "[retry]",
        "[compensation]",
        "duplicate",
        "ERROR",
        "(relay)",
        "#1",
        "1 retry",
        "1,006.0 ms",
    ):
        assert shown in out, shown
    # one row per span, in tree order, indented by depth
    rows = [line for line in lines if "█" in line]
    assert len(rows) == len(TREE)
    assert rows[0].startswith("client") and rows[-1].startswith("inventory")
    assert rows[8].startswith("      inventory")  # I1, depth 3
    assert (
        rows[4].startswith("      payment") and "choreo.payment.retry.1" in rows[4]
    )  # the retry copy


def test_cli_unknown_order_fails_in_one_line(trace_dir, run_cli):
    result = run_cli("ord-nobody")
    assert result.exit_code == 2
    assert result.stdout == ""
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1
    assert "ord-nobody" in message and str(trace_dir) in message and "flushed" in message


def test_cli_without_a_span_folder_fails_in_one_line(tmp_path, run_cli):
    result = run_cli(ORDER, "--json")
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and str(tmp_path / "traces") in message


# --- Jaeger -----------------------------------------------------------------------------------

JAEGER = {
    "data": [
        {
            "traceID": TRACE,
            "spans": [
                {
                    "traceID": TRACE,
                    "spanID": P1,
                    "operationName": "process order.placed",
                    "processID": "p1",
                    "references": [{"refType": "CHILD_OF", "traceID": TRACE, "spanID": O1}],
                    "startTime": 1_700_000_000_000_000,
                    "duration": 3250,
                    "tags": [
                        {"key": "span.kind", "type": "string", "value": "consumer"},
                        {"key": "choreo.order_id", "type": "string", "value": ORDER},
                        {"key": "messaging.message.id", "type": "string", "value": "m2"},
                        {"key": "choreo.attempt", "type": "int64", "value": 0},
                        {"key": "choreo.outcome", "type": "string", "value": "retry"},
                        {"key": "otel.status_code", "type": "string", "value": "ERROR"},
                    ],
                    "logs": [
                        {
                            "timestamp": 1_700_000_000_001_000,
                            "fields": [
                                {"key": "event", "type": "string", "value": "retry"},
                                {"key": "choreo.retry.delay_s", "type": "float64", "value": 1.0},
                            ],
                        }
                    ],
                },
                {
                    "traceID": TRACE,
                    "spanID": O1,
                    "operationName": "process place_order",
                    "processID": "p2",
                    "references": [],
                    "startTime": 1_699_999_999_999_000,
                    "duration": 500,
                    "tags": [
                        {"key": "span.kind", "type": "string", "value": "consumer"},
                        {"key": "choreo.relay", "type": "bool", "value": True},
                    ],
                },
            ],
            "processes": {
                "p1": {"serviceName": "payment", "tags": []},
                "p2": {"serviceName": "order", "tags": []},
            },
        }
    ]
}


def test_jaeger_json_converts_to_span_records():
    spans = {s["span_id"]: s for s in traceview.from_jaeger(JAEGER)}
    p1, o1 = spans[P1], spans[O1]
    assert (p1["trace_id"], p1["parent_span_id"], p1["service"], p1["kind"], p1["status"]) == (
        TRACE,
        O1,
        "payment",
        "CONSUMER",
        "ERROR",
    )
    assert (p1["start_ns"], p1["end_ns"]) == (1_700_000_000_000_000_000, 1_700_000_000_003_250_000)
    assert p1["attributes"]["choreo.attempt"] == 0 and p1["attributes"]["choreo.order_id"] == ORDER
    assert p1["events"] == [
        {
            "name": "retry",
            "time_ns": 1_700_000_000_001_000_000,
            "attributes": {"choreo.retry.delay_s": 1.0},
        }
    ]
    assert (
        o1["parent_span_id"] is None
        and o1["service"] == "order"
        and o1["attributes"]["choreo.relay"] is True
    )
    view = traceview.build_view(ORDER, list(spans.values()))
    assert [(s["span_id"], s["depth"]) for s in view["spans"]] == [(O1, 0), (P1, 1)]
    assert view["spans"][1]["retries"] == 1 and view["spans"][0]["relay"] is True


def test_jaeger_query_asks_each_service_for_the_order_and_merges_the_traces():
    import httpx

    asked = []

    def handler(request: httpx.Request) -> httpx.Response:
        params = request.url.params
        asked.append(
            (request.url.path, params["service"], json.loads(params["tags"]), params["limit"])
        )
        if params["service"] == "shipment":
            return httpx.Response(404, json={"errors": [{"msg": "service not found"}]})
        if params["service"] in ("order", "payment"):
            return httpx.Response(200, json=JAEGER)  # the same trace, found from both services
        return httpx.Response(200, json={"data": []})

    spans = traceview.load_saga_jaeger(
        "http://jaeger:16686/", ORDER, transport=httpx.MockTransport(handler)
    )
    assert sorted(s["span_id"] for s in spans) == sorted([O1, P1])  # deduplicated
    assert [a[1] for a in asked] == list(DOMAINS)
    assert {(a[0], json.dumps(a[2]), a[3]) for a in asked} == {
        ("/api/traces", json.dumps({"choreo.order_id": ORDER}), "20")
    }
