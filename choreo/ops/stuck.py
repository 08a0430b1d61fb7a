"""Stuck sagas for the operator: `choreo stuck`, the agent's `stuck_sagas` tool and the waiting
line of `choreo order`, all from one report.

The reading itself (which sagas are open, on which service they wait, since when, and which are
stuck) is choreo.app.stuck: the order worker's gauges and the order view read it too, and they
may not import operator tooling. It is re-exported here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich import box
from rich.table import Table

from choreo.app.stuck import (
    OPEN_STATES,
    STEPS,
    SagaSummary,
    Waiting,
    saga_summary,
    step_deadline,
    stuck_sagas,
)
from choreo.messaging.topology import Names
from config.settings import Settings
from models.tables import utcnow

__all__ = [
    "STEPS",
    "SagaSummary",
    "Waiting",
    "describe_waiting",
    "human_seconds",
    "legend",
    "report",
    "saga_summary",
    "stuck_sagas",
    "stuck_table",
    "waiting_queue",
]
DEFAULT_LISTED = 50


def report(
    settings: Settings,
    *,
    step: str | None = None,
    older_than: float | None = None,
    fraction: float | None = None,
    limit: int = DEFAULT_LISTED,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The stuck sagas (longest in their step first, at most `limit`) and the open ones counted,
    at one instant: what `choreo stuck --json` prints and the agent's tool returns."""
    now = now or utcnow()
    share = None if older_than is not None else criteria_fraction(settings, fraction)
    rows = stuck_sagas(
        settings, step=step, older_than=older_than, fraction=fraction, limit=limit + 1, now=now
    )
    summary = saga_summary(settings, fraction=fraction, now=now)
    open_by_state = dict.fromkeys(OPEN_STATES, 0)
    for (state, _age), n in summary.open.items():
        open_by_state[state] += n
    return {
        "at": now.isoformat(),
        "criteria": {
            "step": step,
            "older_than_seconds": older_than,
            "fraction": share,
            "text": criteria_text(settings, share, older_than),
        },
        "open": summary.open_total,
        "open_by_state": open_by_state,
        "stuck": [w.as_dict() for w in rows[:limit]],
        "more": len(rows) > limit,
    }


def criteria_fraction(settings: Settings, fraction: float | None) -> float:
    return settings.stuck_fraction if fraction is None else fraction


def criteria_text(settings: Settings, share: float | None, older_than: float | None) -> str:
    """What "stuck" meant for a report, in words."""
    if older_than is not None or share is None:
        return f"more than {human_seconds(older_than or 0)} in their step"
    deadlines = ", ".join(f"{s} {human_seconds(step_deadline(settings, s))}" for s in STEPS)
    return (
        f"past {share:.0%} of their step's deadline ({deadlines}) "
        f"or of the saga's ({human_seconds(settings.deadline('saga'))})"
    )


def human_seconds(seconds: float) -> str:
    """42s, 5m, 5m12s, 2h05m, 1d03h."""
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s % 60 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def clock(at: str | None, now: datetime | None = None) -> str:
    """An ISO time as HH:MM:SSZ (UTC), with its date when it is not today's."""
    if at is None:
        return "-"
    when = datetime.fromisoformat(at)
    today = (now or utcnow()).date()
    return when.strftime("%H:%M:%SZ" if when.date() == today else "%Y-%m-%d %H:%M:%SZ")


def _waits_on(w: dict[str, Any]) -> str:
    return w["service"] if w["step"] == w["service"] else f"{w['service']} ({w['step']})"


def _due(w: dict[str, Any], now: datetime | None = None) -> str:
    """When the deadline falls, and what its timer says."""
    due = clock(w["deadline_at"], now)
    if w["due_at"] is None:
        return f"{due}, no timer"
    if w["timer_fired"]:
        return f"{due}, timer fired {w['timer_fired']}x, next {clock(w['due_at'], now)}"
    return clock(w["due_at"], now)


def waiting_queue(settings: Settings, service: str) -> dict[str, Any]:
    """The live figures of the queue an open order's message waits in (the service's own queue),
    asked of the broker now as the operator: name, messages, consumers (None: not answered)."""
    from choreo.messaging.admin import BrokerAdmin  # the broker only when an order waits

    name = Names(settings.namespace).queue(service)
    found: dict[str, Any] = {"name": name, "messages": None, "consumers": None}
    try:
        with BrokerAdmin(settings) as admin:
            stats = {q["name"]: q for q in admin.queue_stats()}
    except Exception as exc:  # the order is still worth showing without the broker
        return {**found, "error": repr(exc)[:200]}
    return {**found, **{k: stats.get(name, {}).get(k) for k in ("messages", "consumers")}}


def describe_queue(queue: dict[str, Any]) -> str:
    """`in choreo.payment: 79 messages, 0 consumers (worker down?)`: where the order waits."""
    if queue.get("consumers") is None:
        return f"in {queue['name']}: its figures are unknown (the broker did not answer)"
    line = f"in {queue['name']}: {queue['messages']} messages, {queue['consumers']} consumers"
    if queue["consumers"] == 0:
        return f"{line} [red](worker down? `choreo status`, `choreo up`)[/red]"
    return line


def describe_waiting(w: dict[str, Any], now: datetime | None = None) -> str:
    """`choreo order`'s line for an open order (a Waiting.as_dict()), and where it waits when
    `w["queue"]` has the queue's figures (waiting_queue)."""
    line = (
        f"waiting on {_waits_on(w)} for {human_seconds(w['step_age_seconds'])} "
        f"(deadline {human_seconds(w['deadline_seconds'])}, due {_due(w, now)})"
    )
    if w["overdue"]:
        line = f"{line} [red]OVERDUE[/red]"
    elif w["stuck"]:
        line = f"{line} [yellow]stuck[/yellow]"
    return f"{line}\n  {describe_queue(w['queue'])}" if w.get("queue") else line


def _due_cell(w: dict[str, Any], now: datetime) -> str:
    """The due column: the timer's due time; "fired Nx" once it fired; ~time without a timer."""
    if w["due_at"] is None:
        return f"~{clock(w['deadline_at'], now)}"
    if w["timer_fired"]:
        return f"fired {w['timer_fired']}x"
    return clock(w["due_at"], now)


def legend(data: dict[str, Any]) -> list[str]:
    """What the table's words mean, printed under it."""
    lines = [
        f"stuck: {data['criteria']['text']}",
        "due: when the order's timer fires (~: no timer row, when its deadline falls)",
    ]
    if any(w["step"] == "refund" for w in data["stuck"]):
        lines.append("refund: a CANCELLING order waiting on payment (no timer ends that wait)")
    return lines


def stuck_table(data: dict[str, Any]) -> Table:
    """The report as a table, one row per stuck saga (six columns: fits 80 with real ids)."""
    now = datetime.fromisoformat(data["at"])
    more = "+" if data["more"] else ""
    table = Table(
        title=f"stuck sagas ({len(data['stuck'])}{more} of {data['open']} open)",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("order", no_wrap=True)
    for col in ("waiting on", "in step", "saga age", "deadline", "due"):
        table.add_column(col)
    for w in data["stuck"]:
        deadline = human_seconds(w["deadline_seconds"])
        table.add_row(
            w["order_id"],
            w["step"],
            human_seconds(w["step_age_seconds"]),
            human_seconds(w["saga_age_seconds"]),
            f"{deadline} [red]OVERDUE[/red]" if w["overdue"] else deadline,
            _due_cell(w, now),
        )
    return table
