"""The Python client: place orders, wait for their outcome, read one back, from a script.

The same code as the command line (`choreo place`, `choreo enqueue`, `choreo order`): orders are
checked by the wire format's own models, published as the operator's broker user with publisher
confirms, and read back from the order service's read model. It runs where the stack's settings
are (the CHOREO_* variables, the run folder's secrets), like the `choreo` command:

    from choreo import client

    order_id = client.place({"customer_id": "cust-7", "items": [{"sku": "SKU-RED", "qty": 2}],
                             "card_token": "tok_visa", "address": "1 Main Street"})
    state, reason = client.wait(order_id, timeout=60)
    details = client.get(order_id)

For many orders, one `Client` keeps one connection: `with client.Client() as c: ...`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, overload

from choreo.app.queries import order_details
from choreo.ops.orderfile import BadOrder, parse_order
from choreo.ops.workload import Placer, terminal_count, wait_terminal
from config.settings import Settings, get_settings
from consumers.order.messages import PlaceOrder

__all__ = ["BadOrder", "Client", "NotSettled", "Outcome", "get", "place", "wait"]


class Outcome(NamedTuple):
    """Where an order is: its state (COMPLETED, CANCELLED, NEEDS_ATTENTION, or an open state
    such as PAYMENT_PENDING) and the reason of a cancelled or stuck one."""

    state: str
    reason: str | None


class NotSettled(TimeoutError):
    """Some orders were not terminal by the deadline; `outcomes` holds what was seen last
    (an order not in it was not in the read model yet)."""

    def __init__(self, outcomes: dict[str, Outcome], waiting: list[str], timeout: float) -> None:
        self.outcomes = outcomes
        self.waiting = waiting
        super().__init__(
            f"{len(waiting)} order(s) not settled within {timeout:.0f}s: {', '.join(waiting[:10])}"
        )


Order = Mapping[str, Any] | PlaceOrder


class Client:
    """Places orders over one broker connection (opened on the first `place`); reads need none."""

    def __init__(self, settings: Settings | None = None, source: str = "python-client") -> None:
        self.settings = settings or get_settings()
        self.source = source
        self._placer: Placer | None = None

    def place(self, order: Order, order_id: str | None = None) -> str:
        """Place one order, a place_order payload (a mapping, as in `choreo place`'s lines,
        which may carry `order_id`; or the model). Returns its order id once the broker has it.
        Raises BadOrder, placing nothing, when the payload is not valid."""
        given, payload = (None, order) if isinstance(order, PlaceOrder) else parse_order(order)
        if self._placer is None:
            self._placer = Placer(self.settings, self.source)
        return self._placer.place(payload, order_id or given)

    def place_many(self, orders: Iterable[Order]) -> list[str]:
        """Every order checked first, then each placed: all of them, or BadOrder and none."""
        checked: list[tuple[str | None, PlaceOrder]] = []
        for n, o in enumerate(orders, start=1):
            try:
                checked.append((None, o) if isinstance(o, PlaceOrder) else parse_order(o))
            except BadOrder as exc:
                raise BadOrder(f"order {n}: {exc}") from None
        return [self.place(payload, order_id) for order_id, payload in checked]

    @overload
    def wait(self, order_ids: str, timeout: float = ...) -> Outcome: ...
    @overload
    def wait(self, order_ids: list[str], timeout: float = ...) -> dict[str, Outcome]: ...

    def wait(self, order_ids: str | list[str], timeout: float = 60.0) -> Any:
        """Poll until the order (or every order of a list) is terminal: its Outcome (or a dict of
        them by id). Raises NotSettled after `timeout` seconds."""
        ids = [order_ids] if isinstance(order_ids, str) else list(order_ids)
        states = wait_terminal(self.settings, ids, timeout)
        outcomes = {o: Outcome(*states[o]) for o in ids if o in states}
        if terminal_count(states) < len(ids):
            done = {o for o, out in outcomes.items() if terminal_count({o: out})}
            raise NotSettled(outcomes, [o for o in ids if o not in done], timeout)
        return outcomes[order_ids] if isinstance(order_ids, str) else outcomes

    def get(self, order_id: str) -> dict[str, Any] | None:
        """An order's facts and timeline, as `choreo order ID --json` prints them
        (docs/operating/watch.md lists the fields); None for an order not (yet) known."""
        return order_details(self.settings, order_id)

    def close(self) -> None:
        if self._placer is not None:
            self._placer.close()
            self._placer = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def place(order: Order, order_id: str | None = None, settings: Settings | None = None) -> str:
    """Place one order (see Client.place); opens and closes a connection for it."""
    with Client(settings) as c:
        return c.place(order, order_id)


@overload
def wait(order_ids: str, timeout: float = ..., settings: Settings | None = ...) -> Outcome: ...
@overload
def wait(
    order_ids: list[str], timeout: float = ..., settings: Settings | None = ...
) -> dict[str, Outcome]: ...


def wait(order_ids: Any, timeout: float = 60.0, settings: Settings | None = None) -> Any:
    """See Client.wait."""
    return Client(settings).wait(order_ids, timeout)


def get(order_id: str, settings: Settings | None = None) -> dict[str, Any] | None:
    """See Client.get."""
    return Client(settings).get(order_id)
