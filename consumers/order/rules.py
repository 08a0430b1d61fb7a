"""The order aggregate: state is a fold of its events; decisions return new events."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

# Settled: the saga closed the order. Terminal: nothing more moves it without an operator
# (settled, or NEEDS_ATTENTION: a step or a compensation failed for good). One vocabulary for
# the CLI, the audit, chaos, the bench and the tests.
SETTLED = ("COMPLETED", "CANCELLED")
TERMINAL = (*SETTLED, "NEEDS_ATTENTION")
STATES = ("PLACED", "PAID", "RESERVED", "CANCELLING", *TERMINAL)
# The step an order moving forward waits on, by its state: the service that must answer next
# (its deadline is CHOREO_DEADLINE_<STEP>). A CANCELLING order waits on its refund (payment)
# and has no deadline of its own: expiry could not end it any other way.
WAITING_ON = {"PLACED": "payment", "PAID": "inventory", "RESERVED": "shipment"}

# --- the order's own events ------------------------------------------------------------
# One class per event: its fields are what is stored, its class attributes say its schema
# version and the milestone it marks, and `changes` is the one small step that applies it.


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(kind: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(kind)
    if names is None:
        names = _FIELD_NAMES[kind] = tuple(f.name for f in fields(kind))
    return names


# Every order event by its stored type name, filled by the class statements below.
EVENTS: dict[str, type[Event]] = {}


@dataclass(frozen=True)
class Event:
    """An event of the order's own history (stored in the order service's event store)."""

    version: ClassVar[int] = 1
    # The read model stamps <milestone>_at with the time of the event that marks it.
    milestone: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__name__ in EVENTS:
            raise TypeError(f"order event {cls.__name__} declared twice")
        EVENTS[cls.__name__] = cls  # stored by class name: a class's name is its stored type

    @property
    def type(self) -> str:
        return type(self).__name__

    @property
    def schema_version(self) -> int:
        return self.version

    @property
    def data(self) -> dict[str, Any]:
        """What is stored: the fields, in declaration order."""
        return {name: getattr(self, name) for name in _field_names(type(self))}

    def changes(self, order: Order) -> dict[str, Any]:
        """The order's fields this event sets (the version is bumped by `apply`)."""
        raise NotImplementedError

    def known_to(self, order: Order) -> bool:
        """Whether `order` already holds this fact (a redelivery): recording it adds nothing."""
        return False

    def announce(self, order: Order, before: Order) -> tuple[str, dict[str, Any]] | None:
        """What other services hear of this event (routing key, payload), if anything; `order` is
        the order after it, `before` the order before it."""
        return None


# Whether a domain's compensation for the order is done (recorded in its history).
_COMPENSATED: dict[str, Callable[[Order], bool]] = {
    "payment": lambda o: o.refunded_cents is not None,
    "inventory": lambda o: o.released,
    "shipment": lambda o: o.withdrawn,
}


def _done(order: Order, domain: str) -> dict[str, Any]:
    """A compensation done after all: an order it reopened for an operator is settled again."""
    return {"reopened": None} if order.reopened == domain else {}


def _settled_again(order: Order, before: Order) -> tuple[str, dict[str, Any]] | None:
    """A reopened order whose failed compensation is done after all is CANCELLED again: said
    once more (order.cancelled), so the last outcome a client heard is the order's state."""
    if before.reopened is None or order.reopened is not None:
        return None
    return _cancelled(order, order.close_reason or "cancelled")


def _cancelled(order: Order, reason: str) -> tuple[str, dict[str, Any]]:
    return "order.cancelled", {
        "customer_id": order.customer_id,
        "reason": reason,
        "amount_cents": order.amount_cents,
    }


def _lines(items: list[dict[str, Any]]) -> tuple:
    return tuple(tuple(sorted(i.items())) for i in items)


@dataclass(frozen=True)
class OrderPlaced(Event):
    version: ClassVar[int] = 2  # v1 stored a single sku/qty/price (upcast on read)
    milestone: ClassVar[str | None] = "placed"
    customer_id: str
    items: list[dict[str, Any]]
    address: str
    card_token: str
    amount_cents: int

    def changes(self, order: Order) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id,
            "items": _lines(self.items),
            "address": self.address,
            "card_token": self.card_token,
            "amount_cents": self.amount_cents,
        }

    def announce(self, order: Order, before: Order) -> tuple[str, dict[str, Any]] | None:
        facts = {
            "customer_id": self.customer_id,
            "items": self.items,
            "address": self.address,
            "amount_cents": self.amount_cents,
        }
        return "order.placed", {"order": facts, "card_token": self.card_token}


