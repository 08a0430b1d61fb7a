"""The agent's messages loop on the Anthropic SDK: the model asks for tools, choreo runs them
(read-only), their results go back, until the model answers or a bound is reached.

Bounds: at most `max_rounds` rounds of tool use and `max_tokens` per model turn; a tool's
result is capped (choreo.agent.tools.capped). A tool that raises comes back to the model as
an error result ("could not check: ...") and the loop goes on. The SDK retries overloaded,
rate-limited and network failures itself (`max_retries`); what still fails is an AgentError
with one line for the operator. Each conversation is saved as JSON under the run folder.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import anthropic
from anthropic.types import ContentBlockParam, MessageParam, ToolResultBlockParam

from choreo.agent.tools import Tool, capped, catalog
from config.settings import Settings

log = logging.getLogger("choreo.agent")
KEY_VARIABLE = "ANTHROPIC_API_KEY"

SYSTEM = """You are the operator's assistant for choreo, an order-processing saga: order, payment, \
inventory, shipment and notification services exchange events over RabbitMQ; each has its own \
database, inbox (processed events), outbox and dead-letter queue.
Answer only from what your tools return. Cite your evidence: order ids, event ids, and which tool \
said what. If a tool fails, say "could not check" for that part; never guess.
Your tools are read-only. You cannot replay, restart or change anything. When an action would help \
(replaying dead letters, starting a stopped worker), call propose_replay or propose_start: the \
operator sees what it would do and decides.
Be brief: a direct answer first, then the evidence."""


class AgentError(Exception):
    """One line for the operator (no key, the API refused or stayed unreachable after retries)."""


@dataclass
class Answer:
    text: str
    rounds: int
    stopped: str  # "answered" | "round_limit" | "max_tokens"
    tool_calls: list[dict] = field(default_factory=list)
    proposals: list[dict] = field(default_factory=list)
    usage: dict = field(default_factory=lambda: {"input_tokens": 0, "output_tokens": 0})


def make_client(settings: Settings) -> anthropic.Anthropic:
    key = os.environ.get(KEY_VARIABLE, "").strip()
    if not key:
        raise AgentError(f"set {KEY_VARIABLE} to an Anthropic API key to use `choreo ask`")
    kwargs: dict[str, Any] = {
        "api_key": key,
        "max_retries": settings.agent_max_retries,
        "timeout": settings.agent_timeout,
    }
    if settings.agent_base_url:
        kwargs["base_url"] = settings.agent_base_url
    return anthropic.Anthropic(**kwargs)


def _block(b: Any) -> dict:
    """An SDK content block as the plain dict the next request sends back."""
    if b.type == "text":
        return {"type": "text", "text": b.text}
    if b.type == "tool_use":
        return {"type": "tool_use", "id": b.id, "name": b.name, "input": b.input}
    return b.model_dump(exclude_none=True)


class Agent:
    def __init__(
        self, settings: Settings, client: anthropic.Anthropic, tools: list[Tool] | None = None
    ) -> None:
        self.settings = settings
        self.client = client
        self.tools = {t.name: t for t in (tools if tools is not None else catalog())}
        self.messages: list[MessageParam] = []
        self.conversation_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self.answers: list[Answer] = []

    def run_tool(self, name: str, arguments: dict) -> tuple[str, bool]:
        """(result text, is_error). Never raises: a failing tool is the model's evidence too."""
        tool = self.tools.get(name)
        if tool is None:
            return f"could not check: there is no tool named {name!r}", True
        try:
            return capped(tool.run(self.settings, **(arguments or {}))), False
        except TypeError as exc:
            return f"could not check: bad arguments for {name}: {exc}"[:1000], True
        except Exception as exc:
            log.warning("tool %s failed: %r", name, exc)
            return f"could not check: {name} failed: {type(exc).__name__}: {exc}"[:1000], True

    def _create(self):
        try:
            return self.client.messages.create(
                model=self.settings.agent_model,
                max_tokens=self.settings.agent_max_tokens,
                system=SYSTEM,
                tools=[t.spec() for t in self.tools.values()],
                messages=self.messages,
            )
        except anthropic.APIStatusError as exc:
            raise AgentError(
                f"the Anthropic API refused the request ({exc.status_code}): {_message(exc)}"
            ) from exc
        except anthropic.APIConnectionError as exc:
            raise AgentError(
                f"could not reach the Anthropic API after {self.settings.agent_max_retries} "
                f"retries: {exc}"
            ) from exc

    def ask(self, question: str) -> Answer:
        self.messages.append({"role": "user", "content": question})
        answer = Answer(text="", rounds=0, stopped="answered")
        try:
            while True:
                response = self._create()
                for k in answer.usage:
                    answer.usage[k] += getattr(response.usage, k, 0) or 0
                content = [_block(b) for b in response.content]
                # _block copies each block into the plain dict shape the API takes back.
                sent_back = cast("list[ContentBlockParam]", content)
                self.messages.append({"role": "assistant", "content": sent_back})
                uses = [b for b in content if b["type"] == "tool_use"]
                text = "\n".join(b["text"] for b in content if b["type"] == "text").strip()
                if response.stop_reason == "max_tokens" and not uses:
                    answer.text, answer.stopped = (
                        text + "\n[answer cut at the token limit]",
                        "max_tokens",
                    )
                    break
                if not uses:
                    answer.text = text
                    break
                if answer.rounds >= self.settings.agent_max_rounds:
                    # Answer the pending tool calls (the API requires it), and stop here.
                    self.messages.append(
                        {
                            "role": "user",
                            "content": [
                                {
                                    "type": "tool_result",
                                    "tool_use_id": u["id"],
                                    "is_error": True,
                                    "content": "not run: the tool-round limit was reached",
                                }
                                for u in uses
                            ],
                        }
                    )
                    answer.text = (text + "\n" if text else "") + (
                        f"[stopped after {answer.rounds} rounds of tool use, the limit; "
                        f"what is above is all that was checked]"
                    )
                    answer.stopped = "round_limit"
                    break
                answer.rounds += 1
                results: list[ToolResultBlockParam] = []
                for u in uses:
                    out, is_error = self.run_tool(u["name"], u["input"])
                    answer.tool_calls.append(
                        {
                            "name": u["name"],
                            "input": u["input"],
                            "is_error": is_error,
                            "result_chars": len(out),
                        }
                    )
                    if u["name"].startswith("propose_") and not is_error:
                        answer.proposals.append(json.loads(out))
                    result: ToolResultBlockParam = {
                        "type": "tool_result",
                        "tool_use_id": u["id"],
                        "content": out,
                    }
                    if is_error:
                        result["is_error"] = True
                    results.append(result)
                self.messages.append({"role": "user", "content": results})
        finally:
            self.answers.append(answer)
            self.save()
        return answer

    def transcript_path(self) -> Path:
        return Path(self.settings.run_dir) / "agent" / f"{self.conversation_id}.json"

    def save(self) -> Path:
        path = self.transcript_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "conversation_id": self.conversation_id,
                    "model": self.settings.agent_model,
                    "messages": self.messages,
                    "answers": [a.__dict__ for a in self.answers],
                },
                indent=1,
                default=str,
            )
        )
        return path


def _message(exc: anthropic.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error")
    err = error if isinstance(error, dict) else {}
    return str(err.get("message") or exc.message)[:300]
