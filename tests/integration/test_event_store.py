"""The order event store: optimistic concurrency on (order_id, version), upcasting on read."""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings(settings, tmp_path_factory):
    """Own databases: these tests write the event store by hand, so no view would match it."""
    from choreo.app.bootstrap import prepare

    s = settings.model_copy(
        update={
            "data_dir": tmp_path_factory.mktemp("event-store"),
            "database_prefix": f"{settings.database_prefix}_es",
        }
    )
    prepare(s, ["order"])
    return s


def _place(settings, order_id):
    from choreo.app.uow import Batch
    from choreo.infra.db import engine_for
    from consumers.order import rules as domain
    from consumers.order.eventstore import append, load

    with Batch(engine_for(settings, "order"), source="test") as batch:
        with batch.message(None) as uow:
            append(
                uow,
                load(uow.session, order_id),
                domain.place(
                    load(uow.session, order_id),
                    "cust-1",
                    [{"sku": "SKU-RED", "qty": 1}],
                    "1 Main Street",
                    "tok_visa",
                    {"SKU-RED": 100},
                ),
            )
        batch.commit()


def test_two_writers_cannot_both_append_the_same_version(settings):
    from choreo.infra.db import engine_for
    from consumers.order.tables import OrderEvent

    order_id = f"ord-occ-{uuid.uuid4().hex[:8]}"
    _place(settings, order_id)
    engine = engine_for(settings, "order")
    results: dict[str, str] = {}
    barrier = threading.Barrier(2)

    def writer(name):
        barrier.wait()
        with Session(engine) as s:
            s.add(OrderEvent(order_id=order_id, version=2, type="StockReserved", data={"by": name}))
            try:
                s.commit()
                results[name] = "won"
            except IntegrityError:
                s.rollback()
                results[name] = "conflict"

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results.values()) == ["conflict", "won"]
    with Session(engine) as s:
        assert [
            e.version for e in s.exec(select(OrderEvent).where(OrderEvent.order_id == order_id))
        ] == [1, 2]


def test_concurrent_facts_for_one_order_are_all_recorded_in_order(settings):
    """The adapter's reload-and-retry: two facts processed at once, by two workers' batches,
    both land, versions contiguous (on PostgreSQL the loser's savepoint rolls back and reloads)."""
    import dataclasses

    from choreo.messaging.publisher import ConfirmedBurst
    from consumers.inventory.messages import InventoryReserved
    from consumers.order.eventstore import load
    from consumers.payment.messages import PaymentCompleted
    from models.envelope import make_envelope
    from tasks.adapter import Delivery, process_batch
    from tasks.app import make_app
    from tasks.runtime import runtime

    order_id = f"ord-occ-{uuid.uuid4().hex[:8]}"
    _place(settings, order_id)
    snap = {
        "customer_id": "cust-1",
        "items": [{"sku": "SKU-RED", "qty": 1, "unit_price_cents": 100}],
        "address": "1 Main Street",
        "amount_cents": 100,
    }
    facts = [
        make_envelope(
            "payment.completed",
            order_id,
            PaymentCompleted(charge_id="c1", amount_cents=100, order=snap),
            source="test",
        ),
        make_envelope(
            "inventory.reserved",
            order_id,
            InventoryReserved(reservation_id="r1", order=snap),
            source="test",
        ),
    ]
    app = make_app("order", settings)
    rt = runtime(app)
    outcomes, errors = [], []
    barrier = threading.Barrier(len(facts))

    def run(env):
        mine = dataclasses.replace(rt, burst=ConfirmedBurst(app, 10))  # a worker each
        try:
            barrier.wait()
            outcomes.extend(
                process_batch(
                    mine,
                    [
                        Delivery(
                            env.type,
                            [env.to_wire()],
                            {},
                            env.event_id,
                            sender=env.type.split(".")[0],
                        )
                    ],
                )
            )
        except Exception as exc:  # surfaced below, with the thread's failure
            errors.append(exc)
        finally:
            mine.burst.close()

    threads = [threading.Thread(target=run, args=(f,)) for f in facts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and [o.kind for o in outcomes] == ["processed", "processed"]
    with Session(rt.engine) as s:
        order = load(s, order_id)
    assert order.version == 3 and order.state == "RESERVED"


def test_an_old_event_version_is_upcast_on_read(settings):
    from choreo.infra.db import engine_for
    from consumers.order.eventstore import load
    from consumers.order.tables import OrderEvent

    order_id = f"ord-v1-{uuid.uuid4().hex[:8]}"
    engine = engine_for(settings, "order")
    with Session(engine) as s:
        s.add(
            OrderEvent(
                order_id=order_id,
                version=1,
                type="OrderPlaced",
                schema_version=1,
                data={
                    "customer_id": "cust-1",
                    "sku": "SKU-RED",
                    "qty": 2,
                    "unit_price_cents": 150,
                    "address": "1 Main Street",
                    "card_token": "tok_visa",
                    "amount_cents": 300,
                },
            )
        )
        s.commit()
        order = load(s, order_id)
    assert order.items == ((("qty", 2), ("sku", "SKU-RED"), ("unit_price_cents", 150)),)
    assert order.state == "PLACED" and order.amount_cents == 300
