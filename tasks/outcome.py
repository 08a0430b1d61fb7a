"""What became of a delivery: a batch item's state in the adapter, and the outcome the adapter
reports and the consumer acts on."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, StrEnum


class Kind(StrEnum):
    """What became of a delivery (Flower's state in brackets)."""

    PROCESSED = "processed"  # state and outbox committed, events confirmed [SUCCESS]
    DUPLICATE = "duplicate"  # seen before (Redis or the inbox): nothing done again [SUCCESS]
    RETRY = "retry"  # a transient failure: a copy waits in the retry ladder [RETRY]
    DEAD_LETTERED = "dead_lettered"  # a failure that outlived its retries [FAILURE]
    POISON = "poison"  # input that can never be processed, dead-lettered at once [FAILURE]
    REQUEUE = "requeue"  # back to the broker as it came: redelivered later [REJECTED]


@dataclass
class Outcome:
    kind: Kind
    detail: str = ""  # what Flower shows: the result, or the exception
    emitted: list[str] = field(default_factory=list)


class State(Enum):
    """Where a batch item stands in the adapter (tasks.adapter); each ends as one Kind."""

    OPEN = "open"  # decoded and believed (or not decoded yet): nothing decided
    ABSORBED = "absorbed"  # a duplicate, seen before by Redis or the inbox -> DUPLICATE
    APPLIED = "applied"  # the handler ran in its savepoint, its events staged -> PROCESSED
    FAILED = "failed"  # a transient failure: a copy climbs the retry ladder -> RETRY
    DEAD = "dead"  # poison, or out of retries: dead-lettered -> POISON / DEAD_LETTERED
    REQUEUED = "requeued"  # back to the broker as it came, nothing decided -> REQUEUE
