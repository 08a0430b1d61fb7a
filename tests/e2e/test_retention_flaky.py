"""A flaky card whose retries span the cleaner's runs: a stack of its own with a dedup window of
seconds (long enough for the retry ladder, the redelivery horizon and the replay window, as the
set-up requires) and a cleaner every second. Orders keep coming for longer than the window, so the
cleaner removes the first orders' inbox rows, copy records and sent outbox rows while later orders
wait on the retry ladder. Every order is charged exactly once after its two transient failures (the
gateway saw three calls, no more), every retry copy was honoured (no dead letter, no refusal), the
audit passes, and the rows inside the window are all there."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from tests.helpers import scrape, settled, sqlite_pass_only, wait_for

# Once, in the SQLite pass: the cleaner's PostgreSQL deletes (SKIP LOCKED, beside a busy stack) are
# the PostgreSQL pass's test_retention_stack; this one proves the window against the retry ladder.
pytestmark = [pytest.mark.e2e, sqlite_pass_only]

DEDUP_WINDOW = 12.0
FLOW_SECONDS = DEDUP_WINDOW + 6  # orders keep coming after the first ones' rows age out


@pytest.fixture(scope="module")
def short_window(settings, tmp_path_factory):
    from choreo.ops.stack import process_names
    from tests.e2e.conftest import own_stack_settings, start_stack

    s, env = own_stack_settings(
        settings,
        tmp_path_factory.mktemp("retention"),
        "ret",
        # tok_flaky_2 fails twice: retries after 1 s and 2 s (with jitter), over several
        # cleaner runs. The window outlasts ladder (1 + 2 + 2, +20% jitter), horizon and replay.
        retry_max_attempts=3,
        retry_initial_delay=1.0,
        retry_max_delay=2.0,
        redelivery_horizon=2.0,
        dlq_replay_window=2.0,
        dedup_window=DEDUP_WINDOW,
        max_clock_skew=1.0,  # one host: records kept the window and a second
        retention_outbox=5.0,  # sent outbox rows go while their order's retries still wait
        retention_interval=1.0,
        retention_batch=20,
    )
    stack = start_stack(s, env=env, names=[n for n in process_names(s) if n != "flower"])
    yield s
    for name in reversed(process_names(s)):
        stack.stop(name)


def _inbox_rows(s, service: str, order_ids: list[str]) -> int:
    from choreo.infra.db import engine_for
    from models.tables import Inbox, table_of

    t = table_of(Inbox)
    with engine_for(s, service).connect() as conn:
        n = conn.execute(
            select(func.count()).select_from(t).where(t.c.order_id.in_(order_ids))
        ).scalar_one()
        conn.rollback()
    return int(n)


def test_flaky_orders_are_charged_once_while_the_cleaner_removes_older_rows(short_window):
    from sqlmodel import Session, col
    from sqlmodel import select as rows_of

    from choreo.infra.db import engine_for
    from choreo.ops.audit import run_audit
    from choreo.ops.workload import publish_orders
    from consumers.payment.tables import Charge
    from models.tables import DeadLetter, GatewayAttempt, GatewayLedger

    s = short_window
    waves: list[tuple[float, list[str]]] = []
    started = time.monotonic()
    while time.monotonic() - started < FLOW_SECONDS:
        sent = publish_orders(s, ["flaky"] * 3, seed=None)
        waves.append((time.monotonic(), [o for o, _ in sent]))
        wait_for(lambda: time.monotonic() - waves[-1][0] >= 2.0, timeout=5, interval=0.1)
    ours = [o for _, ids in waves for o in ids]
    states = settled(s, ours, timeout=120)
    assert {states[o] for o in ours} == {("COMPLETED", None)}
    # Inside the window, every row is there: an order placed less than a window ago was applied
    # less than a window ago, so the payment service's proof that it applied its order.placed
    # must still be in its inbox.
    now = time.monotonic()
    recent = [o for at, ids in waves if now - at < DEDUP_WINDOW - 1 for o in ids]
    assert recent, "the orders took longer than the dedup window to settle"
    assert _inbox_rows(s, "payment", recent) == len(recent)

    # The first wave's rows aged out and the workers' cleaners removed them, in every service
    # that applied them, while the last waves were still on the retry ladder.
    first = waves[0][1]
    for service in ("order", "payment", "inventory", "shipment", "notification"):
        wait_for(
            lambda service=service: _inbox_rows(s, service, first) == 0,
            timeout=DEDUP_WINDOW + 30,
            what=f"{service}'s cleaner to remove the first wave's inbox rows",
        )
    deleted = {
        dict(labels)["kind"]: v
        for (name, labels), v in scrape(s, "payment").items()
        if name == "choreo_retention_deleted_total"
    }
    assert deleted.get("inbox", 0) > 0 and deleted.get("copies", 0) > 0, deleted
    assert deleted.get("outbox", 0) > 0, deleted

    # Exactly one charge each: two transient failures, then one call that charged. A retry copy
    # refused (its copy record gone) or a delivery applied twice would show here.
    with Session(engine_for(s, "gateway")) as db:
        attempts = {
            a.idempotency_key: a.attempts
            for a in db.exec(
                rows_of(GatewayAttempt).where(
                    col(GatewayAttempt.idempotency_key).in_([f"charge:{o}" for o in ours])
                )
            )
        }
        ledger = [
            r.order_id
            for r in db.exec(rows_of(GatewayLedger).where(col(GatewayLedger.order_id).in_(ours)))
            if r.kind == "charge"
        ]
    assert attempts == {f"charge:{o}": 3 for o in ours}
    assert sorted(ledger) == sorted(ours)
    with Session(engine_for(s, "payment")) as db:
        charges = db.exec(rows_of(Charge).where(col(Charge.order_id).in_(ours))).all()
        dead = db.exec(rows_of(DeadLetter).where(col(DeadLetter.order_id).in_(ours))).all()
    assert len(charges) == len(ours) and dead == []

    checks = run_audit(s)
    assert not [c.name for c in checks if c.error]
    assert all(c.passed for c in checks), {c.name: c.problems for c in checks if not c.passed}
