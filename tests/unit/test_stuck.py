"""Stuck sagas without a database: which step an open order waits in and on which service, its
ages against its deadlines, when it counts as stuck or overdue, the age buckets, the gauge's
samples, and how the CLI words it. The SQL side (the same criteria as cut-off times) is in
tests/integration/test_stuck_agree.py, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry
from rich.console import Console

from choreo.app import stuck
from choreo.app.stuck import AGE_BUCKETS, Criteria, SagaSummary, age_bucket, waiting, waiting_of
from choreo.infra.telemetry import ScrapeTime, saga_families
from choreo.ops.stuck import clock, describe_waiting, human_seconds, legend, stuck_table
from config.settings import Settings
from consumers.order.rules import STATES, TERMINAL, WAITING_ON

NOW = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


@pytest.fixture
def settings(tmp_path) -> Settings:
    # The defaults, named: payment 300 s, inventory 300 s, shipment 600 s, saga 1800 s, half.
    return Settings(
        run_dir=tmp_path / "run",
        data_dir=tmp_path / "data",
        deadline_payment=300,
        deadline_inventory=300,
        deadline_shipment=600,
        deadline_saga=1800,
        stuck_fraction=0.5,
    )


def wait(settings, state, placed, since, timer=(None, None, None), criteria=None):
    return waiting_of(
        settings,
        criteria or Criteria.of(settings),
        NOW,
        order_id="ord-1",
        state=state,
        placed_at=placed,
        since=since,
        timer=timer,
    )


def test_every_open_state_waits_on_one_service_in_one_step():
    assert set(stuck.OPEN_STATES) == set(STATES) - set(TERMINAL)
    assert {s: stuck.STEP_OF[s] for s in WAITING_ON} == WAITING_ON
    assert stuck.STEP_OF["CANCELLING"] == "refund" and stuck.SERVICE_OF["CANCELLING"] == "payment"
    assert set(stuck.STEPS) == {"payment", "inventory", "shipment", "refund"}
    assert set(stuck.SINCE_FIELD) == set(stuck.OPEN_STATES)
    assert all(stuck.state_of_step(stuck.STEP_OF[s]) == s for s in stuck.OPEN_STATES)
    with pytest.raises(ValueError, match="one of payment, inventory, shipment, refund"):
        stuck.state_of_step("saga")


def test_stuck_is_half_the_steps_deadline_or_half_the_sagas_by_default(settings):
    c = Criteria.of(settings)
    assert c.step == {"PLACED": 150, "PAID": 150, "RESERVED": 300, "CANCELLING": 150}
    assert c.saga == 900
    assert c.why("PLACED", 150, 150) is None  # at the line: not past it
    assert c.why("PLACED", 150.5, 150.5) == "step"
    assert c.why("PAID", 20, 901) == "saga"  # a quick step of a slow saga
    assert c.why("RESERVED", 299, 400) is None
    assert Criteria.of(settings, fraction=1.0).step["RESERVED"] == 600


def test_older_than_replaces_both_measures_with_time_in_step(settings):
    c = Criteria.of(settings, older_than=300)
    assert set(c.step.values()) == {300.0} and c.saga is None
    assert c.why("PAID", 20, 5000) is None  # an old saga, but only 20 s in its step
    assert c.why("PLACED", 301, 301) == "step"
    with pytest.raises(ValueError, match="older_than"):
        Criteria.of(settings, older_than=-1)
    with pytest.raises(ValueError, match="fraction"):
        Criteria.of(settings, fraction=0)


@pytest.mark.parametrize(
    "seconds,bucket",
    [(0, "lt_1m"), (59.9, "lt_1m"), (60, "1m_5m"), (299, "1m_5m"), (300, "5m_30m")]
    + [(1799.9, "5m_30m"), (1800, "gt_30m"), (10**6, "gt_30m")],
)
def test_age_buckets(seconds, bucket):
    assert age_bucket(seconds) == bucket
    assert [label for label, _ in AGE_BUCKETS] == ["lt_1m", "1m_5m", "5m_30m", "gt_30m"]


def test_a_placed_order_waits_on_payment_since_it_was_placed(settings):
    w = wait(settings, "PLACED", ago(400), ago(400), ("payment", ago(100), 0))
    assert (w.step, w.service, w.step_age, w.saga_age) == ("payment", "payment", 400, 400)
    assert w.deadline == 300 and w.deadline_at == ago(100)
    assert w.overdue and w.stuck and w.why == "step"
    assert (w.timer_step, w.due_at, w.fired) == ("payment", ago(100), 0)


def test_the_deadline_is_the_earlier_of_the_steps_and_the_sagas(settings):
    # Reserved 100 s ago, placed 1750 s ago: the saga's deadline (50 s ahead) comes first.
    w = wait(settings, "RESERVED", ago(1750), ago(100))
    assert w.deadline == 600 and w.deadline_at == NOW + timedelta(seconds=50)
    assert not w.overdue and w.why == "saga" and w.due_at is None
    late = wait(settings, "RESERVED", ago(1850), ago(100))
    assert late.overdue  # past the saga's deadline, not the step's


def test_a_cancelling_order_waits_on_its_refund_measured_by_the_payment_deadline(settings):
    w = wait(settings, "CANCELLING", ago(200), ago(160))
    assert (w.step, w.service, w.deadline, w.step_age) == ("refund", "payment", 300, 160)
    assert w.stuck and not w.overdue


def test_stored_times_naive_or_text_are_utc(settings):
    naive = ago(400).replace(tzinfo=None)
    text = ago(400).replace(tzinfo=None).isoformat(sep=" ")
    for stored in (naive, text, ago(400).astimezone(tz=None)):
        w = wait(settings, "PLACED", stored, stored)
        assert w.step_age == 400 and w.since == ago(400) and w.since.tzinfo is not None


def test_the_order_views_wait_reads_the_states_milestone(settings):
    view = SimpleNamespace(
        order_id="ord-1",
        state="PAID",
        placed_at=ago(500),
        paid_at=ago(30),
        reserved_at=None,
        updated_at=ago(30),
    )
    w = waiting(settings, view, None, NOW)  # type: ignore[arg-type]
    assert w is not None and (w.step, w.step_age, w.saga_age) == ("inventory", 30, 500)
    assert not w.stuck
    view.state = "COMPLETED"
    assert waiting(settings, view, None, NOW) is None  # type: ignore[arg-type]


def test_the_gauge_has_every_state_age_and_step_zeros_included(settings):
    opened = {(s, a): 0 for s in stuck.OPEN_STATES for a, _ in AGE_BUCKETS}
    opened[("PLACED", "5m_30m")] = 3
    summary = SagaSummary(opened, {**dict.fromkeys(stuck.STEPS, 0), "payment": 2})
    collector = ScrapeTime()
    collector.add(saga_families(lambda: summary))
    registry = CollectorRegistry()
    registry.register(collector)
    get = registry.get_sample_value
    assert get("choreo_open_sagas", {"state": "PLACED", "age": "5m_30m"}) == 3
    assert get("choreo_open_sagas", {"state": "CANCELLING", "age": "gt_30m"}) == 0
    assert get("choreo_stuck_sagas", {"step": "payment"}) == 2
    assert get("choreo_stuck_sagas", {"step": "refund"}) == 0
    samples = [s for m in registry.collect() for s in m.samples]
    assert len(samples) == 16 + 4
    assert summary.open_total == 3 and summary.stuck_total == 2
    assert summary.as_dict()["open"]["PLACED"]["5m_30m"] == 3


@pytest.mark.parametrize(
    "seconds,text",
    [(0, "0s"), (42.9, "42s"), (300, "5m"), (312, "5m12s"), (7500, "2h05m"), (97200, "1d03h")],
)
def test_human_seconds(seconds, text):
    assert human_seconds(seconds) == text


def test_the_waiting_line_of_choreo_order(settings):
    overdue = wait(settings, "PLACED", ago(400), ago(400), ("payment", ago(100), 0)).as_dict()
    assert describe_waiting(overdue, NOW) == (
        "waiting on payment for 6m40s (deadline 5m, due 11:58:20Z) [red]OVERDUE[/red]"
    )
    fired = wait(settings, "PLACED", ago(400), ago(400), ("payment", ago(-20), 3)).as_dict()
    assert "due 11:58:20Z, timer fired 3x, next 12:00:20Z" in describe_waiting(fired, NOW)
    refund = wait(settings, "CANCELLING", ago(200), ago(160)).as_dict()
    assert describe_waiting(refund, NOW) == (
        "waiting on payment (refund) for 2m40s (deadline 5m, due 12:02:20Z, no timer) "
        "[yellow]stuck[/yellow]"
    )
    fresh = wait(settings, "PAID", ago(20), ago(10)).as_dict()
    assert not describe_waiting(fresh, NOW).endswith("]")
    assert clock((NOW - timedelta(days=2)).isoformat(), NOW) == "2026-12-05 12:00:00Z"


def test_the_waiting_line_says_in_which_queue_and_whether_anything_consumes_it(settings):
    w = wait(settings, "PLACED", ago(130), ago(130)).as_dict()
    w["queue"] = {"name": "choreo.payment", "messages": 79, "consumers": 0}
    first, second = describe_waiting(w, NOW).split("\n")
    assert first.startswith("waiting on payment for 2m10s")
    assert second == (
        "  in choreo.payment: 79 messages, 0 consumers "
        "[red](worker down? `choreo status`, `choreo up`)[/red]"
    )
    w["queue"] = {"name": "choreo.payment", "messages": 3, "consumers": 1}
    assert describe_waiting(w, NOW).endswith("\n  in choreo.payment: 3 messages, 1 consumers")
    w["queue"] = {"name": "choreo.payment", "messages": None, "consumers": None, "error": "x"}
    assert "figures are unknown (the broker did not answer)" in describe_waiting(w, NOW)


def test_the_table_has_a_row_per_stuck_saga(settings):
    rows = [
        wait(settings, "PLACED", ago(400), ago(400), ("payment", ago(100), 0)).as_dict(),
        wait(settings, "PAID", ago(1000), ago(20)).as_dict(),
    ]
    data = {
        "at": NOW.isoformat(),
        "open": 7,
        "stuck": rows,
        "more": True,
        "criteria": {"text": "past 50% of ..."},
    }
    console = Console(record=True, width=200)
    console.print(stuck_table(data))
    out = console.export_text()
    assert "stuck sagas (2+ of 7 open)" in out
    assert "ord-1" in out and "6m40s" in out and "OVERDUE" in out and "16m40s" in out
    assert "fired" not in out and "11:58:20Z" in out and "~12:04:40Z" in out
    assert legend(data)[0] == "stuck: past 50% of ..." and len(legend(data)) == 2


def test_choreo_stuck_is_a_command(tmp_path):
    from click.testing import CliRunner

    from choreo.cli import cli

    out = CliRunner().invoke(cli, ["stuck", "--help"])
    assert out.exit_code == 0, out.output
    assert "--older-than SECONDS" in out.output and "refund" in out.output
    bad = CliRunner().invoke(cli, ["stuck", "--step", "saga"])
    assert bad.exit_code == 2
