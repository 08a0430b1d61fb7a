"""The dedup window's one rule: a message is acted on only while its dedup record could still exist.

A consumer writes its inbox row (and any copy record) when it handles a message, at a time no
earlier than the message's `occurred_at`, and keeps it for the dedup window (CHOREO_DEDUP_WINDOW).
So a message whose `occurred_at` is at most a window old finds the record if one was ever written;
an older one might not, and would run again (charge twice). The consumer dead-letters it instead
(tasks.adapter), with a reason starting OUTSIDE_WINDOW, and `choreo dlq replay` refuses such a
dead letter unless the operator forces it (choreo.ops.replay). The settings refuse a window
shorter than the longest legitimate way back (config.settings.Settings.longest_return).

An `occurred_at` in the future (a sender's clock ahead) is accepted: the record is written at the
consumer's own time and kept a window from then, so a copy arriving later still finds it.
"""

from __future__ import annotations

from datetime import datetime

from config.settings import duration

OUTSIDE_WINDOW = "outside dedup window"


def age(occurred_at: datetime, now: float) -> float:
    """Seconds since `occurred_at` by the clock reading `now` (epoch seconds); negative when it
    lies in the future."""
    return now - occurred_at.timestamp()


def outside(occurred_at: datetime, now: float, window: float) -> bool:
    return age(occurred_at, now) > window


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
