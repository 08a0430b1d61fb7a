"""A user's own orders as JSON Lines (`choreo place`, the Python client): one place_order payload
per line, checked by the same models the services check them with, before anything is placed.

A line is the wire format's `place_order` payload (schemas/payloads/place_order.json) plus, if
the user wants to choose it, the envelope's `order_id` (1-64 characters; a new one when left
out). Blank lines are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from consumers.order.messages import PlaceOrder
from models.envelope import Id

MAX_ERRORS = 20  # reported per file; the rest are counted
_ORDER_ID: TypeAdapter[str] = TypeAdapter(Id)


class BadOrder(ValueError):
    """An order that is not a valid place_order payload; the message says what is wrong."""


@dataclass(frozen=True)
class LineError:
    line: int  # 1-based, as an editor counts
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class BadOrders(ValueError):
    """One or more lines are not orders: nothing of the file is placed."""

    def __init__(self, errors: list[LineError], lines: int) -> None:
        self.errors = errors
        self.lines = lines
        shown = "\n".join(str(e) for e in errors[:MAX_ERRORS])
        more = len(errors) - MAX_ERRORS
        super().__init__(shown + (f"\n... and {more} more bad line(s)" if more > 0 else ""))


def _schema_error(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e.get("loc", ()))
        parts.append(f"{where}: {e['msg']}" if where else e["msg"])
    return "; ".join(parts)


def parse_order(data: Any) -> tuple[str | None, PlaceOrder]:
    """(order id or None, payload) of one order given as a mapping. Raises BadOrder."""
    if not isinstance(data, Mapping):
        raise BadOrder(
            f"an order is a JSON object (a place_order payload), not {type(data).__name__}"
        )
    fields = dict(data)
    order_id = fields.pop("order_id", None)
    if order_id is not None:
        try:
            order_id = _ORDER_ID.validate_python(order_id, strict=True)
        except ValidationError as exc:
            raise BadOrder(f"order_id: {exc.errors()[0]['msg']}") from None
    try:
        return order_id, PlaceOrder.model_validate(fields)
    except ValidationError as exc:
        raise BadOrder(_schema_error(exc)) from None


def read_orders(lines: Iterable[str]) -> list[tuple[str | None, PlaceOrder]]:
    """Every order of a JSON Lines text, or BadOrders naming every bad line (the whole text is
    read first: a file is placed entirely or not at all). Two lines naming the same order id
    are an error too: the second would be a no-op, silently."""
    orders: list[tuple[str | None, PlaceOrder]] = []
    errors: list[LineError] = []
    seen: dict[str, int] = {}
    n = 0
    for n, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            order_id, payload = parse_order(json.loads(text))
        except json.JSONDecodeError as exc:
            errors.append(LineError(n, f"not JSON: {exc.msg} (column {exc.colno})"))
            continue
        except BadOrder as exc:
            errors.append(LineError(n, str(exc)))
            continue
        if order_id is not None and order_id in seen:
            errors.append(
                LineError(n, f"order_id {order_id!r} is already on line {seen[order_id]}")
            )
            continue
        if order_id is not None:
            seen[order_id] = n
        orders.append((order_id, payload))
    if errors:
        raise BadOrders(errors, n)
    return orders
