"""A domain's own copies (retry rungs, dead letters) are believed only where its record proves
them (choreo.app.copies): through the real adapter and a real SQLite database, the broker faked."""

from __future__ import annotations

import dataclasses

import pytest

import choreo.app.copies
import choreo.app.uow
from config.catalog import CARD_OK
from consumers.payment.tables import Charge, Refund
from models.tables import CopyRecord
from tasks.adapter import Delivery
from tests.unit.handler_harness import Harness
from tests.unit.test_handlers import snapshot


@pytest.fixture
def h(tmp_path):
    with Harness("payment", tmp_path) as harness:
        yield harness


def _charged_then_refund_fails(h: Harness, order_id: str = "ord-1"):
    """An order charged, then a shipment.failed whose refund fails: its first retry copy."""
    h.deliver("order.placed", order_id, {"order": snapshot(("SKU-RED", 1)), "card_token": CARD_OK})
    h.gateway.refunds_fail = True
    refund = h.envelope("shipment.failed", order_id, {"reason": "address_undeliverable"})
    [out] = h.deliver_batch([refund])
    assert out.outcome.kind == "retry"
    [copy] = h.burst.sent
    return refund, copy


def test_a_retry_copy_is_recorded_and_believed_when_it_comes_back(h):
    refund, copy = _charged_then_refund_fails(h)
    assert copy["headers"]["x-choreo-sender"] == "shipment"
    [record] = h.rows(CopyRecord)
    assert (record.event_id, record.sender, record.kind, record.attempt) == (
        refund.event_id,
        "shipment",
        "retry",
        1,
    )

    [again] = h.deliver_batch([h.returned(copy)])  # still failing: the next rung, the same proof
    assert again.outcome.kind == "retry" and h.burst.sent[-1]["headers"]["choreo_attempt"] == 2
    assert len(h.rows(CopyRecord)) == 1  # one record proves the original, whichever rung it is on
    h.gateway.refunds_fail = False
    [done] = h.deliver_batch([h.returned(h.burst.sent[-1])])
    assert done.outcome.kind == "processed" and done.types == ["payment.refunded"]
    assert [r.order_id for r in h.rows(Refund)] == ["ord-1"]


@pytest.mark.parametrize("replayed", [False, True])
def test_a_copy_no_record_proves_is_refused_whatever_it_claims(h, replayed):
    """The issue's attack: an order.placed on a rung (or the dead-letter key, then replayed),
    naming the order service, published by whoever holds the payment user's password."""
    env = h.envelope(
        "order.placed", "ord-forged", {"order": snapshot(("SKU-BLUE", 3)), "card_token": CARD_OK}
    )
    forged = Delivery(
        env.type,
        [env.to_wire()],
        {},
        env.event_id,
        attempt=0 if replayed else 1,
        sender=None,
        claim="order",
    )
    [out] = h.deliver_batch([forged])
    assert out.outcome.kind == "poison" and out.types == []
    assert (
        "unauthorized: a copy naming sender 'order' that this service has no record of making"
        in out.outcome.detail
    )
    assert h.rows(Charge) == [] and h.gateway.moved("ord-forged")["charge"] == 0
    [letter] = h.burst.sent
    assert letter["headers"]["x-choreo-sender"] == "-"  # its dead letter claims nobody
    assert h.rows(CopyRecord) == []


def test_a_recorded_copy_with_another_body_or_another_sender_is_refused(h):
    refund, copy = _charged_then_refund_fails(h)
    h.gateway.refunds_fail = False
    body = dataclasses.replace(
        h.returned(copy), args=[{**copy["args"][0], "order_id": "ord-other"}]
    )
    sender = dataclasses.replace(h.returned(copy), claim="inventory")
    outs = h.deliver_batch([body, sender])
    assert [o.outcome.kind for o in outs] == ["poison", "poison"]
    assert all("unauthorized" in o.outcome.detail for o in outs)
    assert h.rows(Refund) == []


def test_a_dead_letter_replayed_is_believed_by_its_record(h):
    h.deliver("order.placed", "ord-1", {"order": snapshot(("SKU-RED", 1)), "card_token": CARD_OK})
    h.gateway.refunds_fail = True
    refund = h.envelope("shipment.failed", "ord-1", {"reason": "address_undeliverable"})
    [out] = h.deliver_batch([refund], attempt=h.settings.retry_max_attempts)
    assert out.outcome.kind == "dead_lettered"
    [letter] = h.burst.sent
    [record] = h.rows(CopyRecord)
    assert (record.kind, record.sender) == ("dead_letter", "shipment")
    h.gateway.refunds_fail = False  # the operator fixed the cause, then replays
    [done] = h.deliver_batch([h.returned(letter, replayed=True)])
    assert done.outcome.kind == "processed" and [r.order_id for r in h.rows(Refund)] == ["ord-1"]


def test_a_failed_transaction_still_records_its_copies_before_they_go_out(h, monkeypatch):
    h.deliver("order.placed", "ord-1", {"order": snapshot(("SKU-RED", 1)), "card_token": CARD_OK})
    monkeypatch.setattr(
        choreo.app.uow.Batch,
        "commit",
        lambda self: (_ for _ in ()).throw(OSError("disk I/O error")),
    )
    refund = h.envelope("shipment.failed", "ord-1", {"reason": "address_undeliverable"})
    [out] = h.deliver_batch([refund])
    assert out.outcome.kind == "retry" and "disk I/O error" in out.outcome.detail
    [copy] = h.burst.sent
    [record] = h.rows(CopyRecord)  # written on its own, before the copy was published
    assert record.event_id == refund.event_id and copy["headers"]["x-choreo-sender"] == "shipment"


def test_with_the_database_down_no_copy_goes_out_and_the_delivery_goes_back(h, monkeypatch):
    h.deliver("order.placed", "ord-1", {"order": snapshot(("SKU-RED", 1)), "card_token": CARD_OK})
    refund, copy = _charged_then_refund_fails(h, "ord-2")
    sent = len(h.burst.sent)
    down = OSError("database is down")
    monkeypatch.setattr(choreo.app.uow.Batch, "commit", lambda self: (_ for _ in ()).throw(down))
    monkeypatch.setattr(
        choreo.app.copies, "record_now", lambda engine, made: (_ for _ in ()).throw(down)
    )
    fresh = h.envelope("shipment.failed", "ord-1", {"reason": "address_undeliverable"})
    [out] = h.deliver_batch([fresh])
    assert out.outcome.kind == "requeue" and "database is down" in out.outcome.detail
    # A copy coming back cannot be proven without the database either: it goes back, undecided.
    monkeypatch.setattr(
        choreo.app.copies, "proven", lambda engine, wanted: (_ for _ in ()).throw(down)
    )
    [back] = h.deliver_batch([h.returned(copy)])
    assert (
        back.outcome.kind == "requeue"
        and "could not check the copy's record" in back.outcome.detail
    )
    assert len(h.burst.sent) == sent  # nothing published for either
