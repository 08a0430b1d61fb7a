"""The event envelope every message carries, and the payload schema of every message type.

JSON on the wire, validated on publish and on consume, so a service written in another
language can take part: see docs/concepts/events.md and docs/client.md.
"""

from __future__ import annotations

import builtins
import os
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, TypeVar, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from config.settings import DOMAINS
from models.services import service_part

SCHEMA_VERSION = 1
# The embedded options of Celery's protocol-2 body ([args, kwargs, options]). choreo sends them
# all null; a client that sets one asks the worker to publish further tasks under its name.
EMBED_KEYS = frozenset({"callbacks", "errbacks", "chain", "chord"})
TRACEPARENT_RE = r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
_ID_NAMESPACE = uuid.UUID("6f1c1e1a-8f7e-4c1b-9a55-2a0c6b3c9d10")


# Limits, so no message can carry a megabyte into three services' databases; a message
# over one is dead-lettered with the limit named. Amounts fit a 32-bit integer column.
MAX_ITEMS = 100
MAX_QTY = 1_000
MAX_CENTS = 2_000_000_000
Id = Annotated[str, Field(min_length=1, max_length=64)]
Sku = Annotated[str, Field(min_length=1, max_length=64)]
Reason = Annotated[str, Field(min_length=1, max_length=500)]
Cents = Annotated[int, Field(ge=0, le=MAX_CENTS)]
CustomerId = Annotated[str, Field(min_length=1, max_length=64)]
CardToken = Annotated[str, Field(min_length=1, max_length=64)]
Address = Annotated[str, Field(min_length=1, max_length=500)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Who may say what: every domain says its own facts; the operator and a shop's client place
# orders; the orchestrator sends the commands of the orchestrated mode; any of them may report its
# own dead letters (choreo.messaging.access derives the broker's topic permissions from this).
OPERATOR, ORCHESTRATOR, CLIENT = "operator", "orchestrator", "client"
EMITTERS = (*DOMAINS, ORCHESTRATOR)


class Message(Strict):
    """A message type: its payload schema and, declared once in its class statement, its routing
    key, the services that may send it and its schema version:

        class PaymentCompleted(Message, key="payment.completed", owner="payment"): ...

    Everything else is derived from these declarations: the registry of payload schemas
    (`PAYLOADS`), the JSON Schemas (`choreo schemas`), the broker's topic permissions and, from
    the subscription tables keyed by class, each queue's bindings."""

    routing_key: ClassVar[str]
    owners: ClassVar[frozenset[str]]
    version: ClassVar[int]

    def __init_subclass__(
        cls,
        *,
        key: str | None = None,
        owner: str | tuple[str, ...] = (),
        version: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if key is None:
            return  # a shared base, not a message type of its own
        if key in PAYLOADS:
            raise TypeError(f"message type {key!r} declared twice ({PAYLOADS[key].__name__})")
        if not owner:
            raise TypeError(f"message type {key!r} names no owner")
        cls.routing_key = key
        cls.owners = frozenset((owner,) if isinstance(owner, str) else owner)
        cls.version = version
        PAYLOADS.register(cls)


class MessageTypes(Mapping[str, "type[Message]"]):
    """Every message type by routing key: the kernel's own (below) and each service's, declared in
    `consumers/<service>/messages.py` and imported on the first read (a service is registered by
    its name in `config.settings.DOMAINS`; the orchestrator's commands are read too)."""

    def __init__(self) -> None:
        self._types: dict[str, type[Message]] = {}
        self._loaded = False

    def register(self, kind: type[Message]) -> None:
        self._types[kind.routing_key] = kind

    def _all(self) -> dict[str, type[Message]]:
        if not self._loaded:  # once per process
            self._loaded = True  # first: a module being loaded may read what is registered so far
            for service in (*DOMAINS, ORCHESTRATOR):
                service_part(service, "messages", optional=True)  # its classes register here
        return self._types

    def __getitem__(self, key: str) -> type[Message]:
        types = self._types if self._loaded else self._all()  # on every message: keep it short
        return types[key]

    def __contains__(self, key: object) -> bool:
        types = self._types if self._loaded else self._all()
        return key in types

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


PAYLOADS = MessageTypes()
M = TypeVar("M", bound=Message)
N = TypeVar("N", bound=Message)


class Item(Strict):
    """A priced line, as the order service priced it from its catalog."""

    sku: Sku
    qty: int = Field(gt=0, le=MAX_QTY)
    unit_price_cents: Cents


class OrderSnapshot(Strict):
    """The facts about an order that travel with it (event-carried state transfer)."""

    customer_id: CustomerId
    items: list[Item] = Field(min_length=1, max_length=MAX_ITEMS)
    address: Address
    amount_cents: Cents


class SagaDeadLettered(Message, key="saga.dead_lettered", owner=EMITTERS):
    """A domain gave up on a message of this order: the order needs an operator."""

    domain: Annotated[str, Field(min_length=1, max_length=64)]
    event_type: Annotated[str, Field(min_length=1, max_length=64)]
    event_id: Id
    reason: Reason
    compensation: bool


class Envelope(Strict):
    event_id: Id
    type: str = Field(max_length=64)
    # A newer version than this code reads is refused (dead-lettered, replayable after an upgrade).
    schema_version: int = Field(SCHEMA_VERSION, ge=1, le=SCHEMA_VERSION)
    order_id: Id
    occurred_at: datetime
    source: Annotated[str, Field(min_length=1, max_length=64)]
    correlation_id: Id
    causation_id: Id | None = None
    traceparent: str = Field(pattern=TRACEPARENT_RE)
    payload: dict[str, Any]

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in PAYLOADS:
            raise ValueError(f"unknown message type {value!r}")
        return value

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("occurred_at must carry a timezone")
        return value

    @overload
    def parsed(self) -> Message: ...
    @overload
    def parsed(self, kind: builtins.type[M]) -> M: ...
    @overload
    def parsed(self, kind: tuple[builtins.type[M], builtins.type[N]]) -> M | N: ...

    def parsed(self, kind: Any = Message) -> Any:
        """The payload as its typed message (validated again: cheap, and a frozen copy).

        `kind`: the class, or the two classes, the caller handles (one handler may hear an event
        in one saga mode and a command carrying the same facts in the other); a payload of
        another type is a programming error, not a bad message."""
        message = PAYLOADS[self.type].model_validate(self.payload)
        if not isinstance(message, kind):
            raise TypeError(f"a {self.type} message is not what this handler handles ({kind})")
        return message

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @property
    def trace_id(self) -> str:
        return self.traceparent.split("-")[1]


class PoisonMessage(ValueError):
    """A message that can never be processed: dead-letter it at once, no retries."""


def decode(raw: Any) -> Envelope:
    """Validate a wire envelope and its payload; raise PoisonMessage with the reason.

    The payload handed on is the schema's own rendering of what was sent, so a handler
    never sees a value the schema merely tolerated ("12" for 12, a key it would drop)."""
    if not isinstance(raw, dict):
        raise PoisonMessage(f"envelope must be a JSON object, got {type(raw).__name__}")
    prefix: tuple = ()
    try:
        envelope = Envelope.model_validate(raw)
        prefix = ("payload",)
        payload = envelope.parsed().model_dump(mode="json")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in (*prefix, *first.get("loc", ()))) or "envelope"
        raise PoisonMessage(
            f"schema: {where}: {first.get('msg')} ({exc.error_count()} error(s))"
        ) from None
    return envelope.model_copy(update={"payload": payload})


def new_trace() -> str:
    return f"00-{uuid.uuid4().hex}-{os.urandom(8).hex()}-01"


def child_trace(traceparent: str) -> str:
    """Same trace, a new span: the W3C way to say 'caused by'."""
    return f"00-{traceparent.split('-')[1]}-{os.urandom(8).hex()}-01"


def derived_id(*parts: str) -> str:
    """A deterministic event id, so re-running the same cause emits the same ids."""
    return str(uuid.uuid5(_ID_NAMESPACE, "|".join(parts)))


def make_envelope(
    type: str,
    order_id: str,
    payload: BaseModel | dict,
    *,
    source: str,
    cause: Envelope | None = None,
    event_id: str | None = None,
    now: datetime | None = None,
    traceparent: str | None = None,
) -> Envelope:
    """A new envelope. Its traceparent: `traceparent` when given (the span that emits it, so the
    consumer's span is that span's child), else a new span id in the cause's trace, else a new
    trace."""
    if isinstance(payload, PAYLOADS[type]):
        body = payload.model_dump(mode="json")  # validated when it was made
    else:
        body = payload.model_dump(mode="json") if isinstance(payload, BaseModel) else payload
        PAYLOADS[type].model_validate(body)  # validate on publish, not only on consume
    return Envelope(
        event_id=event_id or str(uuid.uuid4()),
        type=type,
        order_id=order_id,
        occurred_at=now or datetime.now(UTC),
        source=source,
        correlation_id=cause.correlation_id if cause else order_id,
        causation_id=cause.event_id if cause else None,
        traceparent=traceparent or (child_trace(cause.traceparent) if cause else new_trace()),
        payload=body,
    )


# --- commands of the orchestrated saga mode (imperative names; same facts as the events
# that trigger the same handlers in choreography mode) ---------------------------------
