"""`choreo audit` on a world built directly in the services' databases: clean, then one
violation at a time.

Each test gets its own data folder (a fresh set of SQLite files); the broker side (DLQs)
is the run's vhost, whose dead letters all carry a reason.
"""

from __future__ import annotations

import uuid

import pytest
from sqlmodel import Session, select

pytestmark = pytest.mark.integration

SKU, PRICE = "SKU-RED", 1299


@pytest.fixture
def world(settings, tmp_path):
    """Settings on a fresh data folder, with one clean order of every outcome in it."""
    from choreo.app.bootstrap import prepare
    from choreo.infra import db

    # A fresh folder (SQLite) and a fresh database prefix (PostgreSQL, dropped with the run's).
    prefix = f"{settings.database_prefix}_au{uuid.uuid4().hex[:6]}"
    s = settings.model_copy(update={"data_dir": tmp_path, "database_prefix": prefix})
    prepare(s)
    w = World(s)
    w.completed("ord-completed")
    w.declined("ord-declined")
    w.out_of_stock("ord-oos")
    w.undeliverable("ord-undeliverable")
    w.needs_attention("ord-attention")
    yield w
    # Engines are cached per (pid, database url): close this folder's, keep everyone else's.
    db.dispose_engines(str(tmp_path))
    db.dispose_engines(f"/{prefix}_")


