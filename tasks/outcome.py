"""What became of a delivery: the outcome the adapter reports and the consumer acts on."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


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