@dataclass(frozen=True)
class OrderRejected(Event):
    """Refused at placement (unknown SKU, a price not the catalog's): cancelled, nothing charged."""

    milestone: ClassVar[str | None] = "ended"
    customer_id: str
    items: list[dict[str, Any]]
    reason: str
    detail: str | None

    def changes(self, order: Order) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id,
            "items": _lines(self.items),
            "closed": "CANCELLED",
            "close_reason": self.reason,
        }

    def announce(self, order: Order, before: Order) -> tuple[str, dict[str, Any]] | None:
        said = {"customer_id": order.customer_id, "reason": self.reason, "amount_cents": 0}
        if self.detail:  # the schema's limit: a long list of lines is cut, the reason stays
            said["detail"] = self.detail if len(self.detail) <= 500 else self.detail[:497] + "..."
        return "order.cancelled", said


@dataclass(frozen=True)
class PaymentCaptured(Event):
    milestone: ClassVar[str | None] = "paid"
    charge_id: str
    amount_cents: int

    def changes(self, order: Order) -> dict[str, Any]:
        return {"charged_cents": self.amount_cents}

    def known_to(self, order: Order) -> bool:
        return order.charged_cents is not None


@dataclass(frozen=True)
class PaymentDeclined(Event):
    reason: str
    code: str

    def changes(self, order: Order) -> dict[str, Any]:
        return {"declined": self.reason}

    def known_to(self, order: Order) -> bool:
        return order.declined is not None


@dataclass(frozen=True)
class StockReserved(Event):
    milestone: ClassVar[str | None] = "reserved"
    reservation_id: str

    def changes(self, order: Order) -> dict[str, Any]:
        return {"reserved": True}

    def known_to(self, order: Order) -> bool:
        return order.reserved


@dataclass(frozen=True)
class StockUnavailable(Event):
    reason: str
    skus: list[str]

    def changes(self, order: Order) -> dict[str, Any]:
        return {"stock_failed": "out_of_stock"}

    def known_to(self, order: Order) -> bool:
        return order.stock_failed is not None


@dataclass(frozen=True)
class StockReleased(Event):
    reservation_id: str | None

    def changes(self, order: Order) -> dict[str, Any]:
        # history only: the refund, not the release, closes the order
        return {"released": True, **_done(order, "inventory")}

    def known_to(self, order: Order) -> bool:
        return order.released

    def announce(self, order: Order, before: Order) -> tuple[str, dict[str, Any]] | None:
        return _settled_again(order, before)


@dataclass(frozen=True)
class ShipmentDispatched(Event):
    milestone: ClassVar[str | None] = "shipped"
    shipment_id: str

    def changes(self, order: Order) -> dict[str, Any]:
        return {"shipped": True}

    def known_to(self, order: Order) -> bool:
        return order.shipped


@dataclass(frozen=True)
class ShipmentFailed(Event):
    reason: str

    def changes(self, order: Order) -> dict[str, Any]:
        return {"ship_failed": "shipment_failed"}

    def known_to(self, order: Order) -> bool:
        return order.ship_failed is not None


@dataclass(frozen=True)
class PaymentRefunded(Event):
    amount_cents: int
    reason: str

    def changes(self, order: Order) -> dict[str, Any]:
        return {"refunded_cents": self.amount_cents, **_done(order, "payment")}

    def known_to(self, order: Order) -> bool:
        return order.refunded_cents is not None

    def announce(self, order: Order, before: Order) -> tuple[str, dict[str, Any]] | None:
        return _settled_again(order, before)


@dataclass(frozen=True)
class ShipmentWithdrawn(Event):
    """A compensation's outcome (history): the shipment was cancelled, or will never be made."""

    shipment_id: str | None

    def changes(self, order: Order) -> dict[str, Any]:
        return {"withdrawn": True, **_done(order, "shipment")}

    def known_to(self, order: Order) -> bool:
        return order.withdrawn

    def announce(self, order: Order, before: Order) -> tuple[str, dict[str, Any]] | None:
        return _settled_again(order, before)


@dataclass(frozen=True)
class DeadlinePassed(Event):
    """A step's (or the saga's) deadline passed while the order still waited: it is cancelled at
    once, and every service undoes what it did, or does later, for it (order.expired)."""

    step: str

    def changes(self, order: Order) -> dict[str, Any]:
        return {"expired": self.step}

    def known_to(self, order: Order) -> bool:
        return order.expired is not None

    def announce(self, order: Order, before: Order) -> tuple[str, dict[str, Any]] | None:
        return "order.expired", {
            "customer_id": order.customer_id,
            "step": self.step,
            "reason": timeout_reason(self.step),
        }


