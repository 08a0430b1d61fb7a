"""Stuck sagas on a real order database (SQLite, and PostgreSQL in `make test`'s second pass):
order_view rows written with times in the past, then one answer from every view of them:
`stuck_sagas`, `choreo stuck` (table and JSON), `choreo order`'s waiting field, the order
worker's gauges, and the agent's tool (called directly and through the agent loop)."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlmodel import Session

pytestmark = pytest.mark.integration

# Each order: (state, seconds since placed, seconds since its step started, timer row or None).
# The defaults: stuck past 150 s in payment/inventory/refund, 300 s in shipment, or 900 s since
# placed; overdue past 300/300/600 s in the step or 1800 s since placed. Every age is at least
# 10 s from a line, so the CLI's own "now" a moment later sees the same.
ORDERS = {
    "st-reserved-overdue": ("RESERVED", 700, 620, None),
    "st-placed-overdue": ("PLACED", 400, 400, ("payment", 100, 1)),  # its timer fired once
    "st-placed-stuck": ("PLACED", 200, 200, ("payment", -100, 0)),
    "st-cancelling": ("CANCELLING", 300, 170, None),
    "st-paid-old-saga": ("PAID", 1000, 20, ("inventory", -280, 0)),
    "st-placed-fresh": ("PLACED", 10, 10, ("payment", -290, 0)),
    "st-paid-fresh": ("PAID", 100, 50, None),
    "st-completed": ("COMPLETED", 5000, 4000, None),
    "st-attention": ("NEEDS_ATTENTION", 5000, 4000, None),
}
STUCK = [  # longest in its step first
    "st-reserved-overdue",
    "st-placed-overdue",
    "st-placed-stuck",
    "st-cancelling",
    "st-paid-old-saga",
]
OVERDUE = {"st-reserved-overdue", "st-placed-overdue"}
MILESTONE = {"PAID": "paid_at", "RESERVED": "reserved_at"}


@pytest.fixture
def world(settings, tmp_path, monkeypatch):
    """Settings on a fresh data folder (a fresh database prefix on PostgreSQL) holding ORDERS,
    the time they were written at, and this shell's environment pointed at it (for the CLI)."""
    from choreo.infra import db, schema
    from config.settings import SERVICES, get_settings
    from consumers.order.tables import OrderDeadline, OrderView
    from models.tables import utcnow

    prefix = f"{settings.database_prefix}_st{uuid.uuid4().hex[:6]}"
    s = settings.model_copy(update={"data_dir": tmp_path, "database_prefix": prefix})
    for service in SERVICES:  # `choreo order` reads every service's tables
        schema.upgrade(s, service)
    now = utcnow()
    with Session(db.engine_for(s, "order")) as session:
        for order_id, (state, placed, in_step, timer) in ORDERS.items():
            since = now - timedelta(seconds=in_step)
            view = OrderView(
                order_id=order_id,
                state=state,
                customer_id="cust-1",
                placed_at=now - timedelta(seconds=placed),
                updated_at=since,
            )
            if state in MILESTONE:
                setattr(view, MILESTONE[state], since)
            if state in ("PAID", "RESERVED", "CANCELLING"):
                view.paid_at = view.paid_at or now - timedelta(seconds=placed - 5)
            session.add(view)
            if timer is not None:
                step, due_ago, fired = timer
                due = now - timedelta(seconds=due_ago)
                session.add(
                    OrderDeadline(
                        order_id=order_id,
                        step=step,
                        step_due_at=due,
                        saga_due_at=now + timedelta(seconds=1800 - placed),
                        due_at=due,
                        fired=fired,
                    )
                )
        session.commit()
    monkeypatch.setenv("CHOREO_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CHOREO_DATABASE_PREFIX", prefix)
    get_settings.cache_clear()
    yield s, now
    get_settings.cache_clear()
    db.dispose_engines(str(tmp_path))
    db.dispose_engines(f"/{prefix}_")


def choreo(*args: str):
    from choreo.cli import cli

    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_stuck_sagas_are_the_open_ones_past_their_steps_or_sagas_line(world):
    from choreo.app.stuck import saga_summary, stuck_sagas

    s, now = world
    rows = stuck_sagas(s, now=now)
    assert [w.order_id for w in rows] == STUCK
    assert {w.order_id for w in rows if w.overdue} == OVERDUE
    by_id = {w.order_id: w for w in rows}
    assert by_id["st-paid-old-saga"].why == "saga" and by_id["st-placed-stuck"].why == "step"
    assert (by_id["st-cancelling"].step, by_id["st-cancelling"].service) == ("refund", "payment")
    assert by_id["st-reserved-overdue"].step_age == pytest.approx(620, abs=0.01)
    assert by_id["st-paid-old-saga"].saga_age == pytest.approx(1000, abs=0.01)
    timer = by_id["st-placed-overdue"]
    assert (timer.timer_step, timer.fired) == ("payment", 1)
    assert timer.due_at == pytest.approx(now - timedelta(seconds=100), abs=timedelta(seconds=0.01))
    assert by_id["st-cancelling"].due_at is None  # no timer row: a LEFT JOIN, not a loss

    # "Which orders are waiting on payment for more than 5 minutes?"
    assert [w.order_id for w in stuck_sagas(s, step="payment", older_than=300, now=now)] == [
        "st-placed-overdue"
    ]
    assert [w.order_id for w in stuck_sagas(s, step="payment", now=now)] == STUCK[1:3]
    assert [w.order_id for w in stuck_sagas(s, older_than=300, now=now)] == STUCK[:2]
    assert [w.order_id for w in stuck_sagas(s, limit=2, now=now)] == STUCK[:2]
    assert stuck_sagas(s, step="shipment", older_than=10**6, now=now) == []

    summary = saga_summary(s, now=now)
    assert summary.open_total == 7
    assert summary.stuck == Counter(w.step for w in rows)
    assert summary.stuck == {"payment": 2, "inventory": 1, "shipment": 1, "refund": 1}
    assert summary.open[("PLACED", "lt_1m")] == 1 and summary.open[("PLACED", "5m_30m")] == 1
    assert summary.open[("PLACED", "1m_5m")] == 1 and summary.open[("PAID", "5m_30m")] == 1
    assert summary.open[("RESERVED", "5m_30m")] == 1 and summary.open[("CANCELLING", "5m_30m")]


