"""One domain's worker in-process (pytest-celery's celery_session_worker) on the real broker.

Like nameko's entrypoint testing: the shipment domain alone, in its own namespace of the
run's vhost, hears inventory.reserved and says shipment.created exactly once.
"""

from __future__ import annotations

import json
import uuid

import pytest
from kombu import Connection, Queue

from tests.helpers import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def ns_settings(settings):
    from choreo.app.bootstrap import prepare
    from choreo.ops.stack import free_port_block
    from config.settings import HEALTH_PORT_OFFSETS

    # Its own health listener ports: this in-process worker lives for the whole session, beside
    # the e2e stack's shipment worker, whose port it must not take.
    from tests.helpers import own_namespace

    with own_namespace(
        settings, "inproc", health_port_base=free_port_block(len(HEALTH_PORT_OFFSETS))
    ) as s:
        prepare(s, ["shipment"])
        yield s


@pytest.fixture(scope="session")
def celery_session_app(ns_settings):  # pytest-celery's worker fixture runs the real shipment app
    from tasks.app import make_app

    return make_app("shipment", ns_settings)


@pytest.fixture(scope="session")
def celery_worker_pool():
    return "solo"


@pytest.fixture(scope="session")
def celery_worker_parameters(ns_settings):
    from choreo.messaging.access import node_name

    # Its node name is the one its broker user may declare a remote-control queue for.
    return {
        "queues": (f"{ns_settings.namespace}.shipment",),
        "perform_ping_check": False,
        "shutdown_timeout": 10,
        "hostname": f"{node_name(ns_settings, 'shipment')}@localhost",
    }


@pytest.fixture
def capture(ns_settings):
    """A queue that hears every shipment.* event, as a new subscriber would: a new binding."""
    from consumers.registry import topology

    topo = topology(ns_settings)
    q = Queue(
        f"{ns_settings.namespace}.capture",
        exchange=topo.events,
        routing_key="shipment.*",
        durable=False,
        auto_delete=False,
    )
    with Connection(ns_settings.broker_url) as conn:
        q(conn.default_channel).declare()
        yield conn, q
        q(conn.default_channel).delete()


def _drain(conn, q) -> list[dict]:
    out = []
    ch = conn.channel()
    try:
        while (msg := q(ch).get(no_ack=True)) is not None:
            out.append({"task": msg.headers.get("task"), "envelope": json.loads(msg.body)[0][0]})
    finally:
        ch.close()
    return out


def test_shipment_worker_ships_once_and_says_so(ns_settings, celery_session_worker, capture):
    from sqlmodel import Session

    from choreo.infra.db import engine_for
    from choreo.infra.metrics import Metrics
    from choreo.infra.redis_client import redis_client
    from choreo.messaging.publisher import Publisher
    from choreo.messaging.topology import Names
    from consumers.inventory.messages import InventoryReserved
    from consumers.shipment.tables import Shipment
    from models.envelope import make_envelope
    from tasks.app import make_app

    conn, q = capture
    order_id = f"ord-inproc-{uuid.uuid4().hex[:8]}"
    cause = make_envelope(
        "inventory.reserved",
        order_id,
        InventoryReserved(
            reservation_id="r-1",
            order={
                "customer_id": "cust-1",
                "items": [{"sku": "SKU-RED", "qty": 1, "unit_price_cents": 5}],
                "address": "1 Main Street",
                "amount_cents": 5,
            },
        ),
        source="test",
    )
    # As the inventory service, the owner of inventory.reserved (the shipment worker believes no
    # one else).
    publisher = Publisher(
        make_app("client", ns_settings, service="inventory"), Names(ns_settings.namespace)
    )
    publisher.publish(cause)

    said = wait_for(lambda: _drain(conn, q), 30, what="shipment.created")
    assert [m["task"] for m in said] == ["shipment.created"]
    env = said[0]["envelope"]
    assert env["type"] == "shipment.created" and env["order_id"] == order_id
    assert env["causation_id"] == cause.event_id and env["correlation_id"] == cause.correlation_id
    assert env["traceparent"].split("-")[1] == cause.trace_id  # same trace, new span
    with Session(engine_for(ns_settings, "shipment")) as s:
        assert s.get(Shipment, order_id).status == "created"

    metrics = Metrics(redis_client(ns_settings), ns_settings.redis_prefix)
    before = metrics.snapshot()["duplicates"].get("shipment", 0)
    publisher.publish(cause)  # the same event again
    wait_for(
        lambda: metrics.snapshot()["duplicates"].get("shipment", 0) > before,
        30,
        what="duplicate absorbed",
    )
    assert _drain(conn, q) == []  # nothing said twice
