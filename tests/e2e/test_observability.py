"""Observability end to end: real workers' /metrics, /health, /ready and /breakers, and the
spans they write, checked against what the services' own databases say happened."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import Counter

import httpx
import pytest
from sqlalchemy import select

from config.settings import DOMAINS
from tests.helpers import Probe, queues_idle, scrape, settled, wait_for

pytestmark = pytest.mark.e2e


def requests(samples: dict, service: str) -> Counter:
    """service_request_total of one service: (type, outcome) -> count."""
    out = Counter()
    for (name, labels), value in samples.items():
        d = dict(labels)
        if name == "service_request_total" and d["service"] == service:
            out[(d["type"], d["outcome"])] = value
    return out


def latency_counts(samples: dict, service: str) -> Counter:
    return Counter(
        {
            dict(labels)["type"]: v
            for (name, labels), v in samples.items()
            if name == "service_latency_seconds_count" and dict(labels)["service"] == service
        }
    )


def scrape_all(settings) -> dict[str, dict]:
    return {d: scrape(settings, d) for d in DOMAINS}


def _inbox(settings, domain: str, order_ids: set[str]) -> Counter:
    from choreo.infra.db import engine_for
    from models.tables import Inbox

    with engine_for(settings, domain).connect() as conn:
        rows = conn.execute(
            select(Inbox.type, Inbox.order_id).where(Inbox.consumer == domain)
        ).all()
    return Counter(t for t, o in rows if o in order_ids)


def _dead_letters(settings, domain: str, order_ids: set[str]) -> list:
    from choreo.infra.db import engine_for
    from models.tables import DeadLetter

    with engine_for(settings, domain).connect() as conn:
        rows = conn.execute(
            select(DeadLetter.type, DeadLetter.order_id, DeadLetter.attempts, DeadLetter.reason)
        ).all()
    return [r for r in rows if r.order_id in order_ids]


@pytest.fixture(scope="module")
def known_set(settings, stack):
    """Every scenario once, then a duplicate and two poison messages: the metrics before and
    after."""
    from choreo.infra.db import engine_for
    from choreo.messaging.publisher import Publisher
    from choreo.messaging.topology import Names
    from choreo.ops.scenarios import SCENARIOS
    from choreo.ops.workload import publish_orders
    from models.envelope import Envelope
    from models.tables import Outbox
    from tasks.app import make_app

    queues_idle(settings)
    before = scrape_all(settings)
    sent = publish_orders(settings, list(SCENARIOS), seed=None)
    ids = {o for o, _ in sent}
    states = settled(settings, sorted(ids))
    completed = next(o for o, s in sent if s == "completed")
    # A duplicate: the completed order's payment.completed once more (order and inventory hear it).
    with engine_for(settings, "payment").connect() as conn:
        body = conn.execute(
            select(Outbox.body).where(
                Outbox.order_id == completed, Outbox.type == "payment.completed"
            )
        ).scalar_one()
    app = make_app("client", settings, service="payment")  # as its relay would re-publish it
    try:
        Publisher(app, Names(settings.namespace)).publish(Envelope.model_validate_json(body))
    finally:
        app.close()
    # Poison: a name no domain has, and a place_order whose envelope breaks the schema.
    probe = Probe(settings, "order")
    from tests.helpers import celery_message, place_order

    bad_name = probe.send(*celery_message("no.such.type", [place_order()]))
    bad_body = probe.send(*celery_message("place_order", [{"event_id": "x"}]))
    probe.wait_letters([bad_name, bad_body])
    queues_idle(settings)
    after = wait_for(lambda: _when_counted(settings, before), 30, what="the duplicate counted")
    return sent, states, ids, before, after


def _when_counted(settings, before):
    after = scrape_all(settings)
    key = ("payment.completed", "duplicate")
    return (
        after
        if requests(after["inventory"], "inventory")[key]
        > requests(before["inventory"], "inventory")[key]
        else None
    )


def test_counters_move_by_exactly_what_happened(settings, known_set):
    sent, states, ids, before, after = known_set
    for domain in DOMAINS:
        delta = requests(after[domain], domain) - requests(before[domain], domain)
        inbox = _inbox(settings, domain, ids)
        letters = _dead_letters(settings, domain, ids)
        # processed: one per message the service applied (its inbox says which)
        assert {t: n for (t, o), n in delta.items() if o == "processed"} == dict(inbox), domain
        # dead letters: one per row of the service's own dead-letter record, after its retries
        assert Counter(
            t for (t, o), n in delta.items() if o == "dead_lettered" for _ in range(int(n))
        ) == Counter(r.type for r in letters), domain
        retries = Counter()
        for r in letters:
            retries[r.type] += r.attempts - 1
        if domain == "payment":  # the flaky card fails twice, then charges (scenarios.make_order)
            retries["order.placed"] += 2 * sum(1 for _, s in sent if s == "flaky")
        assert {t: n for (t, o), n in delta.items() if o == "retry"} == {
            t: n for t, n in retries.items() if n
        }, domain
        # the duplicate reached the two services bound to payment.completed
        dup = {t: n for (t, o), n in delta.items() if o == "duplicate"}
        assert dup == ({"payment.completed": 1} if domain in ("order", "inventory") else {}), domain
        poison = {t: n for (t, o), n in delta.items() if o == "poison"}
        assert poison == ({"unknown": 1, "place_order": 1} if domain == "order" else {}), domain
        # every settled message is in the latency histogram once
        by_type = Counter()
        for (t, _o), n in delta.items():
            by_type[t] += n
        lat = latency_counts(after[domain], domain) - latency_counts(before[domain], domain)
        assert +lat == +by_type, domain
    assert any(r.attempts > 1 for r in _dead_letters(settings, "payment", ids)), (
        "a refund that kept failing"
    )


def test_no_id_is_a_label(settings, known_set):
    _sent, _states, ids, _before, after = known_set
    values = {v for samples in after.values() for (_n, labels) in samples for _k, v in labels}
    assert not values & ids
    assert not any(re.fullmatch(r"[0-9a-f-]{36}", v) for v in values)


def test_one_trace_per_saga_across_five_domains(settings, known_set):
    sent, _states, _ids, _before, _after = known_set
    order_id = next(o for o, s in sent if s == "completed")
    view = wait_for(
        lambda: _view(order_id, "notification", "order.completed"),
        20,
        what="the saga's spans in the span files",
    )
    assert len(view["trace_ids"]) == 1
    assert set(DOMAINS) <= set(view["services"])
    spans = view["spans"]
    seen = set()
    for span in spans:  # tree order: a parent comes before its children, and starts before them
        if span["parent_span_id"] in {s["span_id"] for s in spans}:
            assert span["parent_span_id"] in seen
            parent = next(s for s in spans if s["span_id"] == span["parent_span_id"])
            assert span["start_offset_ms"] >= parent["start_offset_ms"]
        seen.add(span["span_id"])
    consumed = [s for s in spans if s["kind"] == "CONSUMER"]
    # the re-published payment.completed is in the saga's trace too, absorbed by both its consumers
    assert sorted(
        (s["service"], s["message_type"]) for s in consumed if s["outcome"] != "processed"
    ) == [("inventory", "payment.completed"), ("order", "payment.completed")]
    assert {s["outcome"] for s in consumed} == {"processed", "duplicate"}
    chain = [
        "place_order",
        "order.placed",
        "payment.completed",
        "inventory.reserved",
        "shipment.created",
        "order.completed",
    ]
    firsts = [min(s["start_offset_ms"] for s in consumed if s["message_type"] == t) for t in chain]
    assert firsts == sorted(firsts)
    for s in consumed:
        if s["message_type"] != "place_order":
            assert s["queue_wait_ms"] is not None and s["queue_wait_ms"] >= 0
    # Causality: each delivery's parent is the span that emitted the message: the client's
    # publish for place_order, else the CONSUMER span (of the emitting domain) of its cause.
    by_id = {s["span_id"]: s for s in spans}
    emitted_by = {
        "place_order": ("client", "PRODUCER", "place_order"),
        "order.placed": ("order", "CONSUMER", "place_order"),
        "payment.completed": ("payment", "CONSUMER", "order.placed"),
        "inventory.reserved": ("inventory", "CONSUMER", "payment.completed"),
        "shipment.created": ("shipment", "CONSUMER", "inventory.reserved"),
        "order.completed": ("order", "CONSUMER", "shipment.created"),
    }
    for s in consumed:
        parent = by_id.get(s["parent_span_id"])
        assert parent is not None, (
            f"{s['service']} {s['name']}: parent {s['parent_span_id']} not in the trace"
        )
        assert (parent["service"], parent["kind"], parent["message_type"]) == emitted_by[
            s["message_type"]
        ], s["name"]
    # and each publish is a child of the delivery that staged it
    for s in spans:
        if s["kind"] == "PRODUCER" and s["service"] != "client":
            assert by_id[s["parent_span_id"]]["kind"] == "CONSUMER"


def test_a_retried_saga_shows_its_retries(settings, known_set):
    sent, *_ = known_set
    order_id = next(o for o, s in sent if s == "flaky")
    view = wait_for(
        lambda: _view(order_id, "payment", "order.placed", "processed"),
        20,
        what="the flaky saga's spans",
    )
    charges = [
        s
        for s in view["spans"]
        if s["kind"] == "CONSUMER"
        and s["message_type"] == "order.placed"
        and s["service"] == "payment"
    ]
    assert [
        (s["attempt"], s["outcome"], s["retries"])
        for s in sorted(charges, key=lambda s: s["attempt"])
    ] == [(0, "retry", 1), (1, "retry", 1), (2, "processed", 0)]


def _view(order_id: str, service: str, message_type: str, outcome: str = "processed"):
    """`choreo trace ORDER_ID --json`, once the span files hold `service`'s handling of
    `message_type`."""
    from click.testing import CliRunner

    from choreo.cli.trace import trace

    result = CliRunner().invoke(trace, [order_id, "--json"])
    if result.exit_code != 0:
        return None
    view = json.loads(result.output)
    done = any(
        s["service"] == service and s["message_type"] == message_type and s["outcome"] == outcome
        for s in view["spans"]
    )
    return view if done else None


def test_logs_carry_trace_and_span_ids(settings, stack, known_set):
    sent, *_ = known_set
    order_id = next(o for o, s in sent if s == "completed")
    lines = [
        json.loads(line)
        for line in stack.logfile("worker-payment").read_text().splitlines()
        if order_id in line and line.startswith("{")
    ]
    settled_lines = [x for x in lines if x.get("msg") == "processed"]
    assert settled_lines
    for x in settled_lines:
        assert x["service_name"] == "payment"
        assert re.fullmatch(r"[0-9a-f]{32}", x["trace_id"]) and re.fullmatch(
            r"[0-9a-f]{16}", x["span_id"]
        )
        assert x["duration_ms"] > 0


def test_ready_turns_and_health_stays_while_the_broker_refuses(settings, stack, sandbox):
    from choreo.ops.stack import rabbitmqctl, wait_consuming

    url = settings.health_url("payment")
    ready = httpx.get(url + "/ready", timeout=5)
    assert (
        ready.status_code == 200 and ready.json()["broker_node"] == "127.0.0.1:5672"
    )  # the node it consumes from
    rabbitmqctl("set_vhost_limits", "-p", sandbox.vhost, '{"max-connections": 0}')
    try:
        rabbitmqctl(
            "close_all_connections",
            "--vhost",
            sandbox.vhost,
            "choreo test: broker connections closed",
        )
        body = wait_for(lambda: _not_ready(url), 20, what="/ready to say not ready")
        assert (
            body["checks"]["broker"] is False
            and body["checks"]["database"] is True
            and body["broker_node"] is None
        )
        for _ in range(5):  # liveness holds while the worker only waits for its broker
            health = httpx.get(url + "/health", timeout=5)
            assert health.status_code == 200 and health.json()["state"] == "reconnecting"
            time.sleep(0.2)
    finally:
        rabbitmqctl("clear_vhost_limits", "-p", sandbox.vhost)
    wait_for(
        lambda: httpx.get(url + "/ready", timeout=5).status_code == 200, 60, what="/ready again"
    )
    assert httpx.get(url + "/health", timeout=5).status_code == 200
    wait_consuming(settings, stack, [f"worker-{d}" for d in DOMAINS], 60)


def _not_ready(url):
    r = httpx.get(url + "/ready", timeout=5)
    return r.json() if r.status_code == 503 else None


def test_breaker_gauge_opens_when_the_user_service_stops(settings, stack):
    from choreo.ops.stack import wait_consuming
    from choreo.ops.workload import publish_orders

    def state():
        samples = scrape(settings, "notification")
        return samples.get(
            (
                "choreo_breaker_state",
                frozenset({("service", "notification"), ("breaker", "user-service")}),
            )
        )

    assert state() == 0
    stack.stop("users")
    try:
        sent = publish_orders(settings, ["completed"] * 3, seed=None)
        wait_for(lambda: state() == 2, 60, what="the user-service breaker open (gauge 2)")
        breakers = httpx.get(settings.health_url("notification") + "/breakers", timeout=5).json()[
            "breakers"
        ]
        assert breakers[0]["name"] == "user-service" and breakers[0]["state"] == "open"
    finally:
        stack.start("users")
        wait_consuming(settings, stack, ["users"], 60)
    settled(settings, [o for o, _ in sent])
    # Closed again: after its reset timeout the next lookup goes through (a later order's).
    wait_for(
        lambda: publish_orders(settings, ["completed"], seed=None) and state() == 0,
        60,
        interval=2,
        what="the breaker closed again (gauge 0)",
    )


def test_poison_ids_are_not_labels(settings, stack):
    """A hostile task name becomes type="unknown", however many different ones arrive."""
    probe = Probe(settings, "shipment")
    from tests.helpers import celery_message, place_order

    before = requests(scrape(settings, "shipment"), "shipment")
    ids = [
        probe.send(*celery_message(f"evil.{uuid.uuid4().hex}", [place_order()])) for _ in range(3)
    ]
    probe.wait_letters(ids)
    after = wait_for(
        lambda: (
            lambda a: a if a[("unknown", "poison")] - before[("unknown", "poison")] >= 3 else None
        )(requests(scrape(settings, "shipment"), "shipment")),
        20,
        what="three poison counted",
    )
    assert after[("unknown", "poison")] - before[("unknown", "poison")] == 3
    assert not any(t.startswith("evil.") for t, _ in after)


@pytest.mark.skipif(
    __import__("shutil").which("prometheus") is None,
    reason="prometheus is not installed (scripts/ensure-services.sh installs it, as root)",
)
def test_a_real_prometheus_scrapes_every_process_and_sees_all_five_domains(settings, stack):
    """`choreo up`'s Prometheus (choreo.ops.prometheus), scraping the real workers and user
    service."""
    from choreo.ops import prometheus as prom
    from choreo.ops.workload import publish_orders

    sent = publish_orders(settings, ["completed", "declined"], seed=None)
    settled(settings, [o for o, _ in sent])
    prom.start(settings)
    try:
        prom.wait_ready(settings, 30)

        expected = {"users", "monitor", *(f"worker-{d}" for d in DOMAINS)}

        def up():  # each target's first scrape lands somewhere in the first 5 s interval
            found = {
                r["metric"]["process"]: r["value"][1]
                for r in prom.query(settings, 'up{job="choreo"}')
            }
            return (
                found if set(found) == expected and all(v == "1" for v in found.values()) else None
            )

        wait_for(up, 45, interval=1, what="every process scraped (up == 1)")

        def domains():
            rows = prom.query(
                settings, 'sum by (service) (service_request_total{outcome="processed"})'
            )
            found = {r["metric"]["service"] for r in rows}
            return found if set(DOMAINS) <= found else None

        wait_for(
            domains, 45, interval=1, what="service_request_total of all five domains in Prometheus"
        )
        breakers = wait_for(
            lambda: prom.query(settings, 'choreo_breaker_state{breaker="user-service"}'),
            30,
            interval=1,
            what="the notification worker's breaker gauge in Prometheus",
        )
        assert [r["metric"]["service"] for r in breakers] == ["notification"]
        # Every domain queue's consumers, counted by the monitor (not by the worker itself).
        consumers = wait_for(
            lambda: prom.query(settings, 'choreo_queue_consumers{kind="queue"} == 1'),
            30,
            interval=1,
            what="the monitor's consumer count of every domain queue in Prometheus",
        )
        assert {r["metric"]["domain"] for r in consumers} == set(DOMAINS)
        assert {r["metric"]["process"] for r in consumers} == {"monitor"}
        rules = httpx.get(prom.url(settings) + "/api/v1/rules", timeout=5).json()["data"]["groups"]
        assert any(r["name"] for g in rules for r in g["rules"])
    finally:
        prom.stop(settings)
    assert prom.running(settings) is None


def test_the_order_worker_serves_the_open_and_stuck_saga_gauges(settings, known_set):
    """choreo_open_sagas{state,age} and choreo_stuck_sagas{step} come from the order worker alone,
    every series present (zeros too), and say what choreo.app.stuck reads at that moment."""
    from choreo.app.stuck import AGE_BUCKETS, OPEN_STATES, STEPS, saga_summary

    queues_idle(settings)

    def gauges(samples: dict) -> tuple[dict, dict]:
        opened = {
            (dict(labels)["state"], dict(labels)["age"]): v
            for (name, labels), v in samples.items()
            if name == "choreo_open_sagas"
        }
        stuck = {
            dict(labels)["step"]: v
            for (name, labels), v in samples.items()
            if name == "choreo_stuck_sagas"
        }
        return opened, stuck

    def agree():
        before = saga_summary(settings)
        opened, stuck = gauges(scrape(settings, "order"))
        after = saga_summary(settings)
        return (
            (opened, stuck)
            if before == after
            and (opened, stuck)
            == (
                after.open,
                after.stuck,
            )
            else None
        )

    opened, stuck = wait_for(agree, 30, what="the saga gauges equal to a read between two reads")
    assert set(opened) == {(s, a) for s in OPEN_STATES for a, _ in AGE_BUCKETS}
    assert set(stuck) == set(STEPS)
    for domain in ("payment", "notification"):
        others = {name for name, _ in scrape(settings, domain)}
        assert not others & {"choreo_open_sagas", "choreo_stuck_sagas"}, domain
