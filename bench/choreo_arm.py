"""Arm 1: choreo with every guarantee on, the real stack (users + 5 workers via
choreo.ops.stack.Stack).

Scenario 'completed' only, so every saga is place_order -> order.placed -> payment.completed ->
inventory.reserved -> shipment.created -> order.completed -> notification.
"""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from datetime import UTC, datetime

from bench.common import (
    Pacer,
    ProcSampler,
    broker_pid,
    log,
    patched_environ,
    percentiles,
    redis_pid,
    sandbox,
)

# What each database's commit promises before choreo acks and publishes (choreo.infra.db).
DURABILITY = {
    "sqlite": "SQLite WAL, synchronous=FULL (fsync per commit)",
    "postgresql": "PostgreSQL, synchronous_commit=on (WAL flushed per commit)",
}
POSTGRES = "postgresql://postgres:postgres@127.0.0.1:5432"


def _utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def choreo_env(sb, prefetch: int, extra: dict | None = None) -> dict[str, str]:
    return {**sb.env, "CHOREO_PREFETCH_MULTIPLIER": str(prefetch), **(extra or {})}


class OrderPublisher:
    """Publishes place_order commands exactly like `choreo enqueue` (choreo's Publisher,
    confirms on)."""

    def __init__(self, settings) -> None:
        from choreo.messaging.publisher import Publisher
        from choreo.messaging.topology import Names
        from tasks.app import make_app

        self.app = make_app("client", settings)
        self.publisher = Publisher(self.app, Names(settings.namespace))
        self.rng = random.Random(7)
        self.sent: dict[str, datetime] = {}  # order id -> place_order occurred_at

    def publish_one(self) -> str:
        from choreo.ops.scenarios import make_order

        order_id = f"ord-{uuid.uuid4().hex[:16]}"
        env = make_order("completed", self.rng).place_order(order_id, "bench")
        self.publisher.publish(env)
        self.sent[order_id] = env.occurred_at
        return order_id

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.app.close()


def _read_outcomes(settings, order_ids: list[str]) -> dict:
    """order_view (state, placed_at, ended_at) and the completion notification's sent_at."""
    from sqlmodel import Session, select

    from choreo.infra.db import engine_for
    from consumers.notification.tables import Notification
    from consumers.order.tables import OrderView

    views, notes = {}, {}
    with Session(engine_for(settings, "order")) as s:
        for i in range(0, len(order_ids), 500):
            chunk = order_ids[i : i + 500]
            for o, st, placed, ended in s.exec(
                select(
                    OrderView.order_id, OrderView.state, OrderView.placed_at, OrderView.ended_at
                ).where(OrderView.order_id.in_(chunk))
            ):
                views[o] = (st, _utc(placed), _utc(ended))
    with Session(engine_for(settings, "notification")) as s:
        for i in range(0, len(order_ids), 500):
            chunk = order_ids[i : i + 500]
            for o, sent in s.exec(
                select(Notification.order_id, Notification.sent_at).where(
                    Notification.order_id.in_(chunk)
                )
            ):
                notes[o] = _utc(sent)
    return {"views": views, "notes": notes}


def _deliveries(settings, order_ids: list[str]) -> dict[str, int]:
    """Inbox rows per domain for these orders: each is one delivered message that was applied."""
    from sqlmodel import Session, func, select

    from choreo.infra.db import engine_for
    from config.settings import DOMAINS
    from models.tables import Inbox

    out = {}
    for d in DOMAINS:
        n = 0
        with Session(engine_for(settings, d)) as s:
            for i in range(0, len(order_ids), 500):
                n += s.exec(
                    select(func.count())
                    .select_from(Inbox)
                    .where(Inbox.order_id.in_(order_ids[i : i + 500]))
                ).one()
        out[d] = n
    return out