def test_the_cli_the_json_the_gauge_and_the_agent_give_one_answer(world):
    from prometheus_client import CollectorRegistry

    from choreo.agent import tools
    from choreo.app.stuck import saga_summary, stuck_sagas
    from choreo.infra.telemetry import ScrapeTime, saga_families

    s, now = world
    listed = [(w.order_id, w.step, w.overdue) for w in stuck_sagas(s)]
    assert [o for o, _, _ in listed] == STUCK

    data = json.loads(choreo("stuck", "--json"))
    assert [(w["order_id"], w["step"], w["overdue"]) for w in data["stuck"]] == listed
    assert data["open"] == 7 and data["more"] is False
    assert data["open_by_state"] == {"PLACED": 3, "PAID": 2, "RESERVED": 1, "CANCELLING": 1}

    table = choreo("stuck")
    assert "stuck sagas (5 of 7 open)" in table
    assert all(order_id in table for order_id in STUCK)
    assert "st-placed-fresh" not in table and "OVERDUE" in table

    payment = json.loads(choreo("stuck", "--json", "--step", "payment", "--older-than", "300"))
    assert [w["order_id"] for w in payment["stuck"]] == ["st-placed-overdue"]
    assert choreo("stuck", "--step", "inventory", "--older-than", "100000").strip() == (
        "no stuck sagas (open: 7)"
    )

    collector = ScrapeTime()
    collector.add(saga_families(lambda: saga_summary(s)))
    registry = CollectorRegistry()
    registry.register(collector)
    for step, n in Counter(step for _, step, _ in listed).items():
        assert registry.get_sample_value("choreo_stuck_sagas", {"step": step}) == n
    assert registry.get_sample_value("choreo_stuck_sagas", {"step": "shipment"}) == 1
    open_samples = [
        smp.value for m in registry.collect() if m.name == "choreo_open_sagas" for smp in m.samples
    ]
    assert sum(open_samples) == 7 and len(open_samples) == 16

    tool = tools.stuck_sagas(s)
    assert [(w["order_id"], w["step"], w["overdue"]) for w in tool["stuck"]] == listed
    assert [w["order_id"] for w in tools.stuck_sagas(s, "payment", 300)["stuck"]] == [
        "st-placed-overdue"
    ]


def test_the_agent_loop_calls_the_stuck_sagas_tool(world, monkeypatch):
    from choreo.agent.loop import Agent, make_client
    from choreo.agent.tools import catalog
    from tests.fake_anthropic import FakeMessagesAPI, text, tool_use

    s, _ = world
    script = [
        [tool_use("stuck_sagas", {"step": "payment", "older_than_seconds": 300}, "toolu_s")],
        [text("st-placed-overdue has waited on payment for 6m40s (stuck_sagas).")],
    ]
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-not-a-real-key")
    with FakeMessagesAPI(script) as fake:
        agent_settings = s.model_copy(
            update={"agent_base_url": fake.url, "agent_max_retries": 0, "run_dir": s.data_dir}
        )
        Agent(agent_settings, make_client(agent_settings), catalog()).ask(
            "which orders are waiting on payment for more than 5 minutes?"
        )
    sent = {t["name"]: t for t in fake.requests[0]["body"]["tools"]}
    assert sent["stuck_sagas"]["input_schema"]["properties"]["step"]["enum"] == [
        "payment",
        "inventory",
        "shipment",
        "refund",
    ]
    (result,) = fake.tool_results(1)
    assert not result.get("is_error"), result
    data = json.loads(result["content"])
    assert [w["order_id"] for w in data["stuck"]] == ["st-placed-overdue"]
    assert data["stuck"][0]["step_age_seconds"] >= 400


def test_choreo_order_says_what_an_open_order_waits_on(world):
    s, _ = world
    line = choreo("order", "st-placed-overdue")
    assert "waiting on payment for 6m4" in line and "(deadline 5m, due " in line
    assert "timer fired 1x" in line and "OVERDUE" in line
    data = json.loads(choreo("order", "st-placed-overdue", "--json"))
    w = data["waiting"]
    assert (w["service"], w["step"], w["overdue"], w["timer_fired"]) == (
        "payment",
        "payment",
        True,
        1,
    )
    assert w["deadline_seconds"] == s.deadline("payment") and w["due_at"] is not None
    refund = json.loads(choreo("order", "st-cancelling", "--json"))["waiting"]
    assert (refund["service"], refund["step"], refund["due_at"]) == ("payment", "refund", None)
    assert json.loads(choreo("order", "st-completed", "--json"))["waiting"] is None
    assert "waiting on" not in choreo("order", "st-completed")
