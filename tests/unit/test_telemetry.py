"""The observability building blocks without a broker: span records, trace context, the health
routes, the recorder's labels and the worker's liveness rule."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import httpx
from prometheus_client import REGISTRY

from choreo.infra import tracing
from choreo.infra.health import HealthServer, route
from choreo.infra.telemetry import Recorder, known_type
from config.settings import Settings


def _settings(tmp_path, **kw):
    return Settings(run_dir=tmp_path / "run", data_dir=tmp_path / "data", **kw)


def _spans(settings) -> list[dict]:
    tracing.force_flush()
    return [
        json.loads(line)
        for f in settings.trace_dir.glob("*.jsonl")
        for line in f.read_text().splitlines()
    ]


def test_a_root_span_keeps_the_envelopes_trace_id_and_a_child_names_its_parent(tmp_path):
    from opentelemetry.trace import SpanKind

    settings = _settings(tmp_path)
    t = tracing.tracer(settings, "client")
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    root = tracing.start_root(
        t,
        "send place_order",
        trace_id,
        kind=SpanKind.PRODUCER,
        attributes={"choreo.order_id": "ord-1"},
    )
    tp = tracing.traceparent_of(root)
    assert tp.split("-")[1] == trace_id and tp.endswith("-01")
    child = t.start_span(
        "process place_order", context=tracing.parent_context(tp), kind=SpanKind.CONSUMER
    )
    child.end()
    root.end()
    records = {r["name"]: r for r in _spans(settings)}
    assert records["send place_order"]["parent_span_id"] is None
    assert records["send place_order"]["trace_id"] == trace_id
    assert records["send place_order"]["attributes"] == {"choreo.order_id": "ord-1"}
    assert records["process place_order"]["parent_span_id"] == tp.split("-")[2]
    assert records["process place_order"]["trace_id"] == trace_id
    assert (
        records["process place_order"]["kind"] == "CONSUMER"
        and records["process place_order"]["service"] == "client"
    )
    # an unforced root afterwards gets a trace of its own
    other = t.start_span("x")
    assert f"{other.get_span_context().trace_id:032x}" != trace_id
    other.end()
    tracing.shutdown()


def test_tracing_off_gives_no_tracer(tmp_path):
    assert tracing.tracer(_settings(tmp_path, tracing=False), "order") is None


def test_a_bad_traceparent_gives_no_parent():
    assert tracing.parent_context(None) is None
    assert tracing.parent_context("garbage") is None
    assert (
        tracing.parent_context("00-" + "0" * 32 + "-" + "0" * 16 + "-01") is None
    )  # all-zero ids are invalid


class _Probes:
    def __init__(self, live=True, ready=False):
        self.live, self.ready = live, ready

    def liveness(self):
        return self.live, {"state": "consuming" if self.live else "stalled"}

    def readiness(self):
        return self.ready, {"checks": {"broker": self.ready}}

    def breakers(self):
        return [{"name": "user-service", "state": "open", "failures": 5}]


def test_routes_answer_each_path_and_refuse_others():
    probes = _Probes(live=True, ready=False)
    status, ctype, body = route("/health", probes, "order")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, _, body = route("/ready?x=1", probes, "order")
    assert status == 503 and json.loads(body) == {
        "ready": False,
        "service": "order",
        "checks": {"broker": False},
    }
    assert route("/breakers", probes, "order")[0] == 200
    Recorder("unit-route").handled("place_order", "processed", 0.001)
    status, ctype, body = route("/metrics", probes, "order")
    assert status == 200 and ctype.startswith("text/plain")
    assert (
        b'service_request_total{outcome="processed",service="unit-route",type="place_order"} 1.0'
        in body
    )
    assert route("/nope", probes, "order") is None
    assert route("/health", _Probes(live=False), "order")[0] == 503


def test_the_listener_serves_over_http_and_survives_a_probe_that_raises():
    class Broken(_Probes):
        def breakers(self):
            raise RuntimeError("boom")

    server = HealthServer("127.0.0.1", 0, Broken(ready=True), "payment").start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert httpx.get(base + "/ready").status_code == 200
        assert httpx.get(base + "/breakers").status_code == 500
        assert httpx.get(base + "/health").json()["service"] == "payment"
        assert httpx.get(base + "/other").status_code == 404
    finally:
        server.stop()


def test_recorder_counts_with_bounded_labels():
    rec = Recorder("unit-svc")
    before = (
        REGISTRY.get_sample_value(
            "service_request_total",
            {"service": "unit-svc", "type": "order.placed", "outcome": "retry"},
        )
        or 0
    )
    rec.handled("order.placed", "retry", 0.01)
    rec.handled("order.placed", "retry", 0.02)
    assert (
        REGISTRY.get_sample_value(
            "service_request_total",
            {"service": "unit-svc", "type": "order.placed", "outcome": "retry"},
        )
        == before + 2
    )
    assert (
        REGISTRY.get_sample_value(
            "service_latency_seconds_count", {"service": "unit-svc", "type": "order.placed"}
        )
        >= 2
    )
    assert known_type("evil.123", {"order.placed"}) == "unknown"
    assert known_type("order.placed", {"order.placed"}) == "order.placed"
    assert (
        known_type(["order.placed"], {"order.placed"}) == "unknown"
    )  # a hostile header: unhashable
    assert known_type({"a": 1}, {"order.placed"}) == "unknown"
    off = Recorder("unit-off", enabled=False)
    off.handled("order.placed", "processed", 0.1)
    assert (
        REGISTRY.get_sample_value(
            "service_request_total",
            {"service": "unit-off", "type": "order.placed", "outcome": "processed"},
        )
        is None
    )


def test_liveness_holds_while_reconnecting_and_fails_only_on_a_stall():
    from tasks.observe import STALL_SECONDS, WorkerProbes

    probes = WorkerProbes.__new__(WorkerProbes)
    consumer = SimpleNamespace(last_turn=time.monotonic(), consuming=True, batch_started=None)
    probes.worker = SimpleNamespace(consumer=consumer)
    assert probes.liveness()[0] and probes.liveness()[1]["state"] == "consuming"
    consumer.consuming, consumer.last_turn = (
        False,
        time.monotonic() - 10 * STALL_SECONDS,
    )  # broker away for long
    assert (
        probes.liveness() == (True, probes.liveness()[1])
        and probes.liveness()[1]["state"] == "reconnecting"
    )
    consumer.consuming = True  # connected, but the loop has not turned for too long
    assert probes.liveness()[0] is False
    consumer.last_turn, consumer.batch_started = (
        time.monotonic(),
        time.monotonic() - STALL_SECONDS - 1,
    )
    assert probes.liveness()[0] is False and probes.liveness()[1]["state"] == "stalled"
