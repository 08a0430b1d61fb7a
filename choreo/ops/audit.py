"""`choreo audit`: check choreo's guarantees (docs/guarantees.md) over the services' own databases.

Every check reads each service's store in bulk (one query per table, never one per order),
so a run over thousands of orders takes a second or two. Run it on a quiet system: the
stores are read one after another, so a saga that moves during the audit can look broken.
Flower is never a source (flower#415).
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from typing import Any

import pika.exceptions
from rich.table import Table
from sqlalchemy import select as sa_select
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from choreo.infra.db import engine_for
from choreo.messaging.admin import BrokerAdmin
from config.catalog import PRICES_CENTS
from config.settings import Settings
from consumers.inventory.tables import Reservation, Stock
from consumers.notification.tables import Notification
from consumers.order import rules as domain
from consumers.order.rules import SETTLED
from consumers.order.tables import OrderDeadline, OrderEvent, OrderView
from consumers.payment.tables import Charge, Refund
from consumers.shipment.tables import Shipment
from models.tables import DeadLetter, GatewayLedger, Outbox, as_utc, utcnow

MAX_LISTED = 50
NOTIFICATION_KIND = {"COMPLETED": "completed", "CANCELLED": "cancelled"}  # attention: below


@dataclass
class Check:
    """One guarantee's verdict: the offending ids (orders, or SKUs for stock) and why each
    offends."""

    name: str
    title: str
    problems: dict[str, str] = field(default_factory=dict)
    checked: int = 0
    error: str | None = None

    @property
    def passed(self) -> bool:
        return not self.problems and self.error is None

    @property
    def offenders(self) -> list[str]:
        return sorted(self.problems)

    @property
    def detail(self) -> str:
        if self.error:
            return f"could not check: {self.error}"
        if not self.problems:
            return f"{self.checked} checked"
        kinds = Counter(why.split(":")[0] for why in self.problems.values())
        return "; ".join(f"{n} {kind}" for kind, n in kinds.most_common())

    def as_dict(self) -> dict[str, Any]:
        listed = self.offenders[:MAX_LISTED]
        return {
            "name": self.name,
            "title": self.title,
            "passed": self.passed,
            "checked": self.checked,
            "count": len(self.problems),
            "offending": listed,
            "problems": {o: self.problems[o] for o in listed},
            "detail": self.detail,
            "error": self.error,
        }

    def offend(self, who: str, why: str) -> None:
        # One line per offender; a second problem of the same order is appended, not lost.
        self.problems[who] = f"{self.problems[who]}, {why}" if who in self.problems else why


class Snapshot:
    """Each table the checks need, loaded once and in bulk, on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # The services with an outbox and dead letters: the five domains, and the orchestrator
        # when the saga is orchestrated.
        self.domains = settings.domains

    def _rows(self, service: str, query) -> list:
        with Session(engine_for(self.settings, service)) as s:
            return list(s.exec(query))

    @cached_property
    def views(self) -> dict[str, tuple]:
        # SQLAlchemy's own select: sqlmodel's is typed for at most four columns (and builds
        # the same statement).
        rows = self._rows(
            "order",
            sa_select(
                col(OrderView.order_id),
                col(OrderView.state),
                col(OrderView.reason),
                col(OrderView.version),
                col(OrderView.amount_cents),
                col(OrderView.items),
                col(OrderView.updated_at),
            ),
        )
        return {r[0]: tuple(r[1:]) for r in rows}

    def state(self, order_id: str) -> str | None:
        view = self.views.get(order_id)
        return view[0] if view else None

    @cached_property
    def dead_letters(self) -> dict[str, list[tuple]]:
        """domain -> (event_id, order_id, type, reason) of every dead_letters row."""
        return {
            d: self._rows(
                d,
                select(
                    DeadLetter.event_id, DeadLetter.order_id, DeadLetter.type, DeadLetter.reason
                ),
            )
            for d in self.domains
        }

    @cached_property
    def unsent(self) -> dict[str, list[tuple]]:
        return {
            d: self._rows(
                d,
                select(Outbox.order_id, Outbox.type, Outbox.event_id).where(
                    col(Outbox.sent_at).is_(None)
                ),
            )
            for d in self.domains
        }

    @cached_property
    def charges(self) -> dict[str, tuple[int, str]]:
        return {
            o: (a, ref)
            for o, a, ref in self._rows(
                "payment", select(Charge.order_id, Charge.amount_cents, Charge.charge_id)
            )
        }

    @cached_property
    def refunds(self) -> dict[str, tuple[int, str | None]]:
        return {
            o: (a, ref)
            for o, a, ref in self._rows(
                "payment", select(Refund.order_id, Refund.amount_cents, Refund.refund_id)
            )
        }

    @cached_property
    def ledger(self) -> dict[str, dict[str, list[tuple[int, str]]]]:
        """order -> kind -> [(amount, reference)]: the money that actually moved at the gateway."""
        out: dict[str, dict[str, list]] = defaultdict(lambda: {"charge": [], "refund": []})
        for o, kind, amount, ref in self._rows(
            "gateway",
            select(
                GatewayLedger.order_id,
                GatewayLedger.kind,
                GatewayLedger.amount_cents,
                GatewayLedger.reference,
            ),
        ):
            out[o].setdefault(kind, []).append((amount, ref))
        return dict(out)

    @cached_property
    def stock(self) -> list[tuple]:
        return self._rows(
            "inventory", select(Stock.sku, Stock.initial, Stock.available, Stock.reserved)
        )

    @cached_property
    def reservations(self) -> dict[str, tuple[str, list]]:
        return {
            o: (st, items)
            for o, st, items in self._rows(
                "inventory", select(Reservation.order_id, Reservation.status, Reservation.items)
            )
        }

    @cached_property
    def shipments(self) -> dict[str, str]:
        return dict(self._rows("shipment", select(Shipment.order_id, Shipment.status)))

    @cached_property
    def timelines(self) -> dict[str, list[str]]:
        """order -> the types, in order, of its events that tell how its saga ended: the facts a
        deadline races with, the deadline itself and the end, and any call for an operator."""
        rows = self._rows(
            "order",
            select(OrderEvent.order_id, OrderEvent.type)
            .where(col(OrderEvent.type).in_(TIMELINE))
            .order_by(col(OrderEvent.order_id), col(OrderEvent.version)),
        )
        out: dict[str, list[str]] = defaultdict(list)
        for order_id, type_ in rows:
            out[order_id].append(type_)
        return dict(out)

    @cached_property
    def timers(self) -> dict[str, str]:
        """order -> the step its durable timer watches."""
        return dict(self._rows("order", select(OrderDeadline.order_id, OrderDeadline.step)))

    @cached_property
    def notifications(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for o, kind in self._rows("notification", select(Notification.order_id, Notification.kind)):
            out[o].append(kind)
        return dict(out)


# --- the checks ----------------------------------------------------------------------


def check_terminal(snap: Snapshot, c: Check) -> None:
    explained = {o for rows in snap.dead_letters.values() for _, o, _, _ in rows if o}
    # A dead-letter record lives `retention_dead_letters` (docs/operating/retention.md): an order
    # that has needed attention for longer has lost it by design (its own events keep the reason).
    kept_since = utcnow() - timedelta(seconds=snap.settings.retention_dead_letters)
    c.checked = len(snap.views)
    for order_id, (state, reason, *rest) in snap.views.items():
        if state in SETTLED:
            continue
        if state == "NEEDS_ATTENTION":
            if order_id not in explained and as_utc(rest[-1]) >= kept_since:
                c.offend(order_id, f"NEEDS_ATTENTION without a dead letter ({reason})")
        else:
            c.offend(order_id, f"stuck in {state}")


def catalog_total(items: list[dict]) -> int | None:
    """What the seller's catalog says these lines cost (None: a SKU the catalog does not sell)."""
    if any(i.get("sku") not in PRICES_CENTS for i in items):
        return None
    return sum(i["qty"] * PRICES_CENTS[i["sku"]] for i in items)


@dataclass(frozen=True)
class Money:
    """One order's money: the payment service's rows beside what moved at the gateway."""

    charge: tuple[int, str] | None  # charges row: (amount, charge id)
    refund: tuple[int, str | None] | None  # refunds row: (amount, refund id)
    l_charges: list[tuple[int, str]]  # the gateway ledger's charges: [(amount, reference)]
    l_refunds: list[tuple[int, str]]  # and its refunds

    @property
    def refund_moved(self) -> tuple[int, str | None] | None:
        # A refund row of 0 cents records "nothing to give back": no money moved.
        return self.refund if self.refund and self.refund[0] else None

    @property
    def charged(self) -> int:
        return sum(a for a, _ in self.l_charges)

    @property
    def refunded(self) -> int:
        return sum(a for a, _ in self.l_refunds)


def check_money(snap: Snapshot, c: Check) -> None:
    ids = set(snap.views) | set(snap.charges) | set(snap.refunds) | set(snap.ledger)
    c.checked = len(ids)
    for order_id in ids:
        moved = snap.ledger.get(order_id, {"charge": [], "refund": []})
        for kind in set(moved) - {"charge", "refund"}:
            c.offend(order_id, f"unknown ledger entry: {kind}")
        money = Money(
            charge=snap.charges.get(order_id),
            refund=snap.refunds.get(order_id),
            l_charges=moved.get("charge", []),
            l_refunds=moved.get("refund", []),
        )
        _check_ledger(c, order_id, money)
        view = snap.views.get(order_id)
        if view is None:
            c.offend(order_id, "money moved for an unknown order")
            continue
        state, amount, items = view[0], view[3], view[4]
        _check_amount(c, order_id, money, amount, items)
        _check_outcome(c, order_id, money, state)


def _check_ledger(c: Check, order_id: str, m: Money) -> None:
    """The gateway moved money at most once each way, as the payment service's rows say."""
    charge, refund, refund_moved = m.charge, m.refund, m.refund_moved
    l_charges, l_refunds = m.l_charges, m.l_refunds
    if len(l_charges) > 1:
        c.offend(order_id, f"double charge: {len(l_charges)} charges in the gateway ledger")
    if len(l_refunds) > 1:
        c.offend(order_id, f"double refund: {len(l_refunds)} refunds in the gateway ledger")
    if (charge is not None) != bool(l_charges) or (charge and l_charges and charge != l_charges[0]):
        c.offend(order_id, f"ledger disagrees: charges table {charge}, gateway {l_charges}")
    if (refund_moved is not None) != bool(l_refunds) or (
        refund_moved and l_refunds and refund_moved != l_refunds[0]
    ):
        c.offend(order_id, f"ledger disagrees: refunds table {refund}, gateway {l_refunds}")
    if m.refunded and m.refunded != m.charged:
        c.offend(order_id, f"refund {m.refunded} != charge {m.charged}")


def _check_amount(c: Check, order_id: str, m: Money, amount: int, items: list[dict]) -> None:
    """A single charge is the order's amount and what the catalog says its lines cost."""
    charged = m.charged
    if charged and charged != amount and len(m.l_charges) == 1:
        c.offend(order_id, f"charged {charged}, order amount {amount}")
    if charged and len(m.l_charges) == 1:
        total = catalog_total(items)
        if charged != total:
            c.offend(order_id, f"charged {charged}, catalog total {total}")


def _check_outcome(c: Check, order_id: str, m: Money, state: str) -> None:
    """COMPLETED: charged once, never refunded. CANCELLED: never charged, or refunded in full."""
    l_charges, l_refunds = m.l_charges, m.l_refunds
    if state == "COMPLETED" and not (
        len(l_charges) == 1 and m.charge and not l_refunds and not m.refund_moved
    ):
        c.offend(
            order_id,
            f"COMPLETED must be charged once and never refunded: "
            f"{len(l_charges)} charge(s), {len(l_refunds)} refund(s)",
        )
    if state == "CANCELLED":
        never_charged = (
            not l_charges and not l_refunds and m.charge is None and m.refund_moved is None
        )
        charged_and_refunded = len(l_charges) == 1 == len(l_refunds) and m.charged == m.refunded
        if not (never_charged or charged_and_refunded):
            c.offend(
                order_id,
                f"CANCELLED must be uncharged or refunded in full: "
                f"{len(l_charges)} charge(s) {m.charged}, {len(l_refunds)} refund(s) {m.refunded}",
            )


def _owned_by_a_live_order(
    snap: Snapshot, c: Check, order_id: str, what: str, active: bool, active_says: str
) -> None:
    """A side effect (reservation, shipment) must belong to a known order, and a cancelled
    order must not keep it active."""
    state = snap.state(order_id)
    if state is None:
        c.offend(order_id, f"{what} for an unknown order")
    elif state == "CANCELLED" and active:
        c.offend(order_id, f"CANCELLED order {active_says}")


def check_stock(snap: Snapshot, c: Check) -> None:
    held: Counter = Counter()
    for order_id, (status, items) in snap.reservations.items():
        if status == "reserved":
            for item in items:
                held[item["sku"]] += item["qty"]
        _owned_by_a_live_order(
            snap, c, order_id, "reservation", status == "reserved", "still holds its reservation"
        )
    for order_id, (state, *_rest) in snap.views.items():
        if state == "COMPLETED" and snap.reservations.get(order_id, ("none",))[0] != "reserved":
            c.offend(order_id, "COMPLETED without reserved stock")
    for sku, initial, available, reserved in snap.stock:
        if available + reserved != initial:
            c.offend(
                sku,
                f"stock mismatch: available {available} + reserved {reserved} != initial {initial}",
            )
        if available < 0 or reserved < 0:
            c.offend(sku, f"negative stock: available {available}, reserved {reserved}")
        if reserved != held[sku]:
            c.offend(
                sku, f"reserved mismatch: stock says {reserved}, reservations hold {held[sku]}"
            )
    c.checked = len(snap.stock) + len(snap.reservations)


def _notices_wanted(state: str, timeline: Sequence[str], kinds: list[str]) -> list[str]:
    """The notices an order in `state` must have had: its ending's, and "attention" while it
    needs an operator (order.needs_attention). An order that needed one and was settled after
    all may keep that notice; one that never did may not have it."""
    wanted = [NOTIFICATION_KIND[state]] if state in NOTIFICATION_KIND else []
    if state == "NEEDS_ATTENTION":
        # cancelled (told once), then a compensation failed for good: both told
        wanted = ["cancelled"] if "OrderCancelled" in timeline else []
        wanted.append("attention")
    elif "attention" in kinds and "AttentionRequired" in timeline:
        wanted.append("attention")
    return sorted(wanted)


def check_shipments_notifications(snap: Snapshot, c: Check) -> None:
    for order_id, status in snap.shipments.items():
        _owned_by_a_live_order(
            snap, c, order_id, "shipment", status == "created", "has a created shipment"
        )
    for order_id, (state, *_rest) in snap.views.items():
        if state == "COMPLETED" and snap.shipments.get(order_id) != "created":
            c.offend(order_id, "COMPLETED without a created shipment")
        kinds = sorted(snap.notifications.get(order_id, []))
        wanted = _notices_wanted(state, snap.timelines.get(order_id, ()), kinds)
        if kinds != wanted:
            c.offend(
                order_id,
                f"notifications {kinds or 'none'} for a {state} order (want {wanted or 'none'})",
            )
    for order_id in set(snap.notifications) - set(snap.views):
        c.offend(order_id, "notification for an unknown order")
    c.checked = len(snap.views)


def check_outbox(snap: Snapshot, c: Check) -> None:
    for d, rows in snap.unsent.items():
        for order_id, type_, _event_id in rows:
            c.offend(order_id, f"unsent: {d} {type_}")
    c.checked = len(snap.domains)


def check_fold(snap: Snapshot, c: Check) -> None:
    """fold(order_events) == order_view, folded as the order service folds them, in one pass."""
    query = select(
        col(OrderEvent.order_id),
        col(OrderEvent.type),
        col(OrderEvent.schema_version),
        col(OrderEvent.data),
    ).order_by(col(OrderEvent.order_id), col(OrderEvent.version))
    seen = set()
    with Session(engine_for(snap.settings, "order")) as s:
        rows = s.exec(query.execution_options(yield_per=2000))
        for order_id, group in itertools.groupby(rows, key=lambda r: r[0]):
            seen.add(order_id)
            order = domain.fold_stored(order_id, (row[1:] for row in group))
            view = snap.views.get(order_id)
            if view is None:
                c.offend(order_id, "events but no projection")
                continue
            folded = (order.state, order.reason, order.version)
            if folded != tuple(view[:3]):
                c.offend(order_id, f"fold {folded} != projection {tuple(view[:3])}")
    for order_id in set(snap.views) - seen:
        c.offend(order_id, "projection without events")
    c.checked = len(seen)


def check_dead_letters(snap: Snapshot, c: Check) -> None:
    for d, rows in snap.dead_letters.items():
        for event_id, order_id, type_, reason in rows:
            if not (reason or "").strip():
                c.offend(order_id or event_id, f"dead_letters row without reason: {d} {type_}")
    c.checked = sum(len(rows) for rows in snap.dead_letters.values())
    with BrokerAdmin(snap.settings) as admin:
        depth = {q["name"]: q["messages"] or 0 for q in admin.queue_stats()}
        for d in snap.domains:
            letters = admin.peek(d, depth.get(admin.names.dlq(d), 0))
            c.checked += len(letters)
            for letter in letters:
                if not (letter.headers.get("x-choreo-reason") or letter.headers.get("x-death")):
                    c.offend(
                        letter.order_id or letter.event_id or f"{d}-dlq",
                        f"DLQ message without reason: {d}",
                    )


# The order events a deadline's story is told by (Snapshot.timelines).
ANSWERS = ("PaymentCaptured", "StockReserved", "ShipmentDispatched")
ENDINGS = ("OrderCompleted", "OrderCancelled", "OrderRejected")
TIMELINE = (*ANSWERS, "DeadlinePassed", *ENDINGS, "AttentionRequired")


def late_answers(timeline: list[str]) -> int:
    """How many answers came after the order's deadline had passed (each one undone: the money,
    stock and shipment checks prove it)."""
    if "DeadlinePassed" not in timeline:
        return 0
    return sum(t in ANSWERS for t in timeline[timeline.index("DeadlinePassed") :])


def check_deadlines(snap: Snapshot, c: Check) -> None:
    """Ended once; a deadline only ever cancels, and only an order still waiting; a timer exists
    exactly while its order waits (durable: written with the step, gone with the wait)."""
    for order_id, timeline in snap.timelines.items():
        ends = [t for t in timeline if t in ENDINGS]
        if len(ends) > 1:
            c.offend(order_id, f"ended {len(ends)} times: {', '.join(ends)}")
        if "DeadlinePassed" in timeline:
            after = timeline[timeline.index("DeadlinePassed") + 1 :]
            if not after or after[0] != "OrderCancelled" or "OrderCompleted" in timeline:
                c.offend(order_id, f"a deadline that did not cancel its order: {timeline}")
    for order_id, (state, *_rest) in snap.views.items():
        waits = domain.WAITING_ON.get(state)
        timer = snap.timers.get(order_id)
        if waits and timer is None:
            c.offend(order_id, f"{state} (waiting on {waits}) without a timer")
        if not waits and timer is not None:
            c.offend(order_id, f"{state} still has a timer ({timer})")
    for order_id in set(snap.timers) - set(snap.views):
        c.offend(order_id, "timer for an unknown order")
    c.checked = len(snap.views)


CHECKS: list[tuple[str, str, Callable[[Snapshot, Check], None]]] = [
    ("terminal", "every order terminal (or NEEDS_ATTENTION with a dead letter)", check_terminal),
    (
        "money",
        "charges equal the catalog total; refunds match outcomes and the gateway ledger",
        check_money,
    ),
    ("stock", "available + reserved == initial; no cancelled order holds stock", check_stock),
    (
        "shipments_notifications",
        "one shipment at most; one notification of the right kind",
        check_shipments_notifications,
    ),
    (
        "deadlines",
        "ended once; a timer only while waiting; no completed order cancelled by one",
        check_deadlines,
    ),
    ("outbox", "every outbox row sent", check_outbox),
    ("fold", "fold(order events) == order projection", check_fold),
    ("dead_letters", "every dead letter carries its reason", check_dead_letters),
]

# What makes a check unanswerable (reported as failed with the error, never swallowed).
UNAVAILABLE = (SQLAlchemyError, OSError, pika.exceptions.AMQPError)


def run_audit(settings: Settings) -> list[Check]:
    snap = Snapshot(settings)
    checks = []
    for name, title, fn in CHECKS:
        check = Check(name, title)
        try:
            fn(snap, check)
        except UNAVAILABLE as exc:
            check.error = f"{type(exc).__name__}: {exc}"[:500]
        checks.append(check)
    return checks


def print_report(checks: list[Check], console) -> None:
    table = Table(title="audit")
    for heading in ("check", "result", "count", "first offending", "detail"):
        table.add_column(heading, overflow="fold")
    for c in checks:
        result = "[green]pass[/green]" if c.passed else "[red]FAIL[/red]"
        table.add_row(c.name, result, str(len(c.problems)), ", ".join(c.offenders[:5]), c.detail)
    console.print(table)
    for c in checks:
        for who in c.offenders[:5]:
            console.print(f"  [red]{c.name}[/red] {who}: {c.problems[who]}")
    failed = [c.name for c in checks if not c.passed]
    console.print(
        "[green]all guarantees hold[/green]"
        if not failed
        else f"[red]violated: {', '.join(failed)}[/red]"
    )