class World:
    """Writes the rows the services would have written for an order of each outcome."""

    def __init__(self, settings) -> None:
        self.settings = settings

    def session(self, service: str) -> Session:
        from choreo.infra.db import engine_for

        return Session(engine_for(self.settings, service))

    def order(
        self, order_id: str, facts: list[tuple[str, dict]], qty: int = 2, price: int = PRICE
    ) -> None:
        """Append the order's events and its projection, exactly as the order service folds them."""
        from choreo.infra.db import connection_of
        from consumers.order import projections, timers
        from consumers.order import rules as domain
        from consumers.order.tables import OrderEvent
        from models.tables import Outbox, utcnow

        item = {"sku": SKU, "qty": qty, "unit_price_cents": price}
        placed = (
            "OrderPlaced",
            {
                "customer_id": "cust-1",
                "items": [item],
                "address": "1 Main Street",
                "card_token": "tok_visa",
                "amount_cents": qty * price,
            },
        )
        events = [domain.event_of(t, d) for t, d in [placed, *facts]]
        with self.session("order") as s:
            rows = [
                OrderEvent(
                    order_id=order_id,
                    version=v,
                    type=ev.type,
                    schema_version=ev.schema_version,
                    data=ev.data,
                )
                for v, ev in enumerate(events, 1)
            ]
            s.add_all(rows)
            s.flush()  # positions assigned, as the live projector sees them
            folded = domain.fold(order_id, events)
            projections.project(s, folded, rows)
            # its durable timer, while it waits (as the order service keeps it)
            timers.schedule(connection_of(s), domain.Order(order_id), folded, utcnow())
            s.add(
                Outbox(
                    event_id=str(uuid.uuid4()),
                    type="order.placed",
                    order_id=order_id,
                    body="{}",
                    sent_at=utcnow(),
                )
            )
            s.commit()

    def charge(self, order_id: str, refund: bool = False, amount: int = 2 * PRICE) -> None:
        from consumers.payment.tables import Charge, Refund
        from models.tables import GatewayLedger

        with self.session("gateway") as s:
            s.add(
                GatewayLedger(
                    idempotency_key=f"charge:{order_id}",
                    kind="charge",
                    order_id=order_id,
                    amount_cents=amount,
                    reference=f"ch_{order_id}",
                )
            )
            if refund:
                s.add(
                    GatewayLedger(
                        idempotency_key=f"refund:{order_id}",
                        kind="refund",
                        order_id=order_id,
                        amount_cents=amount,
                        reference=f"re_{order_id}",
                    )
                )
            s.commit()
        with self.session("payment") as s:
            s.add(
                Charge(
                    order_id=order_id,
                    charge_id=f"ch_{order_id}",
                    amount_cents=amount,
                    card_token="tok_visa",
                )
            )
            if refund:
                s.add(
                    Refund(
                        order_id=order_id,
                        refund_id=f"re_{order_id}",
                        amount_cents=amount,
                        reason="out_of_stock",
                    )
                )
            s.commit()

    def reserve(self, order_id: str, released: bool = False, qty: int = 2) -> None:
        from consumers.inventory.tables import Reservation, Stock

        with self.session("inventory") as s:
            s.add(
                Reservation(
                    order_id=order_id,
                    reservation_id=f"r-{order_id}",
                    items=[{"sku": SKU, "qty": qty}],
                    status="released" if released else "reserved",
                )
            )
            if not released:
                stock = s.get(Stock, SKU)
                stock.available, stock.reserved = stock.available - qty, stock.reserved + qty
                s.add(stock)
            s.commit()

    def ship(self, order_id: str, created: bool = True) -> None:
        from consumers.shipment.tables import Shipment

        with self.session("shipment") as s:
            s.add(
                Shipment(
                    order_id=order_id,
                    status="created" if created else "failed",
                    shipment_id=f"s-{order_id}" if created else None,
                )
            )
            s.commit()

    def notify(self, order_id: str, kind: str) -> None:
        from consumers.notification.tables import Notification

        with self.session("notification") as s:
            s.add(Notification(order_id=order_id, kind=kind, customer_id="cust-1", body="hello"))
            s.commit()

    # --- one order of each outcome ------------------------------------------------------

    def completed(self, order_id: str) -> None:
        self.order(
            order_id,
            [
                ("PaymentCaptured", {"charge_id": "c", "amount_cents": 2 * PRICE}),
                ("StockReserved", {"reservation_id": "r"}),
                ("ShipmentDispatched", {"shipment_id": "s"}),
                ("OrderCompleted", {}),
            ],
        )
        self.charge(order_id)
        self.reserve(order_id)
        self.ship(order_id)
        self.notify(order_id, "completed")

    def declined(self, order_id: str) -> None:
        self.order(
            order_id,
            [
                ("PaymentDeclined", {"reason": "payment_declined", "code": "card_declined"}),
                ("OrderCancelled", {"reason": "payment_declined"}),
            ],
        )
        self.notify(order_id, "cancelled")

    def out_of_stock(self, order_id: str) -> None:
        self.order(
            order_id,
            [
                ("PaymentCaptured", {"charge_id": "c", "amount_cents": 2 * PRICE}),
                ("StockUnavailable", {"reason": "out_of_stock", "skus": [SKU]}),
                ("PaymentRefunded", {"amount_cents": 2 * PRICE, "reason": "out_of_stock"}),
                ("OrderCancelled", {"reason": "out_of_stock"}),
            ],
        )
        self.charge(order_id, refund=True)
        self.notify(order_id, "cancelled")

    def undeliverable(self, order_id: str) -> None:
        self.order(
            order_id,
            [
                ("PaymentCaptured", {"charge_id": "c", "amount_cents": 2 * PRICE}),
                ("StockReserved", {"reservation_id": "r"}),
                ("ShipmentFailed", {"reason": "address_undeliverable"}),
                ("PaymentRefunded", {"amount_cents": 2 * PRICE, "reason": "shipment_failed"}),
                ("OrderCancelled", {"reason": "shipment_failed"}),
            ],
        )
        self.charge(order_id, refund=True)
        self.reserve(order_id, released=True)
        self.ship(order_id, created=False)
        self.notify(order_id, "cancelled")

    def needs_attention(self, order_id: str) -> None:
        self.order(
            order_id,
            [
                ("PaymentCaptured", {"charge_id": "c", "amount_cents": 2 * PRICE}),
                ("StockUnavailable", {"reason": "out_of_stock", "skus": [SKU]}),
                (
                    "AttentionRequired",
                    {
                        "reason": "compensation_failed",
                        "domain": "payment",
                        "event_type": "inventory.failed",
                        "detail": "refund refused",
                    },
                ),
            ],
        )
        self.charge(order_id)
        self.refund_dead_lettered(order_id, "inventory.failed")
        self.notify(order_id, "attention")  # order.needs_attention told the customer

    def refund_dead_lettered(self, order_id: str, cause: str) -> None:
        """The payment service gave up on the refund `cause` asked for (its dead_letters row)."""
        from models.tables import DeadLetter

        with self.session("payment") as s:
            s.add(
                DeadLetter(
                    event_id=str(uuid.uuid4()),
                    type=cause,
                    order_id=order_id,
                    reason="failed after 4 attempts: TransientError('refund refused')",
                    attempts=4,
                    compensation=True,
                )
            )
            s.commit()


