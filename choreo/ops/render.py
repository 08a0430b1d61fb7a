"""Rich tables the CLI and the chaos harness both print."""

from __future__ import annotations

from datetime import UTC, date, datetime

from rich.markup import escape
from rich.table import Table


def outcome_table(rows: list[dict]) -> Table:
    """Orders by scenario, expected against actual outcome (rows from workload.outcomes)."""
    table = Table(title="orders by scenario")
    for col in ("scenario", "orders", "expected", "actual", "ok"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["scenario"],
            str(r["orders"]),
            r["expected"],
            ", ".join(f"{k}: {v}" for k, v in sorted(r["actual"].items())),
            "[green]yes[/green]" if r["ok"] else "[red]NO[/red]",
        )
    return table


def _utc(at: str | None) -> datetime | None:
    """A stored time as UTC (a naive one is UTC already: SQLite keeps no zone)."""
    if not at:
        return None
    when = datetime.fromisoformat(at)
    return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)


def timeline_table(timeline: list[dict]) -> Table:
    """An order's timeline (order_details' rows), readable at 80 columns: each time is the time
    of day, HH:MM:SS.mmm UTC, never cut; the date is in the title, and a row of its own where
    the day changes. What and detail fold onto more lines instead."""
    days: list[date] = sorted({w.date() for t in timeline if (w := _utc(t["at"])) is not None})
    title = f"timeline, {days[0].isoformat()} (UTC)" if days else "timeline"
    table = Table(title=title)
    table.add_column("at", no_wrap=True, min_width=12)
    table.add_column("service", no_wrap=True)
    table.add_column("what", overflow="fold")
    table.add_column("detail", overflow="fold")
    day = days[0] if days else None
    for t in timeline:
        when = _utc(t["at"])
        if when is not None and when.date() != day:
            day = when.date()
            table.add_row(f"[dim]{day.isoformat()}[/dim]", "", "", "")
        at = f"{when:%H:%M:%S}.{when.microsecond // 1000:03d}" if when is not None else ""
        table.add_row(at, t["service"], escape(t["what"]), escape(str(t["detail"] or "")))
    return table
