"""The operator agent's tools: read-only views of the running system, each with a size cap.

Every tool returns structured data (JSON-able) built from the system's own stores: the
services' databases, the broker, Redis, the span files, the process health listeners. None of
them changes anything. `propose_replay` and `propose_start` only describe an action (a replay's
dry run; what starting a stopped process would do): the CLI shows it and the operator alone
decides to run it, through the same code as `choreo dlq replay --execute` and `choreo up`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlmodel import Session, col

from config.settings import DOMAINS, Settings

if TYPE_CHECKING:
    from anthropic.types import ToolParam

MAX_RESULT_CHARS = 12_000  # what one tool result may put into the model's context
MAX_ITEMS = 50  # rows a listing tool returns at most
SCENARIO_SCAN = 5000  # newest orders find_orders reads to filter by scenario


@dataclass
class Tool:
    name: str
    description: str
    schema: dict
    run: Callable[..., Any]

    def spec(self) -> ToolParam:
        return {"name": self.name, "description": self.description, "input_schema": self.schema}


def _obj(props: dict, required: tuple[str, ...] = ()) -> dict:
    return {
        "type": "object",
        "properties": props,
        "required": list(required),
        "additionalProperties": False,
    }


def capped(value: Any, limit: int = MAX_RESULT_CHARS) -> str:
    """JSON text of a tool's result, never longer than `limit`: past it, a valid JSON object
    saying it was truncated, with as much of the text as fits."""
    text = json.dumps(value, default=str, separators=(",", ":"))
    if len(text) <= limit:
        return text
    note: dict[str, Any] = {"truncated": True, "total_chars": len(text), "preview": text[:limit]}
    out = json.dumps(note)
    while len(out) > limit:  # escaping makes the preview longer than its text: cut by the excess
        note["preview"] = note["preview"][: max(0, len(note["preview"]) - (len(out) - limit) - 1)]
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


def find_orders(
    settings: Settings,
    state: str | None = None,
    reason: str | None = None,
    older_than_minutes: float | None = None,
    scenario: str | None = None,
    limit: int = 20,
) -> dict:
    """Newest first. Each row says the scenario its data makes it and the outcome that data must
    end in, so a wrong or stuck order shows (`expected` differs from state/reason)."""
    from choreo.infra.db import engine_for
    from choreo.ops.scenarios import SCENARIOS, expected_outcome, scenario_of
    from consumers.order.tables import OrderView

    if scenario is not None and scenario not in (*SCENARIOS, "custom"):
        raise ValueError(
            f"unknown scenario {scenario!r}; choose from {', '.join((*SCENARIOS, 'custom'))}"
        )
    q = select(OrderView)
    if state:
        q = q.where(col(OrderView.state) == state.upper())
    if reason:
        q = q.where(col(OrderView.reason) == reason)
    if older_than_minutes is not None:
        q = q.where(
            col(OrderView.placed_at)
            < datetime.now(UTC) - timedelta(minutes=float(older_than_minutes))
        )
    n = _limit(limit)
    scan = SCENARIO_SCAN if scenario else n + 1  # the scenario is in the order's data, not a column
    with Session(engine_for(settings, "order")) as s:
        views = s.execute(q.order_by(col(OrderView.placed_at).desc()).limit(scan)).scalars().all()
    rows = []
    for v in views:
        kind = scenario_of(v.card_token, v.items or [], v.address)
        if scenario and kind != scenario:
            continue
        rows.append(
            {
                "order_id": v.order_id,
                "state": v.state,
                "reason": v.reason,
                "scenario": kind,
                "expected": list(expected_outcome(v.card_token, v.items or [], v.address)),
                "placed_at": v.placed_at,
                "ended_at": v.ended_at,
            }
        )
    out = {"orders": rows[:n], "more": len(rows) > n}
    if scenario:
        out["scanned_newest"] = len(views)
    return out


def stuck_sagas(
    settings: Settings,
    step: str | None = None,
    older_than_seconds: float | None = None,
    limit: int = 20,
) -> dict:
    """The report of `choreo stuck --json`: open sagas waiting too long, longest first."""
    from choreo.ops.stuck import report

    return report(settings, step=step, older_than=older_than_seconds, limit=_limit(limit))


def system_summary(settings: Settings) -> dict:
    from choreo.ops.status import gather_status

    data = gather_status(settings)
    keep = (
        "saga_mode",
        "orders",
        "outbox_unsent",
        "dead_letter_records",
        "queues",
        "dlq",
        "unrouted",
        "metrics",
        "database_error",
        "broker_error",
        "redis_error",
    )
    return {k: v for k, v in data.items() if k in keep}


def dead_letters(settings: Settings, domain: str, limit: int = 20, with_body: bool = False) -> dict:
    from choreo.messaging.admin import BrokerAdmin

    with BrokerAdmin(settings) as admin:
        letters = admin.peek(domain, _limit(limit))
    return {
        "domain": domain,
        "dead_letters": [d.as_dict() if with_body else d.summary() for d in letters],
    }


def audit(settings: Settings) -> dict:
    from choreo.ops.audit import run_audit

    return {
        "checks": [
            {
                "check": c.name,
                "passed": c.passed,
                "checked": c.checked,
                "error": c.error,
                "problems": dict(list(c.problems.items())[:10]),
                "problem_count": len(c.problems),
            }
            for c in run_audit(settings)
        ]
    }


def breakers(settings: Settings) -> dict:
    from choreo.infra.redis_client import redis_client
    from choreo.world.users import UsersClient

    return {
        "breakers": [
            UsersClient(
                settings.users_url, redis_client(settings), settings.redis_prefix
            ).breaker_state()
        ]
    }


def process_health(settings: Settings) -> dict:
    from choreo.ops.stack import Stack
    from choreo.ops.status import process_health as health

    pids = Stack(settings).running()
    return {"processes": health(settings, pids)}


def order_trace(settings: Settings, order_id: str) -> dict:
    from choreo.ops import traceview

    spans = traceview.load_saga(settings.trace_dir, order_id)
    if not spans:
        return {
            "order_id": order_id,
            "found": False,
            "note": "no spans for this order in the span files",
        }
    view = traceview.build_view(order_id, spans)
    view["spans"] = view["spans"][:80]
    return {"found": True, **view}


STEPS = (
    ("paid", "placed_at", "paid_at"),
    ("reserved", "paid_at", "reserved_at"),
    ("shipped", "reserved_at", "shipped_at"),
    ("ended", "placed_at", "ended_at"),
)
METRICS_SAMPLE = 1000  # newest finished orders an order is compared with


def _utc(at: datetime | str) -> datetime:
    """A stored time as naive UTC (SQLite hands back naive UTC, PostgreSQL aware)."""
    at = datetime.fromisoformat(at) if isinstance(at, str) else at
    return at.astimezone(UTC).replace(tzinfo=None) if at.tzinfo else at


def _seconds(start, end) -> float | None:
    if start is None or end is None:
        return None
    return round((_utc(end) - _utc(start)).total_seconds(), 4)


def _quantiles(values: list[float]) -> dict | None:
    if not values:
        return None
    v = sorted(values)
    at = lambda p: v[min(len(v) - 1, int(p * len(v)))]  # noqa: E731  nearest rank
    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": v[-1], "n": len(v)}


def order_metrics(settings: Settings, order_id: str) -> dict:
    """How long an order's steps took (placed -> paid -> reserved -> shipped, placed -> ended) and
    each hop between services (an event emitted -> handled by its consumer), beside the same
    steps over the newest finished orders: is this order slow, and where."""
    from choreo.app.queries import order_details
    from choreo.infra.db import engine_for
    from consumers.order.tables import OrderView

    found = order_details(settings, order_id)
    if found is None:
        return {"order_id": order_id, "found": False}
    with Session(engine_for(settings, "order")) as s:
        view = s.get(OrderView, order_id)
        if view is None:  # its projection went away since order_details read it
            return {"order_id": order_id, "found": False}
        recent = (
            s.execute(
                select(OrderView)
                .where(col(OrderView.ended_at).is_not(None))
                .order_by(col(OrderView.ended_at).desc())
                .limit(METRICS_SAMPLE)
            )
            .scalars()
            .all()
        )
    steps = {}
    for name, a, b in STEPS:
        mine = _seconds(getattr(view, a), getattr(view, b))
        if mine is None:
            continue
        others = [d for o in recent if (d := _seconds(getattr(o, a), getattr(o, b))) is not None]
        q = _quantiles(others)
        steps[name] = {
            "seconds": mine,
            "recent": q,
            "slower_than_pct": round(100 * sum(d < mine for d in others) / len(others), 1)
            if others
            else None,
        }
    emitted: dict[str, str] = {}
    for t in found["timeline"]:
        if t["what"].startswith(("emitted ", "recorded ")):
            emitted.setdefault(t["what"].split(" ", 1)[1], t["at"])
    hops = []
    for t in found["timeline"]:
        kind = t["what"].split(" ", 1)[1] if t["what"].startswith("handled ") else None
        if kind and kind in emitted and t["at"]:
            hops.append(
                {"type": kind, "to": t["service"], "seconds": _seconds(emitted[kind], t["at"])}
            )
    return {
        "found": True,
        "order_id": order_id,
        "state": view.state,
        "reason": view.reason,
        "elapsed_seconds": _seconds(view.placed_at, view.ended_at or datetime.now(UTC)),
        "finished": view.ended_at is not None,
        "steps": steps,
        "hops": sorted(hops, key=lambda h: -h["seconds"])[:MAX_ITEMS],
        "dead_lettered": [t for t in found["timeline"] if t["what"].startswith("dead-lettered")][
            :10
        ],
        "compared_with": f"the newest {len(recent)} finished orders",
    }


METRICS_QUERIES = {  # name -> PromQL over the window (`{w}`); each a vector, labelled by service
    "handled_per_second": "sum by (service, outcome) (rate(service_request_total[{w}]))",
    "latency_p50_seconds": "histogram_quantile(0.5, "
    "sum by (service, le) (rate(service_latency_seconds_bucket[{w}])))",
    "latency_p99_seconds": "histogram_quantile(0.99, "
    "sum by (service, le) (rate(service_latency_seconds_bucket[{w}])))",
    "batch_size_mean": "sum by (service) (rate(choreo_batch_size_sum[{w}])) / "
    "sum by (service) (rate(choreo_batch_size_count[{w}]))",
    "relayed_per_second": "sum by (service) (rate(choreo_relay_published_total[{w}]))",
    "outbox_oldest_unsent_seconds": "max by (service) (choreo_outbox_oldest_unsent_seconds)",
    "consumer_ready": "min by (service) (choreo_consumer_ready)",
    "scraped_up": 'up{{job=~"choreo|flower"}}',
}


def metrics(settings: Settings, window_minutes: float = 5) -> dict:
    """The Prometheus that `choreo up` runs, asked a fixed set of questions over a window: rates by
    service and outcome, handling latency p50/p99, batch sizes, the relay, the outbox, consumers,
    scrape health, and the alerts firing now. Prometheus not running: an error (could not check)."""
    from choreo.ops import prometheus

    if prometheus.running(settings) is None:
        raise RuntimeError(
            "prometheus is not running (`choreo up` starts it): could not check metrics"
        )
    w = f"{max(1, min(24 * 60, int(float(window_minutes))))}m"
    out: dict[str, Any] = {"window": w, "prometheus": prometheus.url(settings)}
    for name, promql in METRICS_QUERIES.items():
        rows = prometheus.query(settings, promql.format(w=w))
        out[name] = [
            {
                **{
                    k: v for k, v in r["metric"].items() if k not in ("__name__", "job", "instance")
                },
                "value": r["value"][1],
            }
            for r in rows
        ][:MAX_ITEMS]
    firing = prometheus.query(settings, 'ALERTS{alertstate="firing"}')
    out["alerts_firing"] = [
        {k: v for k, v in r["metric"].items() if k not in ("__name__", "alertstate")}
        for r in firing
    ][:MAX_ITEMS]
    return out


def propose_replay(
    settings: Settings, domain: str, event_ids: list[str] | None = None, why: str = ""
) -> dict:
    """A proposal, never an action: the dry run of `choreo dlq replay DOMAIN --id ...`."""
    from choreo.ops import replay as rp

    plan = rp.plan(settings, domain, list(event_ids or []) or None, MAX_ITEMS)
    return {
        "proposal": {
            "action": "replay_dead_letters",
            "domain": domain,
            "event_ids": [c.letter.event_id for c in plan],
            "why": why[:500],
        },
        "dry_run": [c.as_dict() for c in plan],
        "executed": False,
        "note": "nothing was replayed: the operator is shown this dry run and decides",
    }


def propose_start(settings: Settings, process: str, why: str = "") -> dict:
    """A proposal, never an action: what starting a stopped process (as `choreo up` does) would
    do."""
    from choreo.ops.stack import Stack, process_names

    names = process_names(settings)
    if process not in names:
        raise ValueError(f"unknown process {process!r}; choose from {', '.join(names)}")
    stack = Stack(settings)
    pid, held = stack.pid(process), stack.held(process)
    would = f"start {process} as `choreo up` does, and wait until it consumes"
    if held:  # an operator stopped it on purpose: starting it ends that
        would = f"{would}; it was stopped on purpose (`choreo stop {process}`)"
    return {
        "proposal": {"action": "start_process", "process": process, "why": why[:500]},
        "running": pid is not None,
        "pid": pid,
        "held": held,
        "would": f"nothing: {process} is running (pid {pid})" if pid is not None else would,
        "executed": False,
        "note": "nothing was started: the operator is shown this and decides",
    }


DOMAIN = {
    "type": "string",
    "description": f"{', '.join(DOMAINS)}, or unrouted",
}


def catalog() -> list[Tool]:
    from choreo.app.stuck import STEPS

    return [
        Tool(
            "get_order",
            "One order: state, reason, money (charge, refund), stock reservation, shipment, "
            "notifications, and its timeline across services (handled, emitted, dead-lettered).",
            _obj({"order_id": {"type": "string"}}, ("order_id",)),
            get_order,
        ),
        Tool(
            "find_orders",
            "Orders by state (PENDING, COMPLETED, CANCELLED, NEEDS_ATTENTION...), reason, age, or "
            "scenario (completed, declined, out_of_stock, undeliverable, flaky, needs_attention, "
            "custom); newest first, at most 50. Each row has the outcome its data must end in "
            "('expected').",
            _obj(
                {
                    "state": {"type": "string"},
                    "reason": {"type": "string"},
                    "older_than_minutes": {"type": "number"},
                    "scenario": {"type": "string"},
                    "limit": {"type": "integer"},
                }
            ),
            find_orders,
        ),
        Tool(
            "stuck_sagas",
            "Open sagas waiting too long, longest in their step first (at most 50): the service "
            "each waits on (step payment, inventory, shipment; refund = a CANCELLING order waiting "
            "on payment), seconds in that step and since placed, the step's deadline, its timer "
            "(due_at, fired), overdue (past the deadline itself), and open sagas counted by state. "
            "Stuck = past CHOREO_STUCK_FRACTION of the step's or the saga's deadline, or, given "
            "older_than_seconds, more than that long in the step.",
            _obj(
                {
                    "step": {"type": "string", "enum": list(STEPS)},
                    "older_than_seconds": {"type": "number"},
                    "limit": {"type": "integer"},
                }
            ),
            stuck_sagas,
        ),
        Tool(
            "system_summary",
            "Orders by state and reason, queue depths and consumers, dead-letter counts, "
            "unsent outbox rows, counters.",
            _obj({}),
            system_summary,
        ),
        Tool(
            "dead_letters",
            "The dead letters of one domain's DLQ with their reasons (read without consuming).",
            _obj(
                {"domain": DOMAIN, "limit": {"type": "integer"}, "with_body": {"type": "boolean"}},
                ("domain",),
            ),
            dead_letters,
        ),
        Tool(
            "audit",
            "Every guarantee checked over the services' own databases, with offending ids.",
            _obj({}),
            audit,
        ),
        Tool("breakers", "Circuit breakers: state and failure counts.", _obj({}), breakers),
        Tool(
            "process_health",
            "Each process choreo started: pid, /health and /ready.",
            _obj({}),
            process_health,
        ),
        Tool(
            "order_trace",
            "An order's trace: its spans across services, queue waits, retries, outcomes.",
            _obj({"order_id": {"type": "string"}}, ("order_id",)),
            order_trace,
        ),
        Tool(
            "order_metrics",
            "How long one order's steps took (placed->paid->reserved->shipped, placed->ended) "
            "and each hop between services, beside p50/p90/p99 of the newest finished orders.",
            _obj({"order_id": {"type": "string"}}, ("order_id",)),
            order_metrics,
        ),
        Tool(
            "metrics",
            "Prometheus over a window (minutes, default 5): messages handled per second by service "
            "and outcome, handling latency p50/p99, batch sizes, relay, outbox lag, consumers, "
            "scrape health, alerts firing now.",
            _obj({"window_minutes": {"type": "number"}}),
            metrics,
        ),
        Tool(
            "propose_replay",
            "Propose replaying dead letters of one domain. This does NOT replay: it returns "
            "the dry run (what would move, whether each event was already processed) for the "
            "operator to confirm or refuse.",
            _obj(
                {
                    "domain": DOMAIN,
                    "event_ids": {"type": "array", "items": {"type": "string"}},
                    "why": {"type": "string"},
                },
                ("domain",),
            ),
            propose_replay,
        ),
        Tool(
            "propose_start",
            "Propose starting a stopped process (worker-<domain>, worker-<domain>-<i> for a "
            "domain's further workers, users, flower). This does "
            "NOT start it: it says what starting would do, for the operator to confirm or refuse.",
            _obj({"process": {"type": "string"}, "why": {"type": "string"}}, ("process",)),
            propose_start,
        ),
    ]