def audit(settings) -> dict:
    from choreo.ops.audit import run_audit

    return {c.name: c for c in run_audit(settings)}


def failing(checks: dict) -> dict[str, list[str]]:
    return {name: c.offenders for name, c in checks.items() if not c.passed}


def test_a_clean_world_passes_every_check(world):
    checks = audit(world.settings)
    assert failing(checks) == {}
    assert checks["terminal"].checked == 5
    assert {"name", "passed", "count", "offending", "detail"} <= set(checks["money"].as_dict())


def test_a_double_charge_in_the_ledger_fails_money(world):
    from models.tables import GatewayLedger

    with world.session("gateway") as s:
        s.add(
            GatewayLedger(
                idempotency_key="charge:ord-completed:again",
                kind="charge",
                order_id="ord-completed",
                amount_cents=2 * PRICE,
                reference="ch_again",
            )
        )
        s.commit()
    checks = audit(world.settings)
    assert failing(checks) == {"money": ["ord-completed"]}
    assert "double charge" in checks["money"].problems["ord-completed"]


def test_a_charge_at_a_client_s_price_fails_money_naming_the_catalog_total(world):
    """What a client setting its own price looked like: the charge matched the order, not the
    catalog."""
    world.order(
        "ord-cheap",
        [
            ("PaymentCaptured", {"charge_id": "c", "amount_cents": 2}),
            ("StockReserved", {"reservation_id": "r"}),
            ("ShipmentDispatched", {"shipment_id": "s"}),
            ("OrderCompleted", {}),
        ],
        price=1,
    )
    world.charge("ord-cheap", amount=2)
    world.reserve("ord-cheap")
    world.ship("ord-cheap")
    world.notify("ord-cheap", "completed")
    checks = audit(world.settings)
    assert failing(checks) == {"money": ["ord-cheap"]}
    assert checks["money"].problems["ord-cheap"] == f"charged 2, catalog total {2 * PRICE}"


def test_a_stuck_order_fails_terminal(world):
    world.order("ord-stuck", [("PaymentCaptured", {"charge_id": "c", "amount_cents": 2 * PRICE})])
    world.charge("ord-stuck")
    checks = audit(world.settings)
    assert failing(checks) == {"terminal": ["ord-stuck"]}
    assert checks["terminal"].problems["ord-stuck"] == "stuck in PAID"


def test_needs_attention_without_a_dead_letter_fails_terminal(world):
    from models.tables import DeadLetter

    with world.session("payment") as s:
        for row in s.exec(select(DeadLetter)):
            s.delete(row)
        s.commit()
    assert failing(audit(world.settings)) == {"terminal": ["ord-attention"]}


def test_a_stock_mismatch_fails_stock_naming_the_sku(world):
    from consumers.inventory.tables import Stock

    with world.session("inventory") as s:
        stock = s.get(Stock, SKU)
        stock.available -= 1
        s.add(stock)
        s.commit()
    checks = audit(world.settings)
    assert failing(checks) == {"stock": [SKU]}
    assert "available" in checks["stock"].problems[SKU]


