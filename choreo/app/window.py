"""The dedup window's one rule: a message is acted on only while its dedup record could still exist.

A consumer writes its inbox row (and any copy record) when it handles a message, at a time no
earlier than the message's `occurred_at`, and keeps it for the dedup window (CHOREO_DEDUP_WINDOW).
So a message whose `occurred_at` is at most a window old finds the record if one was ever written;
an older one might not, and would run again (charge twice). The consumer dead-letters it instead
(tasks.adapter), with a reason starting OUTSIDE_WINDOW, and `choreo dlq replay` refuses such a
dead letter unless the operator forces it (choreo.ops.replay). The settings refuse a window
shorter than the longest legitimate way back (config.settings.Settings.longest_return).

A sender's clock ahead makes a message look younger than it is: a copy of one whose
`occurred_at` lay a day ahead would be believed for a day after its record was gone. So a message
more than CHOREO_MAX_CLOCK_SKEW ahead of the consumer's clock is dead-lettered too (reason
starting AHEAD_OF_CLOCK), and records are kept for the window plus that skew
(Settings.dedup_retention): a message accepted at time t had occurred_at <= t + skew, its record
lives until t + window + skew >= occurred_at + window, the last moment a copy of it is believed.
"""

from __future__ import annotations

from datetime import datetime

from config.settings import duration

OUTSIDE_WINDOW = "outside dedup window"
AHEAD_OF_CLOCK = "ahead of this worker's clock"


def age(occurred_at: datetime, now: float) -> float:
    """Seconds since `occurred_at` by the clock reading `now` (epoch seconds); negative when it
    lies in the future."""
    return now - occurred_at.timestamp()


def outside(occurred_at: datetime, now: float, window: float) -> bool:
    return age(occurred_at, now) > window


def ahead(occurred_at: datetime, now: float, skew: float) -> bool:
    """Whether `occurred_at` lies further in the future than the clock skew allowed."""
    return -age(occurred_at, now) > skew


def reason_ahead(occurred_at: datetime, now: float, skew: float) -> str:
    return (
        f"{AHEAD_OF_CLOCK}: it occurred at {occurred_at.isoformat()}, "
        f"{duration(-age(occurred_at, now))} in this worker's future, more than the clock skew "
        f"allowed (CHOREO_MAX_CLOCK_SKEW {duration(skew)}): its age cannot be trusted, so it is "
        "not run (a sender's clock is ahead: fix it, then replay)"
    )


def reason(occurred_at: datetime, now: float, window: float) -> str:
    """Why a message is not run: stable prefix first (replay, the docs and alerts name it)."""
    return (
        f"{OUTSIDE_WINDOW}: it occurred {duration(age(occurred_at, now))} ago "
        f"({occurred_at.isoformat()}), longer than the dedup window "
        f"(CHOREO_DEDUP_WINDOW {duration(window)}): its dedup record may be gone, so it is not "
        "run again"
    )


def parse_occurred_at(value: object) -> datetime | None:
    """An envelope's `occurred_at` as it is on the wire (ISO 8601 with a zone), or None when it
    is missing or unreadable (an operator's view of a dead letter: never raises)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None
