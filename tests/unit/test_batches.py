"""A batch through the real adapter and a real SQLite transaction: each message's outcome is its
own."""

from __future__ import annotations

import pytest

from config.catalog import CARD_OK
from consumers.payment.tables import Charge, PaymentDecision, Refund
from models.tables import DeadLetter, Inbox
from tasks.adapter import Delivery
from tests.unit.handler_harness import Harness
from tests.unit.test_handlers import snapshot


@pytest.fixture
def h(tmp_path):
    with Harness("payment", tmp_path) as harness:
        yield harness


def placed(h: Harness, order_id: str, event_id: str | None = None):
    return h.envelope(
        "order.placed",
        order_id,
        {"order": snapshot(("SKU-RED", 1)), "card_token": CARD_OK},
        event_id,
    )


def test_a_batch_commits_every_message_and_publishes_what_each_caused(h):
    results = h.deliver_batch([placed(h, f"ord-{n}") for n in range(5)])
    assert [r.outcome.kind for r in results] == ["processed"] * 5
    assert [r.types for r in results] == [["payment.completed"]] * 5
    assert sorted(c.order_id for c in h.rows(Charge)) == [f"ord-{n}" for n in range(5)]
    assert len(h.rows(Inbox)) == 5


def test_a_failing_message_rolls_back_alone_and_climbs_the_retry_ladder(h):
    h.deliver("order.placed", "ord-2", {"order": snapshot(("SKU-RED", 1)), "card_token": CARD_OK})
    h.gateway.refunds_fail = (
        True  # the refund in the middle of the batch raises after the handler wrote
    )
    refund = h.envelope("shipment.failed", "ord-2", {"reason": "address_undeliverable"})
    first, middle, last = h.deliver_batch([placed(h, "ord-1"), refund, placed(h, "ord-3")])

    assert (first.outcome.kind, middle.outcome.kind, last.outcome.kind) == (
        "processed",
        "retry",
        "processed",
    )
    assert first.types == last.types == ["payment.completed"] and middle == []
    assert sorted(c.order_id for c in h.rows(Charge)) == ["ord-1", "ord-2", "ord-3"]
    assert h.rows(Refund) == []  # rolled back to its savepoint: no refund row, no inbox mark
    assert refund.event_id not in {i.event_id for i in h.rows(Inbox)}
    [copy] = h.burst.sent
    assert copy["task_id"] == refund.event_id and copy["headers"]["choreo_attempt"] == 1


def test_the_same_event_twice_in_one_batch_is_applied_once(h):
    env = placed(h, "ord-1", event_id="ev-twice")
    first, second = h.deliver_batch([env, env])
    assert (first.outcome.kind, second.outcome.kind) == ("processed", "duplicate")
    assert len(h.rows(Charge)) == 1 and len(h.rows(PaymentDecision)) == 1
    assert h.gateway.moved("ord-1")["charge"] == snapshot(("SKU-RED", 1))["amount_cents"]


def test_poison_in_a_batch_goes_to_the_dlq_at_once_and_the_rest_is_processed(h):
    poison = Delivery("order.placed", [{"not": "an envelope"}], {}, "bad-1", sender="order")
    good, bad = h.deliver_batch([placed(h, "ord-1"), poison])
    assert (good.outcome.kind, bad.outcome.kind) == ("processed", "poison")
    [copy] = h.burst.sent
    assert copy["exchange"] == h.rt.names.dlx and copy["headers"]["x-choreo-reason"].startswith(
        "poison: "
    )
    assert copy["headers"]["x-choreo-attempts"] == 1
    [record] = h.rows(DeadLetter)
    assert record.event_id == "bad-1" and record.reason.startswith("poison: ")


def test_a_failure_past_the_last_rung_is_dead_lettered_and_the_order_told(h):
    h.deliver_envelope(placed(h, "ord-1"))
    h.gateway.refunds_fail = True
    refund = h.envelope("shipment.failed", "ord-1", {"reason": "address_undeliverable"})
    [out] = h.deliver_batch([refund], attempt=h.settings.retry_max_attempts)
    assert out.outcome.kind == "dead_lettered" and "failed after 4 attempts" in out.outcome.detail
    assert out.types == ["saga.dead_lettered"] and out[0].payload["compensation"] is True
    [record] = h.rows(DeadLetter)
    assert record.event_id == refund.event_id and record.compensation