def test_a_cancelled_order_holding_stock_fails_stock_naming_the_order(world):
    from consumers.inventory.tables import Reservation, Stock

    with world.session("inventory") as s:
        r = s.get(Reservation, "ord-undeliverable")
        r.status = "reserved"
        stock = s.get(Stock, SKU)
        stock.available, stock.reserved = stock.available - 2, stock.reserved + 2
        s.add_all([r, stock])
        s.commit()
    assert failing(audit(world.settings)) == {"stock": ["ord-undeliverable"]}


def test_an_unsent_outbox_row_fails_outbox(world):
    from models.tables import Outbox

    with world.session("payment") as s:
        s.add(
            Outbox(
                event_id=str(uuid.uuid4()),
                type="payment.completed",
                order_id="ord-completed",
                body="{}",
            )
        )
        s.commit()
    checks = audit(world.settings)
    assert failing(checks) == {"outbox": ["ord-completed"]}
    assert checks["outbox"].problems["ord-completed"] == "unsent: payment payment.completed"


def test_a_projection_that_differs_from_the_fold_fails_fold(world):
    from consumers.order.tables import OrderView

    with world.session("order") as s:
        view = s.get(OrderView, "ord-declined")
        view.version += 1
        s.add(view)
        s.commit()
    checks = audit(world.settings)
    assert failing(checks) == {"fold": ["ord-declined"]}


def test_a_completed_order_without_notification_fails_notifications(world):
    from consumers.notification.tables import Notification

    with world.session("notification") as s:
        s.delete(s.get(Notification, ("ord-completed", "completed")))
        s.commit()
    checks = audit(world.settings)
    assert failing(checks) == {"shipments_notifications": ["ord-completed"]}


def test_a_notification_of_the_wrong_kind_fails_notifications(world):
    world.notify("ord-completed", "cancelled")
    assert failing(audit(world.settings)) == {"shipments_notifications": ["ord-completed"]}


def test_a_dead_letter_without_reason_fails_dead_letters(world):
    from models.tables import DeadLetter

    with world.session("shipment") as s:
        s.add(
            DeadLetter(
                event_id="ev-1", type="inventory.reserved", order_id="ord-completed", reason=" "
            )
        )
        s.commit()
    assert failing(audit(world.settings)) == {"dead_letters": ["ord-completed"]}


def test_a_dlq_message_without_reason_fails_dead_letters(world):
    """In a namespace of its own, so no other test's DLQ sees the reasonless message."""
    from choreo.messaging.admin import BrokerAdmin
    from tests.helpers import own_namespace

    with own_namespace(world.settings, "audit") as s, BrokerAdmin(s, service="payment") as admin:
        admin.publish_raw(
            "payment",
            b'[[{"order_id": "ord-declined"}], {}, {}]',
            {"task": "x"},
            exchange=f"{s.namespace}.dlx",
        )
        checks = audit(s)
        assert failing(checks) == {"dead_letters": ["ord-declined"]}


def test_an_unreachable_broker_fails_dead_letters_with_the_error(world):
    s = world.settings.model_copy(update={"broker_url": "amqp://guest:guest@127.0.0.1:1//"})
    checks = audit(s)
    assert failing(checks) == {"dead_letters": []}
    assert "could not check" in checks["dead_letters"].detail


def test_a_late_answer_after_expiry_undone_passes_and_counts_as_late(world):
    from choreo.ops.audit import Snapshot, late_answers

    world.order(
        "ord-late",
        [
            ("DeadlinePassed", {"step": "payment"}),
            ("OrderCancelled", {"reason": "timeout:payment"}),
            ("PaymentCaptured", {"charge_id": "c", "amount_cents": 2 * PRICE}),
            ("PaymentRefunded", {"amount_cents": 2 * PRICE, "reason": "timeout:payment"}),
        ],
    )
    world.charge("ord-late", refund=True)
    world.notify("ord-late", "cancelled")
    assert failing(audit(world.settings)) == {}
    assert late_answers(Snapshot(world.settings).timelines["ord-late"]) == 1


