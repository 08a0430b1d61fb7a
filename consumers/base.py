"""What a handler is and how a domain lists the messages it hears."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

from models.envelope import Envelope


class HandlerDeps(Protocol):
    """The dependencies a handler may use (choreo.app.bootstrap.LiveDeps; fakes in unit tests)."""
    gateway: Any
    users: Any
    catalog: Mapping[str, int]  # the seller's price list: SKU -> unit price in cents


# handler(message, unit of work, deps, **what its lookup returned) -> None
Handler = Callable[..., None]
# lookup(message, deps) -> keyword arguments for the handler
Lookup = Callable[[Envelope, HandlerDeps], dict]


@dataclass(frozen=True)
class Subscription:
    handler: Handler
    # A compensation that fails for good leaves money or stock wrong: it alerts an operator.
    compensation: bool = False
    # Calls to other services the handler needs, made before its unit of work opens, so no
    # network wait ever happens while the service's write transaction is held.
    lookup: Lookup | None = None
