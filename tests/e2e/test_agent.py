"""The operator agent against the real stack: every tool over real stores with known orders,
and `choreo ask` with the real SDK talking to a local fake Messages API (no network) whose
scripted turns call the real tools and propose a replay the operator refuses, then confirms."""

from __future__ import annotations

import json

import pytest

from config.settings import DOMAINS
from tests.e2e.test_dlq_replay import _leave_in_dlq, _letters, _order_placed
from tests.fake_anthropic import FakeMessagesAPI, text, tool_use
from tests.helpers import settled, sqlite_pass_only, wait_for


@pytest.fixture(scope="module")
def known(settings, stack):
    from choreo.ops.scenarios import SCENARIOS
    from choreo.ops.workload import publish_orders

    sent = publish_orders(settings, list(SCENARIOS), seed=None)
    states = settled(settings, [o for o, _ in sent])
    return {scenario: (order_id, states[order_id]) for order_id, scenario in sent}


def test_every_tool_answers_from_the_real_stores(settings, known):
    from choreo.agent import tools as t

    for scenario, (order_id, (state, reason)) in known.items():
        got = t.get_order(settings, order_id)
        assert got["found"] and (got["state"], got["reason"]) == (state, reason), scenario
        services = {step["service"] for step in got["timeline"]}
        # a refused order (a wrong price, an unknown SKU) never reaches payment
        assert "payment" in services or reason in ("price_mismatch", "unknown_sku"), scenario
    assert t.get_order(settings, "ord-never-placed") == {
        "order_id": "ord-never-placed",
        "found": False,
    }
    completed = t.find_orders(settings, state="completed", limit=1000)
    assert (
        known["completed"][0] in {o["order_id"] for o in completed["orders"]} or completed["more"]
    )
    assert len(completed["orders"]) <= t.MAX_ITEMS
    assert t.find_orders(settings, state="NO_SUCH_STATE") == {"orders": [], "more": False}
    for scenario, (order_id, (state, reason)) in known.items():
        rows = {
            o["order_id"]: o for o in t.find_orders(settings, scenario=scenario, limit=50)["orders"]
        }
        assert all(o["scenario"] == scenario for o in rows.values())
        if order_id in rows:  # newest first: this run's order is among the newest of its scenario
            assert (
                rows[order_id]["expected"]
                == [state, reason]
                == [rows[order_id]["state"], rows[order_id]["reason"]]
            )
    declined = t.find_orders(settings, scenario="declined", limit=50)["orders"]
    assert known["declined"][0] in {o["order_id"] for o in declined}
    with pytest.raises(ValueError, match="unknown scenario"):
        t.find_orders(settings, scenario="nonsense")
    summary = t.system_summary(settings)
    assert summary["orders"]["total"] >= len(known) and any(
        q["name"].endswith(".payment") for q in summary["queues"]
    )
    letters = t.dead_letters(settings, "payment", limit=50)
    assert any(d["order_id"] == known["needs_attention"][0] for d in letters["dead_letters"])
    assert all("body" not in d for d in letters["dead_letters"])
    assert {c["check"] for c in t.audit(settings)["checks"]} >= {"terminal", "money", "stock"}
    assert t.breakers(settings)["breakers"][0]["state"] in ("closed", "open", "half-open")
    health = t.process_health(settings)["processes"]
    assert {"worker-order", "worker-payment"} <= set(health)
    trace = wait_for(
        lambda: (lambda v: v if v.get("found") and len(v["services"]) >= 5 else None)(
            t.order_trace(settings, known["completed"][0])
        ),
        30,
        what="the completed order's trace",
    )
    assert set(trace["services"]) >= set(DOMAINS)
    assert t.order_trace(settings, "ord-never-placed")["found"] is False
    _check_order_metrics(settings, known)
    with pytest.raises(
        RuntimeError, match="could not check"
    ):  # no Prometheus in this stack: said, not guessed
        t.metrics(settings)
    # capped: whatever a tool returns, what reaches the model fits
    assert (
        len(t.capped(t.dead_letters(settings, "payment", limit=50, with_body=True)))
        <= t.MAX_RESULT_CHARS
    )


