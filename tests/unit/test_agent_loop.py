"""The operator agent's loop with the real Anthropic SDK against a local fake Messages API
(no network): schemas sent, tool results returned, errors as error results, the round bound,
the size cap, API failures as one line, the transcript. Tools here are small fakes; the real
tools against the real stack are in tests/e2e/test_agent.py."""

from __future__ import annotations

import json

import pytest

from choreo.agent import tools as agent_tools
from choreo.agent.loop import Agent, AgentError, make_client
from choreo.agent.tools import MAX_RESULT_CHARS, Tool, capped
from config.settings import Settings
from tests.fake_anthropic import FakeMessagesAPI, text, tool_use


def _settings(tmp_path, url, **kw):
    return Settings(
        run_dir=tmp_path / "run",
        data_dir=tmp_path / "data",
        agent_base_url=url,
        agent_max_retries=kw.pop("retries", 0),
        **kw,
    )


def _agent(tmp_path, fake, tools, monkeypatch, **kw):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-not-a-real-key")
    s = _settings(tmp_path, fake.url, **kw)
    return Agent(s, make_client(s), tools)


def _obj(**props):
    return {"type": "object", "properties": props, "required": list(props)}


def orders_tool(calls):
    def run(settings, order_id):
        calls.append(order_id)
        return {"order_id": order_id, "state": "CANCELLED", "reason": "payment_declined"}

    return Tool("get_order", "One order.", _obj(order_id={"type": "string"}), run)


def broken_tool():
    def run(settings):
        raise ConnectionError("redis is away")

    return Tool("breakers", "Breakers.", _obj(), run)


def test_the_sdk_sends_the_tool_schemas_and_the_tools_result_comes_back(tmp_path, monkeypatch):
    calls = []
    script = [
        [text("Let me look."), tool_use("get_order", {"order_id": "ord-1"}, "toolu_1")],
        [text("Order ord-1 was cancelled: payment_declined (get_order).")],
    ]
    with FakeMessagesAPI(script) as fake:
        agent = _agent(tmp_path, fake, [orders_tool(calls)], monkeypatch)
        answer = agent.ask("why was order ord-1 cancelled?")
    first = fake.requests[0]["body"]
    assert [t["name"] for t in first["tools"]] == ["get_order"]
    assert first["tools"][0]["input_schema"]["required"] == ["order_id"]
    assert (
        first["model"] == agent.settings.agent_model
        and first["max_tokens"] == agent.settings.agent_max_tokens
    )
    assert (
        "never guess" in first["system"] and fake.requests[0]["api_key"] == "sk-test-not-a-real-key"
    )
    assert calls == ["ord-1"]
    (result,) = fake.tool_results(1)
    assert result["tool_use_id"] == "toolu_1" and not result.get("is_error")
    assert json.loads(result["content"])["reason"] == "payment_declined"
    assert answer.text.startswith("Order ord-1 was cancelled") and answer.stopped == "answered"
    assert answer.rounds == 1 and answer.usage == {"input_tokens": 22, "output_tokens": 14}
    saved = json.loads(agent.transcript_path().read_text())
    assert saved["messages"][0] == {"role": "user", "content": "why was order ord-1 cancelled?"}
    assert len(saved["messages"]) == 4 and saved["answers"][0]["text"] == answer.text


def test_a_tool_that_raises_is_an_error_result_and_the_loop_goes_on(tmp_path, monkeypatch):
    script = [
        [tool_use("breakers", {}, "toolu_b"), tool_use("nope", {}, "toolu_n")],
        [text("Could not check the breakers: redis is away.")],
    ]
    with FakeMessagesAPI(script) as fake:
        answer = _agent(tmp_path, fake, [broken_tool()], monkeypatch).ask("are the breakers open?")
    results = {r["tool_use_id"]: r for r in fake.tool_results(1)}
    assert (
        results["toolu_b"]["is_error"] is True
        and "could not check" in results["toolu_b"]["content"]
    )
    assert "redis is away" in results["toolu_b"]["content"]
    assert (
        results["toolu_n"]["is_error"] is True
        and "no tool named 'nope'" in results["toolu_n"]["content"]
    )
    assert answer.stopped == "answered" and [c["is_error"] for c in answer.tool_calls] == [
        True,
        True,
    ]


def test_the_loop_stops_at_its_round_bound(tmp_path, monkeypatch):
    calls = []
    forever = [[tool_use("get_order", {"order_id": "ord-1"})]]
    with FakeMessagesAPI(forever, repeat_last=True) as fake:
        answer = _agent(tmp_path, fake, [orders_tool(calls)], monkeypatch, agent_max_rounds=3).ask(
            "loop"
        )
    assert answer.stopped == "round_limit" and answer.rounds == 3 and len(calls) == 3
    assert len(fake.requests) == 4  # three rounds of tools, then the turn that hit the bound
    assert "stopped after 3 rounds" in answer.text


def test_a_huge_result_is_capped_as_valid_json():
    huge = {"orders": [{"order_id": f"ord-{i}", "note": "x" * 200} for i in range(5000)]}
    out = capped(huge)
    assert len(out) <= MAX_RESULT_CHARS
    parsed = json.loads(out)
    assert parsed["truncated"] is True and parsed["total_chars"] > MAX_RESULT_CHARS
    assert capped({"a": 1}) == '{"a":1}'


def test_no_key_is_one_line_naming_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(AgentError, match="set ANTHROPIC_API_KEY"):
        make_client(_settings(tmp_path, ""))


@pytest.mark.parametrize("status,kind", [(529, "overloaded_error"), (429, "rate_limit_error")])
def test_api_errors_are_retried_by_the_sdk_then_one_line(tmp_path, monkeypatch, status, kind):
    with FakeMessagesAPI([(status, kind)], repeat_last=True) as fake:
        agent = _agent(tmp_path, fake, [], monkeypatch, retries=2)
        with pytest.raises(AgentError, match=f"refused the request \\({status}\\): fake {kind}"):
            agent.ask("anything")
    assert len(fake.requests) == 3  # the first try and the SDK's two retries
    assert agent.transcript_path().exists()


def test_an_unreachable_api_is_one_line(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    settings = _settings(tmp_path, f"http://127.0.0.1:{port}")
    with pytest.raises(AgentError, match="could not reach the Anthropic API"):
        Agent(settings, make_client(settings), []).ask("anything")


def test_every_real_tool_has_a_schema_and_is_read_only_by_name():
    specs = [t.spec() for t in agent_tools.catalog()]
    assert {s["name"] for s in specs} >= {
        "get_order",
        "find_orders",
        "system_summary",
        "dead_letters",
        "audit",
        "breakers",
        "process_health",
        "order_trace",
        "order_metrics",
        "metrics",
        "propose_replay",
        "stuck_sagas",
    }
    assert all(s["input_schema"]["type"] == "object" and s["description"] for s in specs)
    assert not any(
        word in s["name"] for s in specs for word in ("execute", "restart", "delete", "purge")
    )