def timeout_reason(step: str) -> str:
    """The reason an order cancelled by a deadline ends with."""
    return f"timeout:{step}"


@dataclass(frozen=True)
class AttentionRequired(Event):
    """A step or a compensation failed for good: an operator must look."""

    reason: str
    domain: str
    event_type: str
    detail: str

    def changes(self, order: Order) -> dict[str, Any]:
        undone = _COMPENSATED.get(self.domain, lambda o: True)(order)
        if order.closed == "CANCELLED" and self.reason == "compensation_failed" and not undone:
            return {"attention": self.reason, "reopened": self.domain}
        return {"attention": self.reason}

    def known_to(self, order: Order) -> bool:
        return order.attention == self.reason

    def announce(self, order: Order, before: Order) -> tuple[str, dict[str, Any]] | None:
        """Said when the order enters NEEDS_ATTENTION (an open order, or a cancelled one that a
        failed compensation reopens), not for a second reason while it is there, nor for a
        closed order this leaves as it was."""
        if not order.needs_attention or before.needs_attention:
            return None
        return "order.needs_attention", {
            "customer_id": order.customer_id,
            "reason": self.reason,
            "domain": self.domain,
            "event_type": self.event_type,
            "reopened": order.reopened is not None,
            "amount_cents": order.amount_cents,
        }


@dataclass(frozen=True)
class OrderCompleted(Event):
    milestone: ClassVar[str | None] = "ended"

    def changes(self, order: Order) -> dict[str, Any]:
        return {"closed": "COMPLETED", "close_reason": None}

    def announce(self, order: Order, before: Order) -> tuple[str, dict[str, Any]] | None:
        return "order.completed", {
            "customer_id": order.customer_id,
            "amount_cents": order.amount_cents,
        }


@dataclass(frozen=True)
class OrderCancelled(Event):
    milestone: ClassVar[str | None] = "ended"
    reason: str

    def changes(self, order: Order) -> dict[str, Any]:
        return {"closed": "CANCELLED", "close_reason": self.reason}

    def announce(self, order: Order, before: Order) -> tuple[str, dict[str, Any]] | None:
        return _cancelled(order, self.reason)


def event_of(type_: str, data: dict[str, Any]) -> Event:
    """The event a stored (type, data) row holds, at the current schema version."""
    kind = EVENTS.get(type_)
    if kind is None:
        raise ValueError(f"unknown order event {type_!r}")
    return kind(**data)


def _upcast_order_placed_v1(data: dict) -> dict:
    # v1 stored a single sku/qty/price; v2 stores a list of items.
    data = dict(data)
    if "items" not in data:
        data["items"] = [
            {
                "sku": data.pop("sku"),
                "qty": data.pop("qty"),
                "unit_price_cents": data.pop("unit_price_cents"),
            }
        ]
    return data


UPCASTERS: dict[tuple[str, int], Callable[[dict], dict]] = {
    ("OrderPlaced", 1): _upcast_order_placed_v1,
}


def upcast(type_: str, version: int, data: dict) -> Event:
    if type_ not in EVENTS:
        raise ValueError(f"unknown order event {type_!r}")
    current = EVENTS[type_].version  # older versions are upcast on read
    while version < current:
        data = UPCASTERS[(type_, version)](data)
        version += 1
    return event_of(type_, data)


@dataclass(frozen=True)
class Order:
    order_id: str
    version: int = 0
    customer_id: str = ""
    items: tuple = ()
    address: str = ""
    card_token: str = ""
    amount_cents: int = 0
    charged_cents: int | None = None
    declined: str | None = None
    reserved: bool = False
    stock_failed: str | None = None
    shipped: bool = False
    ship_failed: str | None = None
    refunded_cents: int | None = None
    released: bool = False
    withdrawn: bool = False
    expired: str | None = None  # the step whose deadline passed
    attention: str | None = None
    reopened: str | None = None  # the domain whose compensation failed after the cancellation
    closed: str | None = None
    close_reason: str | None = None

    @property
    def exists(self) -> bool:
        return self.version > 0

    @property
    def needs_attention(self) -> bool:
        """A step or a compensation failed for good. Once the order is closed, only a compensation
        of a cancelled one that failed (an expiry's refund or release: money or stock left
        wrong) needs an operator, until that compensation is done after all."""
        return bool(self.attention and not self.closed) or self.reopened is not None

    @property
    def state(self) -> str:
        if self.needs_attention:
            return "NEEDS_ATTENTION"
        if self.closed:
            return self.closed
        if self.stock_failed or self.ship_failed:
            return "CANCELLING"
        if self.reserved:
            return "RESERVED"
        if self.charged_cents is not None:
            return "PAID"
        return "PLACED"

    @property
    def reason(self) -> str | None:
        if self.needs_attention:
            return self.attention
        if self.closed:
            return self.close_reason
        return self.stock_failed or self.ship_failed