def _check_order_metrics(settings, known):
    from datetime import datetime

    from choreo.agent import tools as t

    done_id = known["completed"][0]
    got, order = t.order_metrics(settings, done_id), t.get_order(settings, done_id)
    assert got["found"] and got["finished"] and got["state"] == "COMPLETED"
    assert set(got["steps"]) == {"paid", "reserved", "shipped", "ended"}
    span = datetime.fromisoformat(order["ended_at"]) - datetime.fromisoformat(order["placed_at"])
    assert (
        got["steps"]["ended"]["seconds"]
        == pytest.approx(span.total_seconds(), abs=1e-3)
        == got["elapsed_seconds"]
    )
    assert all(
        v["seconds"] >= 0 and v["recent"]["n"] >= 1 and 0 <= v["slower_than_pct"] <= 100
        for v in got["steps"].values()
    )
    assert got["steps"]["ended"]["recent"]["p50"] <= got["steps"]["ended"]["recent"]["p99"]
    hops = {(h["type"], h["to"]) for h in got["hops"]}
    assert {("payment.completed", "inventory"), ("inventory.reserved", "shipment")} <= hops, hops
    assert all(h["seconds"] >= 0 for h in got["hops"])
    declined = t.order_metrics(settings, known["declined"][0])
    assert (
        "paid" not in declined["steps"]
        and "shipped" not in declined["steps"]
        and "ended" in declined["steps"]
    )
    stuck = t.order_metrics(settings, known["needs_attention"][0])
    assert stuck["dead_lettered"] and all(
        d["what"].startswith("dead-lettered") for d in stuck["dead_lettered"]
    )
    assert t.order_metrics(settings, "ord-never-placed") == {
        "order_id": "ord-never-placed",
        "found": False,
    }


@pytest.mark.skipif(
    __import__("shutil").which("prometheus") is None,
    reason="prometheus is not installed (scripts/ensure-services.sh installs it, as root)",
)
@sqlite_pass_only  # the tool reads Prometheus, not a database
def test_the_metrics_tool_reads_the_stacks_prometheus(settings, known):
    from choreo.agent import tools as t
    from choreo.ops import prometheus as prom
    from choreo.ops.workload import publish_orders

    prom.start(settings)
    try:
        prom.wait_ready(settings, 30)

        # a rate needs orders between two scrapes (5 s apart): keep some flowing
        def five_domains():
            settled(settings, [o for o, _ in publish_orders(settings, ["completed"], seed=None)])
            got = t.metrics(settings, window_minutes=2)
            served = {r["service"] for r in got["handled_per_second"] if float(r["value"]) > 0}
            return got if set(DOMAINS) <= served else None

        got = wait_for(five_domains, 90, interval=2, what="handled_per_second of all five domains")
        assert got["window"] == "2m"
        assert {r["process"] for r in got["scraped_up"]} >= {"worker-order", "worker-payment"}
        assert any(
            r["service"] == "payment" and float(r["value"]) == 1 for r in got["consumer_ready"]
        )
        assert all(set(r) >= {"service", "value"} for r in got["latency_p99_seconds"])
        assert isinstance(got["alerts_firing"], list)
        assert len(t.capped(got)) <= t.MAX_RESULT_CHARS
    finally:
        prom.stop(settings)


def _ask(monkeypatch, fake_url: str, question: str, answers: str = ""):
    from click.testing import CliRunner

    from choreo.cli import cli
    from config.settings import get_settings

    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-not-a-real-key")
    monkeypatch.setenv("CHOREO_AGENT_BASE_URL", fake_url)
    monkeypatch.setenv("CHOREO_AGENT_MAX_RETRIES", "0")
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(cli, ["ask", question], input=answers)
    finally:
        monkeypatch.delenv("CHOREO_AGENT_BASE_URL")
        get_settings.cache_clear()


def test_ask_runs_the_real_order_tool_and_its_result_carries_the_real_state(
    settings, known, monkeypatch
):
    order_id, (state, reason) = known["declined"]
    script = [
        [tool_use("get_order", {"order_id": order_id}, "toolu_o")],
        [text(f"Order {order_id} is {state} ({reason}), per get_order.")],
    ]
    with FakeMessagesAPI(script) as fake:
        result = _ask(monkeypatch, fake.url, f"why was order {order_id} cancelled?")
    assert result.exit_code == 0, result.output
    (tool_result,) = fake.tool_results(1)
    data = json.loads(tool_result["content"])
    assert (data["order_id"], data["state"], data["reason"]) == (order_id, state, reason)
    assert data["payment"]["charge"] is None  # declined: nothing was charged
    assert f"Order {order_id} is {state}" in result.output
    assert "transcript:" in result.output