def test_a_message_whose_publish_is_not_confirmed_is_requeued_and_its_events_left_for_the_relay(h):
    from choreo.app.outbox import count_unsent

    h.burst.refuse = {1}  # the broker nacks the second message's event
    first, second = h.deliver_batch([placed(h, "ord-1"), placed(h, "ord-2")])
    assert (first.outcome.kind, second.outcome.kind) == ("processed", "requeue")
    assert count_unsent(h.engine) == 1  # committed, not marked sent: the relay publishes it
    assert h.idempotency.seen("payment", [second_id(h, "ord-2")]) == [
        False
    ]  # so the redelivery reaches the inbox
    again = h.deliver_batch([placed(h, "ord-2", event_id=second_id(h, "ord-2"))])[0]
    assert again.outcome.kind == "duplicate" and len(h.rows(Charge)) == 2


def second_id(h: Harness, order_id: str) -> str:
    return next(i.event_id for i in h.rows(Inbox) if i.order_id == order_id)


def test_what_a_failing_handler_wrote_before_it_raised_is_rolled_back_and_the_batch_commits(
    h, monkeypatch
):
    import tasks.adapter
    from consumers.base import Subscription
    from consumers.payment.messages import PaymentRefunded
    from consumers.registry import subscriptions
    from consumers.shipment.messages import ShipmentFailed

    def writes_then_raises(msg, uow, deps):
        uow.session.add(
            Refund(order_id=msg.order_id, refund_id="re_half", amount_cents=1, reason="half done")
        )
        uow.session.flush()  # on disk in the transaction: only the savepoint can take it back
        uow.emit(PaymentRefunded(refund_id="re_half", amount_cents=1, reason="half done"))
        raise RuntimeError("the handler failed after writing")

    table = dict(
        subscriptions("choreography")["payment"],
        **{ShipmentFailed.routing_key: Subscription(writes_then_raises)},
    )
    monkeypatch.setattr(tasks.adapter, "subscriptions", lambda mode: {"payment": table})
    failing = h.envelope("shipment.failed", "ord-2", {"reason": "address_undeliverable"})
    first, middle = h.deliver_batch([placed(h, "ord-1"), failing])

    assert (first.outcome.kind, middle.outcome.kind) == ("processed", "retry")
    assert h.rows(Refund) == [] and middle == []  # its row and its staged event are gone
    assert [c.order_id for c in h.rows(Charge)] == ["ord-1"]
    assert {i.event_id for i in h.rows(Inbox)} == {first[0].causation_id}


@pytest.mark.parametrize("sender", ["operator", "inventory", None])
def test_a_fact_from_a_sender_that_does_not_own_it_changes_nothing_and_tells_no_one(h, sender):
    env = placed(h, "ord-forged")
    ok, forged = h.deliver_batch(
        [placed(h, "ord-1"), Delivery(env.type, [env.to_wire()], {}, env.event_id, sender=sender)]
    )
    assert (ok.outcome.kind, forged.outcome.kind) == ("processed", "poison")
    assert (
        "unauthorized" in forged.outcome.detail and forged.types == []
    )  # no saga.dead_lettered notice
    assert {c.order_id for c in h.rows(Charge)} == {"ord-1"} and h.gateway.moved("ord-forged")[
        "charge"
    ] == 0
    [copy] = [m for m in h.burst.sent if m["task_id"] == env.event_id]
    assert copy["exchange"] == h.rt.names.dlx and copy["headers"]["x-choreo-sender"] == (
        sender or "-"
    )
    [record] = h.rows(DeadLetter)
    assert record.event_id == env.event_id and record.order_id is None  # nothing of it believed


@pytest.mark.parametrize(
    "sender, named, believed",
    [("payment", "payment", True), ("payment", "inventory", False), ("order", "order", True)],
)
def test_a_dead_letter_notice_is_believed_only_about_the_senders_own_dead_letters(
    tmp_path, sender, named, believed
):
    from consumers.order.tables import OrderView

    with Harness("order", tmp_path) as o:
        notice = o.envelope(
            "saga.dead_lettered",
            "ord-1",
            {
                "domain": named,
                "event_type": "order.placed",
                "event_id": "ev-1",
                "reason": "failed",
                "compensation": False,
            },
        )
        [out] = o.deliver_batch(
            [Delivery(notice.type, [notice.to_wire()], {}, notice.event_id, sender=sender)]
        )
        assert (out.outcome.kind != "poison") == believed, out.outcome.detail
        if not believed:
            assert "another domain's dead letter" in out.outcome.detail and o.rows(OrderView) == []
