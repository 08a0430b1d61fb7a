"""`choreo status`'s counters line says since when they count."""

from __future__ import annotations

from choreo.cli.inspect import counters_line


def test_the_counters_line_says_since_when_or_that_it_is_unrecorded():
    data = {"metrics": {"processed": {"order": 3, "payment": 2}, "retries": {}}}
    line = counters_line({**data, "metrics_since": "2026-12-07T07:17:35+00:00"})
    assert line == "counters since 2026-12-07T07:17:35+00:00: processed order=3, payment=2"
    assert counters_line(data).startswith("counters since unrecorded (`choreo up` on a stopped")
