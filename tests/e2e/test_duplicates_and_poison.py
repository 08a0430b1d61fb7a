"""Duplicate delivery changes nothing; poison input is dead-lettered at once and the worker
keeps serving."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlmodel import Session, func, select

from tests.helpers import celery_message, settled, wait_for

pytestmark = pytest.mark.e2e


def world(settings) -> dict:
    """Every fact the services hold, as counts and sums: what a duplicate must not change."""
    from choreo.infra.db import engine_for
    from consumers.inventory.tables import Reservation, Stock
    from consumers.notification.tables import Notification
    from consumers.order.tables import OrderEvent, OrderView
    from consumers.payment.tables import Charge, Refund
    from consumers.shipment.tables import Shipment
    from models.tables import GatewayLedger, Inbox, Outbox

    out = {}
    tables = {
        "order": [OrderEvent, Outbox, Inbox],
        "payment": [Charge, Refund, Outbox, Inbox],
        "gateway": [GatewayLedger],
        "inventory": [Reservation, Outbox, Inbox],
        "shipment": [Shipment, Outbox, Inbox],
        "notification": [Notification, Inbox],
    }
    for service, models in tables.items():
        with Session(engine_for(settings, service)) as s:
            for m in models:
                out[f"{service}.{m.__tablename__}"] = s.exec(
                    select(func.count()).select_from(m)
                ).one()
    with Session(engine_for(settings, "inventory")) as s:
        out["stock"] = sorted((r.sku, r.available, r.reserved) for r in s.exec(select(Stock)))
    with Session(engine_for(settings, "order")) as s:
        out["views"] = sorted(
            (v.order_id, v.state, v.reason, v.version) for v in s.exec(select(OrderView))
        )
    return out


def all_published(settings, order_ids) -> list:
    """Every event the services published for these orders, from their outboxes."""
    from choreo.infra.db import engine_for
    from config.settings import DOMAINS
    from models.envelope import Envelope
    from models.tables import Outbox

    envs = []
    for domain in DOMAINS:
        with Session(engine_for(settings, domain)) as s:
            rows = s.exec(select(Outbox).where(Outbox.order_id.in_(order_ids))).all()
            envs += [Envelope.model_validate_json(r.body) for r in rows]
    return envs


def duplicates_total(isolated_redis, settings) -> int:
    from choreo.infra.metrics import Metrics

    return sum(Metrics(isolated_redis, settings.redis_prefix).snapshot()["duplicates"].values())


def deliveries(envelopes) -> int:
    """How many task deliveries republishing these envelopes causes (one per subscribed domain)."""
    from consumers.registry import subscriptions

    SUBSCRIPTIONS = subscriptions("choreography")
    return sum(1 for e in envelopes for subs in SUBSCRIPTIONS.values() if e.type in subs)


def test_redelivering_every_event_changes_nothing(settings, stack, isolated_redis):
    from choreo.ops.workload import AsOwners, publish_orders

    sent = publish_orders(
        settings, ["completed", "declined", "out_of_stock", "undeliverable"], seed=None
    )
    ids = [o for o, _ in sent]
    settled(settings, ids)
    envelopes = all_published(settings, ids)
    assert {e.type for e in envelopes} >= {
        "order.placed",
        "order.completed",
        "order.cancelled",
        "payment.completed",
        "payment.failed",
        "payment.refunded",
        "inventory.reserved",
        "inventory.failed",
        "inventory.released",
        "shipment.created",
        "shipment.failed",
    }
    # Let the notifications of the last orders land before taking the picture.
    wait_for(lambda: _notified(settings, ids), 30, what="notifications")
    before = world(settings)
    publisher = AsOwners(
        settings
    )  # each event again from the service that said it (a relay after a crash)
    expected = deliveries(envelopes)

    # Round 1: Redis knows every key. Round 2: Redis keys gone, only the inbox tables remember.
    for round_ in (1, 2):
        if round_ == 2:
            for key in isolated_redis.scan_iter(f"{settings.redis_prefix}:idem:*"):
                isolated_redis.delete(key)
        start = duplicates_total(isolated_redis, settings)
        for env in envelopes:
            publisher.publish(env)
        wait_for(
            lambda start=start: duplicates_total(isolated_redis, settings) - start >= expected,
            60,
            what=f"{expected} duplicates absorbed in round {round_}",
        )
        assert world(settings) == before
    publisher.close()


def _notified(settings, ids):
    from choreo.infra.db import engine_for
    from consumers.notification.tables import Notification

    with Session(engine_for(settings, "notification")) as s:
        return s.exec(
            select(func.count()).select_from(Notification).where(Notification.order_id.in_(ids))
        ).one() == len(ids)


def _dlq_reasons(settings, domain):
    from choreo.messaging.admin import BrokerAdmin

    with BrokerAdmin(settings) as admin:
        return {d.event_id: d for d in admin.peek(domain, 200)}


def test_a_foreign_client_can_publish_a_valid_event(settings, stack):
    """The wire format is plain JSON over AMQP: a pika client places an order without Celery."""
    from choreo.messaging.admin import BrokerAdmin
    from choreo.ops.scenarios import make_order

    env = make_order("completed").place_order(f"ord-foreign-{uuid.uuid4().hex[:8]}", "foreign")
    body, headers = celery_message("place_order", [env.to_wire()], env.event_id)
    with BrokerAdmin(settings) as admin:
        admin.publish_raw("place_order", body, headers)
    assert settled(settings, [env.order_id])[env.order_id] == ("COMPLETED", None)


@pytest.mark.parametrize(
    "case", ["not_json", "unknown_type", "schema_invalid", "no_task_header", "wrong_arity"]
)
def test_poison_goes_straight_to_the_dlq_with_its_reason(settings, stack, case):
    from choreo.messaging.admin import BrokerAdmin
    from choreo.ops.scenarios import make_order
    from consumers.order.messages import OrderPlaced
    from models.envelope import make_envelope

    spec = make_order("completed")
    good = make_envelope(
        "order.placed",
        f"ord-poison-{uuid.uuid4().hex[:8]}",
        OrderPlaced(
            order={
                "customer_id": "cust-1",
                "items": spec.items,
                "address": spec.address,
                "amount_cents": 100,
            },
            card_token="tok_visa",
        ),
        source="test",
    ).to_wire()
    task_id = str(uuid.uuid4())
    routing_key, exchange = "order.placed", None
    if case == "not_json":
        _, headers = celery_message("order.placed", [], task_id)
        body = b"{this is not json"
    elif case == "unknown_type":
        body, headers = celery_message("payment.exploded", [good], task_id)
        routing_key, exchange = f"{settings.namespace}.payment", ""  # straight to the payment queue
    elif case == "schema_invalid":
        good["payload"]["order"]["items"][0]["qty"] = 0
        body, headers = celery_message("order.placed", [good], task_id)
    elif case == "no_task_header":
        body, headers = json.dumps(good).encode(), {}
    else:
        body, headers = celery_message("order.placed", [good, "extra"], task_id)
    # As the service that owns the type (a buggy one: the broker lets it say its own types), or
    # straight into the queue as the bootstrap user (no service may).
    with BrokerAdmin(settings, service="order" if exchange is None else None) as admin:
        admin.publish_raw(routing_key, body, headers, exchange=exchange)

    expected = {
        "not_json": "poison: body is not valid",
        "unknown_type": "poison: unknown message type",
        "schema_invalid": "poison: schema",
        "no_task_header": "poison: not a choreo message",
        "wrong_arity": "poison: expected exactly one positional argument",
    }[case]

    def landed():
        letters = _dlq_reasons(settings, "payment")
        if case == "no_task_header":
            return [
                d
                for d in letters.values()
                if d.reason.startswith(expected) and good["event_id"] in d.body
            ]
        return [letters[task_id]] if task_id in letters else None

    letter = wait_for(landed, 30, what=f"{case} in payment DLQ")[0]
    assert letter.reason.startswith(expected), letter.reason
    assert letter.headers["x-choreo-attempts"] == 1  # no retries for poison
    # ...and the worker is still serving.
    from choreo.ops.workload import publish_orders

    ids = [o for o, _ in publish_orders(settings, ["completed"], seed=None)]
    assert settled(settings, ids)[ids[0]] == ("COMPLETED", None)


def test_replay_moves_a_dead_letter_back_and_it_runs_again(settings, stack):
    """A dead letter replayed after its cause is fixed completes the saga."""
    from choreo.infra.db import engine_for
    from choreo.messaging.admin import BrokerAdmin
    from choreo.ops.workload import publish_orders
    from consumers.payment.tables import Refund

    ids = [o for o, _ in publish_orders(settings, ["needs_attention"], seed=None)]
    assert settled(settings, ids)[ids[0]] == ("NEEDS_ATTENTION", "compensation_failed")
    letter = wait_for(
        lambda: [d for d in _dlq_reasons(settings, "payment").values() if d.order_id == ids[0]],
        30,
        what="dead letter",
    )[0]
    with BrokerAdmin(settings) as admin:
        replayed = admin.replay("payment", letter.event_id)
    assert [r.event_id for r in replayed] == [letter.event_id]
    assert letter.event_id not in _dlq_reasons(settings, "payment")
    # The sandbox still refuses this card's refunds: it comes back after its retries, once more.
    wait_for(
        lambda: letter.event_id in _dlq_reasons(settings, "payment"),
        30,
        what="dead letter to come back",
    )
    with Session(engine_for(settings, "payment")) as s:
        assert s.get(Refund, ids[0]) is None
