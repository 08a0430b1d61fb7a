"""Rich tables the CLI and the chaos harness both print."""

from __future__ import annotations

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
