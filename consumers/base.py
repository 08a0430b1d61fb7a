"""What a handler is and how a domain lists the messages it hears."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from models.envelope import Envelope, Message


class HandlerDeps(Protocol):
    """The dependencies a handler may use (choreo.app.bootstrap.LiveDeps; fakes in unit tests)."""

    @property
    def gateway(self) -> Any: ...  # the payment gateway: charge(), refund()

    @property
    def users(self) -> Any: ...  # the user service client: get(customer_id)

    @property
    def catalog(self) -> Mapping[str, int]: ...  # the seller's price list: SKU -> cents


# handler(message, unit of work, deps, **what its lookup returned) -> None
Handler = Callable[..., None]
# lookup(message, deps) -> keyword arguments for the handler
Lookup = Callable[[Envelope, HandlerDeps], dict]


@dataclass(frozen=True)
class Subscription:
    handler: Handler
    # A compensation that fails for good leaves money or stock wrong: it alerts an operator.
    compensation: bool = False
    # Reads from other services the handler needs (the notification's customer), made before
    # its unit of work opens, so that wait never holds the service's write transaction. The
    # payment gateway's charge and refund stay inside: what to charge is decided on the rows
    # read in that transaction, and the gateway's idempotency key makes a retried call safe.
    lookup: Lookup | None = None


# A domain's table: the message classes it hears -> what to do with each.
Subscriptions = Mapping[type[Message], Subscription]
