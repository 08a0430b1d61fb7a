"""Every saga path end to end through real worker processes, RabbitMQ and Redis."""

from __future__ import annotations

import pytest
from sqlmodel import Session, select

from config.settings import DOMAINS
from tests.helpers import settled

pytestmark = pytest.mark.e2e


def _facts(settings, order_id):
    from choreo.infra.db import engine_for
    from consumers.inventory.tables import Reservation
    from consumers.notification.tables import Notification
    from consumers.payment.tables import Charge, Refund
    from consumers.shipment.tables import Shipment
    from models.tables import GatewayLedger

    with Session(engine_for(settings, "payment")) as s:
        charge, refund = s.get(Charge, order_id), s.get(Refund, order_id)
    with Session(engine_for(settings, "gateway")) as s:
        ledger = s.exec(select(GatewayLedger).where(GatewayLedger.order_id == order_id)).all()
    with Session(engine_for(settings, "inventory")) as s:
        reservation = s.get(Reservation, order_id)
    with Session(engine_for(settings, "shipment")) as s:
        shipment = s.get(Shipment, order_id)
    with Session(engine_for(settings, "notification")) as s:
        notes = s.exec(select(Notification).where(Notification.order_id == order_id)).all()
    return charge, refund, ledger, reservation, shipment, notes


@pytest.fixture(scope="module")
def one_of_each(settings, stack):
    from choreo.ops.scenarios import SCENARIOS
    from choreo.ops.workload import publish_orders

    sent = publish_orders(settings, list(SCENARIOS) * 2, seed=None)
    states = settled(settings, [o for o, _ in sent])
    return sent, states


def test_no_event_of_these_orders_went_unrouted(settings, one_of_each):
    """Every event a saga publishes has a subscriber in choreography (inventory.released: the
    order)."""
    from choreo.messaging.admin import BrokerAdmin

    sent, _ = one_of_each
    ids = {o for o, _ in sent}
    with BrokerAdmin(settings) as admin:
        unrouted = [
            (d.type, d.order_id) for d in admin.peek("unrouted", 10_000) if d.order_id in ids
        ]
    assert unrouted == []


def _ids(sent, scenario):
    return [o for o, s in sent if s == scenario]


def test_every_order_ends_where_its_data_says(one_of_each):
    from choreo.ops.workload import expected_by_scenario

    sent, states = one_of_each
    expected = expected_by_scenario()
    assert {o: states[o] for o, _ in sent} == {o: expected[s] for o, s in sent}


def test_completed_path_charges_once_reserves_ships_and_notifies(settings, one_of_each):
    sent, _ = one_of_each
    for order_id in _ids(sent, "completed") + _ids(sent, "flaky"):
        charge, refund, ledger, reservation, shipment, notes = _facts(settings, order_id)
        assert charge is not None and refund is None
        assert [(row.kind, row.amount_cents) for row in ledger] == [("charge", charge.amount_cents)]
        assert reservation.status == "reserved"
        assert shipment.status == "created" and shipment.tracking_code.startswith("TRK-")
        assert [n.kind for n in notes] == ["completed"]
        assert notes[0].email and "@" in notes[0].email  # fetched from the user service over HTTP


def test_declined_card_charges_nothing_and_cancels(settings, one_of_each):
    sent, _ = one_of_each
    for order_id in _ids(sent, "declined"):
        charge, refund, ledger, reservation, shipment, notes = _facts(settings, order_id)
        assert charge is None and refund is None and ledger == []
        assert reservation is None and shipment is None
        assert [n.kind for n in notes] == ["cancelled"]


def test_out_of_stock_refunds_the_charge_by_compensation(settings, one_of_each):
    sent, _ = one_of_each
    for order_id in _ids(sent, "out_of_stock"):
        charge, refund, ledger, reservation, shipment, notes = _facts(settings, order_id)
        assert charge is not None and refund.amount_cents == charge.amount_cents
        assert sorted(row.kind for row in ledger) == ["charge", "refund"]
        assert reservation is None and shipment is None
        assert [n.kind for n in notes] == ["cancelled"]


def test_undeliverable_releases_stock_and_refunds(settings, one_of_each):
    sent, _ = one_of_each
    for order_id in _ids(sent, "undeliverable"):
        charge, refund, ledger, reservation, shipment, notes = _facts(settings, order_id)
        assert refund.amount_cents == charge.amount_cents
        assert reservation.status == "released"
        assert shipment.status == "failed" and shipment.reason == "address_undeliverable"
        assert [n.kind for n in notes] == ["cancelled"]


def test_flaky_gateway_is_retried_through_the_ladder_and_succeeds(settings, one_of_each):
    from choreo.infra.db import engine_for
    from models.tables import DeadLetter, GatewayAttempt

    sent, states = one_of_each
    for order_id in _ids(sent, "flaky"):
        assert states[order_id] == ("COMPLETED", None)
        with Session(engine_for(settings, "gateway")) as s:
            # tok_flaky_2: two transient failures, then the third call charges.
            assert s.get(GatewayAttempt, f"charge:{order_id}").attempts == 3
        with Session(engine_for(settings, "payment")) as s:
            assert s.exec(select(DeadLetter).where(DeadLetter.order_id == order_id)).all() == []


def test_failing_compensation_dead_letters_and_needs_attention(settings, one_of_each):
    from choreo.infra.db import engine_for
    from choreo.messaging.admin import BrokerAdmin
    from models.tables import DeadLetter

    sent, states = one_of_each
    ids = _ids(sent, "needs_attention")
    for order_id in ids:
        assert states[order_id] == ("NEEDS_ATTENTION", "compensation_failed")
        charge, refund, *_ = _facts(settings, order_id)
        assert charge is not None and refund is None  # never a silent success
        with Session(engine_for(settings, "payment")) as s:
            record = s.exec(select(DeadLetter).where(DeadLetter.order_id == order_id)).one()
        assert record.compensation and record.attempts == settings.retry_max_attempts + 1
        assert "refund" in record.reason
    with BrokerAdmin(settings) as admin:
        letters = [d for d in admin.peek("payment", 100) if d.order_id in ids]
    assert sorted(d.order_id for d in letters) == sorted(ids)
    assert all(
        d.reason.startswith("failed after") and d.headers["x-choreo-compensation"] for d in letters
    )


def test_order_timeline_spans_services(settings, one_of_each):
    from choreo.app.queries import order_details

    sent, _ = one_of_each
    details = order_details(settings, _ids(sent, "completed")[0])
    services = {t["service"] for t in details["timeline"]}
    assert services == set(DOMAINS)
    assert all(t["detail"] != "UNSENT" for t in details["timeline"])


def test_projection_equals_the_fold_and_a_rebuild_gives_the_same_rows(settings, one_of_each):
    from choreo.infra.db import engine_for
    from consumers.order import projections
    from consumers.order.eventstore import load
    from consumers.order.tables import OrderView

    sent, _ = one_of_each
    engine = engine_for(settings, "order")
    with Session(engine) as s:
        for order_id, _ in sent:
            order, view = load(s, order_id), s.get(OrderView, order_id)
            assert (order.state, order.reason, order.version) == (
                view.state,
                view.reason,
                view.version,
            )
        live = {v.order_id: projections.row_of(v) for v in s.exec(select(OrderView))}
    assert projections.drift(engine) == []
    assert projections.rebuild(engine) == len(live)
    with Session(engine) as s:
        assert {v.order_id: projections.row_of(v) for v in s.exec(select(OrderView))} == live
