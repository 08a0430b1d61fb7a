"""What a handler is and how a domain lists the messages it hears."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

from models.envelope import Envelope


class Deps(Protocol):
    """The dependencies a handler may use (built by choreo.bootstrap; fakes in unit tests)."""
    gateway: Any
    users: Any
    catalog: Mapping[str, int]  # the seller's price list: SKU -> unit price in cents


Handler = Callable[[Envelope, Any, Deps], None]


@dataclass(frozen=True)
class Subscription:
    handler: Handler
    # A compensation that fails for good leaves money or stock wrong: it alerts an operator.
    compensation: bool = False