def test_a_proposed_replay_runs_only_on_the_operators_yes(settings, known, monkeypatch):
    from choreo.ops import replay as rp

    env = _order_placed(settings, known["completed"][0])
    _leave_in_dlq(settings, env, "test: for the agent")
    wait_for(lambda: env["event_id"] in _letters(settings), 10, what="the copy in the DLQ")
    proposal = tool_use(
        "propose_replay",
        {"domain": "payment", "event_ids": [env["event_id"]], "why": "a crash left a copy"},
        "toolu_p",
    )

    def script():
        return [
            [proposal],
            [text("I propose replaying it; it was already processed, so it would be absorbed.")],
        ]

    with FakeMessagesAPI(script()) as fake:
        refused = _ask(monkeypatch, fake.url, "is anything unsafe to replay?", answers="n\n")
    assert refused.exit_code == 0, refused.output
    assert json.loads(fake.tool_results(1)[0]["content"])["executed"] is False
    assert "dry run" in refused.output and "Not replayed." in refused.output
    assert env["event_id"] in _letters(settings)
    assert rp.history(settings, "payment", event_id=env["event_id"]) == []

    with FakeMessagesAPI(script()) as fake:
        confirmed = _ask(monkeypatch, fake.url, "is anything unsafe to replay?", answers="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    assert env["event_id"] not in _letters(settings)
    (record,) = rp.history(settings, "payment", event_id=env["event_id"])
    assert (record.outcome, record.already_processed) == ("replayed", True)


def test_ask_without_a_key_is_one_line(monkeypatch):
    from click.testing import CliRunner

    from choreo.cli import cli

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    result = CliRunner().invoke(cli, ["ask", "anything"])
    assert result.exit_code != 0
    assert (
        result.output.strip()
        == "error: set ANTHROPIC_API_KEY to an Anthropic API key to use `choreo ask`"
    )


@pytest.mark.skipif(
    not __import__("os").environ.get("ANTHROPIC_API_KEY"),
    reason="the live check needs ANTHROPIC_API_KEY (it talks to the real API)",
)
def test_live_questions_with_known_answers(settings, known):
    from choreo.agent.loop import Agent, make_client

    order_id, (state, reason) = known["declined"]
    agent = Agent(settings, make_client(settings))
    answer = agent.ask(
        f"Why was order {order_id} cancelled? Answer in one sentence with the reason code."
    )
    assert answer.stopped == "answered" and any(c["name"] == "get_order" for c in answer.tool_calls)
    assert order_id in answer.text and (reason or "").split("_")[-1] in answer.text.lower()
    answer = agent.ask(
        "Which domain's dead-letter queue holds messages right now? Name the domain."
    )
    assert "payment" in answer.text.lower()


def test_a_proposed_start_of_a_stopped_worker_runs_only_on_yes_in_a_conversation(
    settings, stack, monkeypatch
):
    name = "worker-notification"
    proposal = tool_use("propose_start", {"process": name, "why": "it is not running"}, "toolu_s")

    def script():
        return [
            [tool_use("process_health", {}, "toolu_h")],
            [proposal],
            [text(f"{name} is down (process_health); I propose starting it.")],
        ]

    stack.stop(name)
    try:
        with FakeMessagesAPI(
            script()
        ) as fake:  # a conversation: one question, then an empty line ends it
            refused = _ask_conversation(monkeypatch, fake.url, "what is down?\nn\n\n")
        assert refused.exit_code == 0, refused.output
        health = json.loads(fake.tool_results(1)[0]["content"])["processes"]
        assert health[name]["pid"] is None
        assert json.loads(fake.tool_results(2)[0]["content"])["running"] is False
        assert "Not started." in refused.output and stack.pid(name) is None

        with FakeMessagesAPI(script()) as fake:
            confirmed = _ask_conversation(monkeypatch, fake.url, "what is down?\ny\n\n")
        assert confirmed.exit_code == 0, confirmed.output
        assert stack.pid(name) is not None and f"started {name}" in confirmed.output
    finally:
        if stack.pid(name) is None:
            from choreo.ops.stack import bring_up

            bring_up(settings, [name])


def _ask_conversation(monkeypatch, fake_url: str, typed: str):
    from click.testing import CliRunner

    from choreo.cli import cli
    from config.settings import get_settings

    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-not-a-real-key")
    monkeypatch.setenv("CHOREO_AGENT_BASE_URL", fake_url)
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(cli, ["ask"], input=typed)
    finally:
        monkeypatch.delenv("CHOREO_AGENT_BASE_URL")
        get_settings.cache_clear()