def wait_done(
    settings, order_ids: list[str], timeout: float, poll: float = 0.5
) -> tuple[float, dict]:
    """Until every order is terminal (choreo.ops.workload), then until every completion
    notification is recorded. Returns (time.time() when the last order was seen terminal,
    states)."""
    from choreo.ops.workload import terminal_count, wait_terminal

    deadline = time.monotonic() + timeout
    states = wait_terminal(settings, order_ids, timeout, poll)
    if terminal_count(states) < len(order_ids):
        raise TimeoutError(
            f"{terminal_count(states)}/{len(order_ids)} orders terminal after {timeout:.0f}s"
        )
    seen = time.time()
    while time.monotonic() < deadline:
        if len(_read_outcomes(settings, order_ids)["notes"]) >= len(order_ids):
            break
        time.sleep(poll)
    return seen, states


def _wait_users(settings, timeout: float = 30.0) -> None:
    """The user service answers (the workers consume already: choreo.ops.stack.bring_up)."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{settings.users_url}/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"user service not answering on {settings.users_url} after {timeout:.0f}s"
            )
        time.sleep(0.3)


def throughput_phase(
    settings, pub: OrderPublisher, n: int, sampler: ProcSampler, timeout: float
) -> dict:
    c0 = sampler.cpu()
    t_first = time.time()
    ids = [pub.publish_one() for _ in range(n)]
    t_pub = time.time() - t_first
    seen, states = wait_done(settings, ids, timeout)
    c1 = sampler.cpu()
    out = _read_outcomes(settings, ids)
    first_occ = min(pub.sent[o] for o in ids).timestamp()
    ends = [v[2].timestamp() for v in out["views"].values() if v[2] is not None]
    last_end = max(ends)
    last_note = max((t.timestamp() for t in out["notes"].values() if t), default=None)
    completed = sum(1 for st, _ in states.values() if st == "COMPLETED")
    deliveries = _deliveries(settings, ids)
    cpu = ProcSampler.cpu_delta(c0, c1)
    return {
        "orders": n,
        "completed": completed,
        "publish_seconds": t_pub,
        "publish_rate": n / t_pub,
        "seconds_db": last_end - first_occ,
        "seconds_observed": seen - t_first,
        "seconds_incl_notification": (last_note - first_occ) if last_note else None,
        "sagas_per_s": n / (last_end - first_occ),
        "sagas_per_s_observed": n / (seen - t_first),
        "sagas_per_s_incl_notification": n / (last_note - first_occ) if last_note else None,
        "deliveries": deliveries,
        "deliveries_per_saga": sum(deliveries.values()) / n,
        "cpu": cpu,
        "cpu_s_per_saga": cpu["workers"] / n,
    }


def latency_phase(
    settings,
    pub: OrderPublisher,
    rate: float,
    count: int,
    timeout: float,
    sampler: ProcSampler | None = None,
) -> dict:
    c0 = sampler.cpu() if sampler else None
    pacer = Pacer(rate)
    ids = []
    t0 = time.time()
    for _ in range(count):
        pacer.wait()
        ids.append(pub.publish_one())
    dur = time.time() - t0
    wait_done(settings, ids, timeout)
    cpu = ProcSampler.cpu_delta(c0, sampler.cpu()) if sampler else None
    out = _read_outcomes(settings, ids)
    lat, lat_placed, lat_note = [], [], []
    for o in ids:
        st, placed, ended = out["views"][o]
        occ = pub.sent[o]
        if ended is not None:
            lat.append((ended - occ).total_seconds() * 1000)
            if placed is not None:
                lat_placed.append((ended - placed).total_seconds() * 1000)
        if out["notes"].get(o):
            lat_note.append((out["notes"][o] - occ).total_seconds() * 1000)
    return {
        "rate_target": rate,
        "rate_actual": count / dur,
        "orders": count,
        "seconds": dur,
        "publisher_max_lag_ms": pacer.max_lag * 1000,
        "latency_ms": percentiles(lat),
        "latency_ms_mean": sum(lat) / len(lat) if lat else None,
        "definition": "order_view.ended_at (order worker commit of OrderCompleted) - "
        "place_order envelope occurred_at (set by the bench just before publish)",
        "latency_from_placed_at_ms": percentiles(lat_placed),
        "latency_to_notification_ms": percentiles(lat_note),
        "cpu": cpu,
    }


def run_choreo(
    n: int,
    *,
    prefetch: int | None = None,
    database: str = "sqlite",
    latency: bool = True,
    lat_orders: int | None = None,
    lat_min_s: float = 20,
    lat_max_s: float = 30,
    warmup: int = 20,
    extra_env: dict | None = None,
    during_throughput=None,
    cluster=None,
    workers: int = 1,
) -> dict:
    """`cluster`: a running choreo.devtools.cluster.Cluster to run on instead of the machine's node;
    `workers`: workers per domain (competing consumers; more than one needs PostgreSQL)."""
    from choreo.infra.db import dispose_all
    from choreo.ops.stack import Stack, bring_up, process_names
    from config.settings import get_settings

    defaults = {k: f.default for k, f in type(get_settings()).model_fields.items()}
    prefetch = (
        prefetch or defaults["prefetch_multiplier"]
    )  # choreo's default unless the sweep says otherwise
    result: dict = {
        "arm": "choreo",
        "prefetch": prefetch,
        "database": database,
        "n": n,
        "durability": DURABILITY[database],
        "workers_per_domain": workers,
        "broker": f"private cluster of {cluster.size} nodes" if cluster else "this machine's node",
    }
    options = (
        {"cluster_dir": cluster.base_dir, "workers_per_domain": workers}
        if cluster
        else {"workers_per_domain": workers}
    )
    with sandbox(
        "choreo", database_server=POSTGRES if database == "postgresql" else None, **options
    ) as sb:
        env = choreo_env(sb, prefetch, extra_env)
        with patched_environ(env):
            get_settings.cache_clear()
            settings = get_settings()
            assert sb.vhost in settings.broker_url
            worker_names = [name for name in process_names(settings) if name.startswith("worker-")]
            names = ["users", *worker_names]
            stack = Stack(
                settings, env
            )  # the pid files bring_up writes: stopped below whatever happens
            pub = None
            sampler = None
            try:
                bring_up(settings, names, 90, env)
                _wait_users(settings)
                pub = OrderPublisher(settings)
                if warmup:
                    wait_done(settings, [pub.publish_one() for _ in range(warmup)], 120)
                brokers = (
                    {f"broker-n{i}": cluster.pid(i) for i in cluster.nodes}
                    if cluster
                    else {"broker": broker_pid()}
                )
                sampler = ProcSampler(
                    {name: stack.pid(name) for name in worker_names},
                    external={**brokers, "redis": redis_pid(), "users": stack.pid("users")},
                ).start()
                hook = during_throughput(stack) if during_throughput else None
                try:
                    result["throughput"] = thr = throughput_phase(
                        settings, pub, n, sampler, timeout=max(180, n / 5)
                    )
                finally:
                    if hook:
                        hook()
                log(
                    f"choreo[{database} prefetch={prefetch}] throughput "
                    f"{thr['sagas_per_s']:.1f} sagas/s ({thr['completed']}/{n} completed, "
                    f"{thr['deliveries_per_saga']:.2f} deliveries/saga, "
                    f"cpu {thr['cpu_s_per_saga'] * 1000:.1f} ms/saga)"
                )
                if latency:
                    rate = 0.5 * thr["sagas_per_s"]
                    count = lat_orders if lat_orders is not None else n // 2
                    count = int(min(max(count, rate * lat_min_s), rate * lat_max_s))
                    result["latency"] = lat = latency_phase(
                        settings, pub, rate, max(count, 10), timeout=180, sampler=sampler
                    )
                    p = lat["latency_ms"]
                    log(
                        f"choreo latency at {rate:.1f}/s x {lat['orders']}: "
                        f"p50 {p['p50']:.0f} p95 {p['p95']:.0f} p99 {p['p99']:.0f} ms"
                    )
                sampler.stop()
                result["memory"] = sampler.memory()
                result["users_pid_cpu_note"] = (
                    "users service CPU is in throughput.cpu.users, not in workers"
                )
            finally:
                if sampler:
                    sampler.stop()
                if pub:
                    pub.close()
                for name in reversed(names):
                    stack.stop(name)
                dispose_all()
                get_settings.cache_clear()
    return result
