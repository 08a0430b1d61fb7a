"""The operator agent's tools: read-only views of the running system, each with a size cap.

Every tool returns structured data (JSON-able) built from the system's own stores: the
services' databases, the broker, Redis, the span files, the process health listeners. None of
them changes anything. `propose_replay` and `propose_start` only describe an action (a replay's
dry run; what starting a stopped process would do): the CLI shows it and the operator alone
decides to run it, through the same code as `choreo dlq replay --execute` and `choreo up`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from sqlalchemy import select
from sqlmodel import Session

from config.settings import Settings

MAX_RESULT_CHARS = 12_000  # what one tool result may put into the model's context
MAX_ITEMS = 50             # rows a listing tool returns at most
SCENARIO_SCAN = 5000       # newest orders find_orders reads to filter by scenario


@dataclass
class Tool:
    name: str
    description: str
    schema: dict
    run: Callable[..., Any]

    def spec(self) -> dict:
        return {"name": self.name, "description": self.description, "input_schema": self.schema}


def _obj(props: dict, required: tuple[str, ...] = ()) -> dict:
    return {"type": "object", "properties": props, "required": list(required), "additionalProperties": False}


def capped(value: Any, limit: int = MAX_RESULT_CHARS) -> str:
    """JSON text of a tool's result, never longer than `limit`: past it, a valid JSON object
    saying it was truncated, with as much of the text as fits."""
    text = json.dumps(value, default=str, separators=(",", ":"))
    if len(text) <= limit:
        return text
    note = {"truncated": True, "total_chars": len(text), "preview": text[:limit]}
    out = json.dumps(note)
    while len(out) > limit:  # escaping makes the preview longer than its text: cut by the excess
        note["preview"] = note["preview"][:max(0, len(note["preview"]) - (len(out) - limit) - 1)]
        out = json.dumps(note)
    return out


def _limit(n: Any, default: int = 20) -> int:
    try:
        return max(1, min(MAX_ITEMS, int(n)))
    except (TypeError, ValueError):
        return default


# --- the tools --------------------------------------------------------------------------------

def get_order(settings: Settings, order_id: str) -> dict:
    from choreo.app.queries import order_details
    found = order_details(settings, order_id)
    if found is None:
        return {"order_id": order_id, "found": False}
    found["timeline"] = found["timeline"][-60:]
    return {"found": True, **found}


def find_orders(settings: Settings, state: str | None = None, reason: str | None = None,
                older_than_minutes: float | None = None, scenario: str | None = None, limit: int = 20) -> dict:
    """Newest first. Each row says the scenario its data makes it and the outcome that data must
    end in, so a wrong or stuck order shows (`expected` differs from state/reason)."""
    from choreo.infra.db import engine_for
    from choreo.ops.scenarios import SCENARIOS, expected_outcome, scenario_of
    from models.tables import OrderView

    if scenario is not None and scenario not in (*SCENARIOS, "custom"):
        raise ValueError(f"unknown scenario {scenario!r}; choose from {', '.join((*SCENARIOS, 'custom'))}")
    q = select(OrderView)
    if state:
        q = q.where(OrderView.state == state.upper())
    if reason:
        q = q.where(OrderView.reason == reason)
    if older_than_minutes is not None:
        q = q.where(OrderView.placed_at < datetime.now(timezone.utc) - timedelta(minutes=float(older_than_minutes)))
    n = _limit(limit)
    scan = SCENARIO_SCAN if scenario else n + 1  # the scenario is in the order's data, not a column
    with Session(engine_for(settings, "order")) as s:
        views = s.execute(q.order_by(OrderView.placed_at.desc()).limit(scan)).scalars().all()
    rows = []
    for v in views:
        kind = scenario_of(v.card_token, v.items or [], v.address)
        if scenario and kind != scenario:
            continue
        rows.append({"order_id": v.order_id, "state": v.state, "reason": v.reason, "scenario": kind,
                     "expected": list(expected_outcome(v.card_token, v.items or [], v.address)),
                     "placed_at": v.placed_at, "ended_at": v.ended_at})
    out = {"orders": rows[:n], "more": len(rows) > n}
    if scenario:
        out["scanned_newest"] = len(views)
    return out


def system_summary(settings: Settings) -> dict:
    from choreo.ops.status import gather_status
    data = gather_status(settings)
    keep = ("saga_mode", "orders", "outbox_unsent", "dead_letter_records", "queues", "dlq", "unrouted", "metrics",
            "database_error", "broker_error", "redis_error")
    return {k: v for k, v in data.items() if k in keep}


def dead_letters(settings: Settings, domain: str, limit: int = 20, with_body: bool = False) -> dict:
    from choreo.messaging.admin import BrokerAdmin
    with BrokerAdmin(settings) as admin:
        letters = admin.peek(domain, _limit(limit))
    return {"domain": domain, "dead_letters": [d.as_dict() if with_body else d.summary() for d in letters]}


def audit(settings: Settings) -> dict:
    from choreo.ops.audit import run_audit
    return {"checks": [{"check": c.name, "passed": c.passed, "checked": c.checked, "error": c.error,
                        "problems": dict(list(c.problems.items())[:10]), "problem_count": len(c.problems)}
                       for c in run_audit(settings)]}


def breakers(settings: Settings) -> dict:
    from choreo.infra.redis_client import redis_client
    from choreo.world.users import UsersClient
    return {"breakers": [UsersClient(settings.users_url, redis_client(settings), settings.redis_prefix).breaker_state()]}


def process_health(settings: Settings) -> dict:
    from choreo.ops.stack import Stack
    from choreo.ops.status import process_health as health
    pids = Stack(settings).running()
    return {"processes": health(settings, pids)}


def order_trace(settings: Settings, order_id: str) -> dict:
    from choreo.ops import traceview
    spans = traceview.load_saga(settings.trace_dir, order_id)
    if not spans:
        return {"order_id": order_id, "found": False, "note": "no spans for this order in the span files"}
    view = traceview.build_view(order_id, spans)
    view["spans"] = view["spans"][:80]
    return {"found": True, **view}


def propose_replay(settings: Settings, domain: str, event_ids: list[str] | None = None, why: str = "") -> dict:
    """A proposal, never an action: the dry run of `choreo dlq replay DOMAIN --id ...`."""
    from choreo.ops import replay as rp
    plan = rp.plan(settings, domain, list(event_ids or []) or None, MAX_ITEMS)
    return {"proposal": {"action": "replay_dead_letters", "domain": domain,
                         "event_ids": [c.letter.event_id for c in plan], "why": why[:500]},
            "dry_run": [c.as_dict() for c in plan], "executed": False,
            "note": "nothing was replayed: the operator is shown this dry run and decides"}


def propose_start(settings: Settings, process: str, why: str = "") -> dict:
    """A proposal, never an action: what starting a stopped process (as `choreo up` does) would do."""
    from choreo.ops.stack import Stack, process_names
    names = process_names(settings)
    if process not in names:
        raise ValueError(f"unknown process {process!r}; choose from {', '.join(names)}")
    pid = Stack(settings).pid(process)
    return {"proposal": {"action": "start_process", "process": process, "why": why[:500]},
            "running": pid is not None, "pid": pid,
            "would": (f"nothing: {process} is running (pid {pid})" if pid is not None else
                      f"start {process} as `choreo up` does, and wait until it consumes"),
            "executed": False, "note": "nothing was started: the operator is shown this and decides"}


DOMAIN = {"type": "string", "description": "order, payment, inventory, shipment, notification, or unrouted"}


def catalog() -> list[Tool]:
    return [
        Tool("get_order", "One order: state, reason, money (charge, refund), stock reservation, shipment, "
             "notifications, and its timeline across services (handled, emitted, dead-lettered).",
             _obj({"order_id": {"type": "string"}}, ("order_id",)), get_order),
        Tool("find_orders", "Orders by state (PENDING, COMPLETED, CANCELLED, NEEDS_ATTENTION...), reason, age, or "
             "scenario (completed, declined, out_of_stock, undeliverable, flaky, needs_attention, custom); newest "
             "first, at most 50. Each row has the outcome its data must end in ('expected').",
             _obj({"state": {"type": "string"}, "reason": {"type": "string"},
                   "older_than_minutes": {"type": "number"}, "scenario": {"type": "string"},
                   "limit": {"type": "integer"}}), find_orders),
        Tool("system_summary", "Orders by state and reason, queue depths and consumers, dead-letter counts, "
             "unsent outbox rows, counters.", _obj({}), system_summary),
        Tool("dead_letters", "The dead letters of one domain's DLQ with their reasons (read without consuming).",
             _obj({"domain": DOMAIN, "limit": {"type": "integer"}, "with_body": {"type": "boolean"}}, ("domain",)),
             dead_letters),
        Tool("audit", "Every guarantee checked over the services' own databases, with offending ids.",
             _obj({}), audit),
        Tool("breakers", "Circuit breakers: state and failure counts.", _obj({}), breakers),
        Tool("process_health", "Each process choreo started: pid, /health and /ready.", _obj({}), process_health),
        Tool("order_trace", "An order's trace: its spans across services, queue waits, retries, outcomes.",
             _obj({"order_id": {"type": "string"}}, ("order_id",)), order_trace),
        Tool("propose_replay", "Propose replaying dead letters of one domain. This does NOT replay: it returns "
             "the dry run (what would move, whether each event was already processed) for the operator to "
             "confirm or refuse.",
             _obj({"domain": DOMAIN, "event_ids": {"type": "array", "items": {"type": "string"}},
                   "why": {"type": "string"}}, ("domain",)), propose_replay),
        Tool("propose_start", "Propose starting a stopped process (worker-<domain>, users, flower). This does "
             "NOT start it: it says what starting would do, for the operator to confirm or refuse.",
             _obj({"process": {"type": "string"}, "why": {"type": "string"}}, ("process",)), propose_start),
    ]
