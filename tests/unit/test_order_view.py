"""`choreo order`'s timeline at 80 columns: every time whole, in order, the date said once."""

from __future__ import annotations

import io
import re

from rich.console import Console

from choreo.ops.render import timeline_table

TIMELINE = [
    {
        "at": "2026-12-07T07:18:22.041000+00:00",
        "service": "order",
        "what": "recorded OrderRejected",
        "detail": "price_mismatch: client price differs from the catalog: SKU-RED at 1000 "
        "(catalog 1299), SKU-BLUE at 1 (catalog 2450)",
    },
    {
        "at": "2026-12-07T07:18:22.513000",  # SQLite keeps no zone: UTC
        "service": "notification",
        "what": "handled order.cancelled",
        "detail": "6f1c1e1a-8f7e-4c1b-9a55-2a0c6b3c9d10",
    },
    {
        "at": "2026-12-08T00:00:01.999000+01:00",  # another zone: shown in UTC
        "service": "notification",
        "what": "emitted [bold]x[/bold]",  # markup in data stays text
        "detail": "sent",
    },
    {"at": "2026-12-08T00:00:02+00:00", "service": "order", "what": "recorded X", "detail": None},
]


def render(width: int) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(timeline_table(TIMELINE))
    return out.getvalue()


def test_at_80_columns_every_time_is_whole_and_in_order():
    text = render(80)
    assert max(len(line) for line in text.splitlines()) <= 80
    times = re.findall(r"\d\d:\d\d:\d\d\.\d\d\d", text)
    assert times == ["07:18:22.041", "07:18:22.513", "23:00:01.999", "00:00:02.000"]
    assert "2026-12-07T" not in text  # no cut-off ISO stamps


def test_the_date_is_in_the_title_and_again_where_the_day_changes():
    text = render(80)
    assert "timeline, 2026-12-07 (UTC)" in text
    assert text.index("23:00:01.999") < text.index("2026-12-08") < text.index("00:00:02.000")


def column(text: str, n: int) -> str:
    """Column n's cells of a rendered table, read top to bottom and joined."""
    cells = [line.split("│")[n + 1].strip() for line in text.splitlines() if line.startswith("│")]
    return " ".join(c for c in cells if c)


def test_a_long_detail_folds_and_loses_nothing():
    text = render(80)
    assert column(text, 3).startswith(TIMELINE[0]["detail"] + " " + TIMELINE[1]["detail"][:20])
    assert "emitted [bold]x[/bold]" in column(text, 2)  # markup in the data is shown as text


def test_an_empty_timeline_renders():
    out = io.StringIO()
    Console(file=out, width=80).print(timeline_table([]))
    assert "timeline" in out.getvalue()