def test_a_completed_order_a_stale_timer_cancelled_fails_deadlines(world):
    world.order(
        "ord-stale",
        [
            ("PaymentCaptured", {"charge_id": "c", "amount_cents": 2 * PRICE}),
            ("StockReserved", {"reservation_id": "r"}),
            ("ShipmentDispatched", {"shipment_id": "s"}),
            ("OrderCompleted", {}),
            ("DeadlinePassed", {"step": "saga"}),
            ("OrderCancelled", {"reason": "timeout:saga"}),
        ],
    )
    world.charge("ord-stale", refund=True)
    world.notify("ord-stale", "cancelled")
    checks = audit(world.settings)
    assert "ord-stale" in failing(checks)["deadlines"]
    assert "ended 2 times" in checks["deadlines"].problems["ord-stale"]


def test_a_waiting_order_without_its_timer_fails_deadlines(world):
    from consumers.order.tables import OrderDeadline

    world.order("ord-wait", [])
    with world.session("order") as s:
        s.delete(s.get(OrderDeadline, "ord-wait"))
        s.commit()
    checks = audit(world.settings)
    assert failing(checks) == {"terminal": ["ord-wait"], "deadlines": ["ord-wait"]}
    assert checks["deadlines"].problems["ord-wait"] == "PLACED (waiting on payment) without a timer"


def world_state(world, order_id: str) -> tuple[str, str | None]:
    from choreo.app.queries import order_states

    return order_states(world.settings, [order_id])[order_id]


def test_an_expired_order_whose_refund_failed_needs_attention_told_it_was_cancelled(world):
    world.order(
        "ord-reopened",
        [
            ("PaymentCaptured", {"charge_id": "c", "amount_cents": 2 * PRICE}),
            ("DeadlinePassed", {"step": "inventory"}),
            ("OrderCancelled", {"reason": "timeout:inventory"}),
            (
                "AttentionRequired",
                {
                    "reason": "compensation_failed",
                    "domain": "payment",
                    "event_type": "order.expired",
                    "detail": "refund refused",
                },
            ),
        ],
    )
    world.charge("ord-reopened")
    world.notify("ord-reopened", "cancelled")  # told when it was cancelled, before the failure
    world.notify("ord-reopened", "attention")  # and told again when it was reopened
    world.refund_dead_lettered("ord-reopened", "order.expired")
    checks = audit(world.settings)
    assert failing(checks) == {}
    assert world_state(world, "ord-reopened") == ("NEEDS_ATTENTION", "compensation_failed")


def test_an_order_that_needs_attention_must_have_told_the_customer(world):
    world.needs_attention("ord-untold")
    with world.session("notification") as s:
        from consumers.notification.tables import Notification

        s.delete(s.get(Notification, ("ord-untold", "attention")))
        s.commit()
    assert failing(audit(world.settings)) == {"shipments_notifications": ["ord-untold"]}


def test_an_attention_notice_is_kept_by_an_order_settled_after_all_and_refused_to_others(world):
    # Needed an operator, then the refund was done after all: both notices are right.
    world.order(
        "ord-settled",
        [
            ("PaymentCaptured", {"charge_id": "c", "amount_cents": 2 * PRICE}),
            ("StockUnavailable", {"reason": "out_of_stock", "skus": [SKU]}),
            (
                "AttentionRequired",
                {
                    "reason": "compensation_failed",
                    "domain": "payment",
                    "event_type": "inventory.failed",
                    "detail": "refund refused",
                },
            ),
            ("PaymentRefunded", {"amount_cents": 2 * PRICE, "reason": "out_of_stock"}),
            ("OrderCancelled", {"reason": "out_of_stock"}),
        ],
    )
    world.charge("ord-settled", refund=True)
    world.notify("ord-settled", "attention")
    world.notify("ord-settled", "cancelled")
    # A completed order that never needed an operator was told it did: wrong.
    world.notify("ord-completed", "attention")
    assert failing(audit(world.settings)) == {"shipments_notifications": ["ord-completed"]}