def apply(order: Order, event: Event) -> Order:
    """One small pure step: the order after `event`."""
    return replace(order, version=order.version + 1, **event.changes(order))


def fold(order_id: str, events: Iterable[Event]) -> Order:
    order = Order(order_id)
    for event in events:
        order = apply(order, event)
    return order


def fold_stored(order_id: str, rows: Iterable[tuple[str, int, dict]]) -> Order:
    """The one mapper from stored (type, schema_version, data) rows, oldest first, to the order
    (upcast on read): the handler's load, the projection rebuild and the audit all use it."""
    return fold(order_id, (upcast(type_, version, data) for type_, version, data in rows))


def priced(
    lines: list[dict], prices: Mapping[str, int]
) -> tuple[list[dict], str | None, str | None]:
    """The lines priced from the seller's catalog: (items, None, None), or ([], reason, detail).

    The seller sets the price. A line may omit `unit_price_cents`; one that names a price other
    than the catalog's is refused rather than charged at another price than the customer saw.
    """
    unknown = sorted({line["sku"] for line in lines if line["sku"] not in prices})
    if unknown:
        return [], "unknown_sku", f"not in the catalog: {', '.join(unknown)}"
    wrong = [
        line
        for line in lines
        if line.get("unit_price_cents") is not None
        and line["unit_price_cents"] != prices[line["sku"]]
    ]
    if wrong:
        said = ", ".join(
            f"{w['sku']} at {w['unit_price_cents']} (catalog {prices[w['sku']]})" for w in wrong
        )
        return [], "price_mismatch", f"client price differs from the catalog: {said}"
    return (
        [
            {"sku": line["sku"], "qty": line["qty"], "unit_price_cents": prices[line["sku"]]}
            for line in lines
        ],
        None,
        None,
    )


def place(
    order: Order,
    customer_id: str,
    lines: list[dict],
    address: str,
    card_token: str,
    prices: Mapping[str, int],
) -> list[Event]:
    """Place the order at the catalog's prices, or refuse it (CANCELLED at once, no charge)."""
    if order.exists:
        return []  # placing the same order id twice is a no-op, not a second order
    items, refused, detail = priced(lines, prices)
    if refused:
        return [OrderRejected(customer_id, lines, refused, detail)]
    amount = sum(i["qty"] * i["unit_price_cents"] for i in items)
    return [OrderPlaced(customer_id, items, address, card_token, amount)]


def record(order: Order, fact: Event) -> list[Event]:
    """The events to append when `fact` arrives: the fact itself plus any decision it enables.

    Facts may arrive in any order (redelivery, retries): the decision looks only at the
    set of facts known, never at the order they came in.
    """
    if not order.exists or fact.known_to(order):
        return []
    after = apply(order, fact)
    return [fact, *decide(after)]


def expire(order: Order, step: str) -> list[Event]:
    """A deadline came due: cancel the order if it still waits where the deadline watched.

    `step` is the service the order waited on when the timer was set, or "saga". A timer whose
    order has moved on (answered, ended, or failing and compensating) changes nothing: the
    events the order holds, not the time the message arrived, decide, so an answer and its
    deadline arriving together end the order one way, never both."""
    waiting = WAITING_ON.get(order.state)
    if not order.exists or waiting is None or step not in (waiting, "saga"):
        return []
    return [DeadlinePassed(step), OrderCancelled(timeout_reason(step))]


def decide(order: Order) -> list[Event]:
    if order.closed:
        return []
    if order.declined:
        return [OrderCancelled("payment_declined")]
    failure = order.stock_failed or order.ship_failed
    if failure and order.refunded_cents is not None:
        return [OrderCancelled(failure)]
    if order.shipped and not failure:
        return [OrderCompleted()]
    return []


def announcement(
    order: Order, event: Event, before: Order | None = None
) -> tuple[str, dict] | None:
    """The integration event (routing key, payload) other services hear for one of ours;
    `order` is the order after `event`, `before` the order before it (unknown: a new order)."""
    return event.announce(order, before if before is not None else Order(order.order_id))
