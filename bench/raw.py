"""Arm 3: the raw broker ceiling with plain kombu/py-amqp, no work.

Same vhost layout as choreo (choreo's own Topology: quorum queues per domain, bound to the
topic exchange by the routing keys of consumers.registry.subscriptions), the happy path's
six message types published with their routing keys, so the broker fans them out exactly as
for a choreo saga: deliveries per saga = sum over those types of the domains subscribed.

  bulk  : P publisher processes (persistent, publisher confirms, one confirm per message,
          like choreo) and 5 consumer processes (one per domain queue, manual ack per message,
          prefetch 100), all concurrent. msgs/s = deliveries / (first publish .. last ack).
  relay : the same five consumers relay the saga hop by hop (consume, publish the next type
          with confirm, ack): a zero-work choreography. Gives a latency floor for a saga.

Run as a module for the worker roles: python -m bench.raw consume|publish ...
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid

HAPPY_PATH = [
    "place_order",
    "order.placed",
    "payment.completed",
    "inventory.reserved",
    "shipment.created",
    "order.completed",
]
# relay: (domain, type received) -> type to publish next (the happy path's causal chain)
NEXT = {
    ("order", "place_order"): "order.placed",
    ("payment", "order.placed"): "payment.completed",
    ("inventory", "payment.completed"): "inventory.reserved",
    ("shipment", "inventory.reserved"): "shipment.created",
    ("order", "shipment.created"): "order.completed",
}
PREFETCH = 100


def deliveries_per_type() -> dict[str, dict[str, int]]:
    """{domain: {type: copies per saga}} from choreo's subscription table."""
    from consumers.registry import subscriptions

    SUBSCRIPTIONS = subscriptions("choreography")
    return {d: {t: 1 for t in HAPPY_PATH if t in subs} for d, subs in SUBSCRIPTIONS.items()}


def deliveries_per_saga() -> int:
    return sum(len(v) for v in deliveries_per_type().values())


def _bodies() -> dict[str, tuple[bytes, dict]]:
    """A realistic body + headers per type: choreo's envelope inside Celery's protocol-2 body."""
    import random

    from choreo.ops.scenarios import make_order
    from models.envelope import make_envelope

    spec = make_order("completed", random.Random(1))
    snap = {
        "customer_id": spec.customer_id,
        "items": spec.items,
        "address": spec.address,
        "amount_cents": 2598,
    }
    payloads = {
        "place_order": {
            "customer_id": spec.customer_id,
            "items": spec.items,
            "card_token": spec.card_token,
            "address": spec.address,
        },
        "order.placed": {"order": snap, "card_token": spec.card_token},
        "payment.completed": {
            "charge_id": "ch_0123456789abcdef",
            "amount_cents": 2598,
            "order": snap,
        },
        "inventory.reserved": {"reservation_id": str(uuid.uuid4()), "order": snap},
        "shipment.created": {"shipment_id": str(uuid.uuid4()), "tracking_code": "TRK0123456789"},
        "order.completed": {"customer_id": spec.customer_id, "amount_cents": 2598},
    }
    out = {}
    for t, p in payloads.items():
        env = make_envelope(t, "ord-0123456789abcdef", p, source="bench")
        body = json.dumps(
            [
                [env.to_wire()],
                {},
                {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
            ]
        )
        headers = {
            "lang": "py",
            "task": t,
            "id": env.event_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": env.event_id,
            "parent_id": None,
            "argsrepr": repr([env.to_wire()])[:1024],
            "kwargsrepr": "{}",
            "origin": "gen0@bench",
            "ignore_result": True,
            "choreo_order_id": env.order_id,
            "choreo_correlation_id": env.correlation_id,
        }
        out[t] = (body.encode(), headers)
    return out


def _connection(url: str, confirm: bool):
    from kombu import Connection

    return Connection(url, transport_options={"confirm_publish": True} if confirm else {})


# --- roles (subprocesses) ----------------------------------------------------------------------


def _track_confirms(channel, pending: set[int], nacked: list[int]) -> None:
    """Put the channel in confirm mode; each ack or nack removes its delivery tag(s) from
    pending as it is read, and a nack also counts in nacked[0]."""
    channel.confirm_select()

    def on_ack(tag, multiple):
        if multiple:
            pending.difference_update([t for t in pending if t <= tag])
        else:
            pending.discard(tag)

    def on_nack(tag, multiple):
        nacked[0] += 1
        on_ack(tag, multiple)

    channel.events["basic_ack"].add(on_ack)
    channel.events["basic_nack"].add(on_nack)


def _publish(producer, body, routing_key: str, headers: dict) -> None:
    """Publish one persistent JSON message: no declare, no retry."""
    producer.publish(
        body,
        routing_key=routing_key,
        delivery_mode=2,
        content_type="application/json",
        content_encoding="utf-8",
        headers=headers,
        declare=[],
        retry=False,
    )


def role_publish(
    url: str,
    exchange: str,
    sagas: int,
    rate: float | None,
    out: str,
    types: list[str],
    window: int = 1,
) -> None:
    """window 1: wait for each confirm (kombu confirm_publish, what choreo's Publisher does).
    window W > 1: keep up to W unconfirmed messages in flight (confirm mode, acks read as they
    come)."""
    from kombu import Exchange, Producer

    from bench.common import Pacer

    bodies = _bodies()
    conn = _connection(url, confirm=window <= 1)
    conn.connect()
    channel = conn.channel()
    pending: set[int] = set()
    nacked = [0]
    if window > 1:
        _track_confirms(channel, pending, nacked)
        seq = [0]
    producer = Producer(channel, exchange=Exchange(exchange, type="topic", no_declare=True))
    pacer = Pacer(rate) if rate else None
    t_first = time.time()
    for _ in range(sagas):
        if pacer:
            pacer.wait()
        for t in types:
            body, headers = bodies[t]
            _publish(producer, body, t, {**headers, "bench_t0": time.time()})
            if window > 1:
                seq[0] += 1
                pending.add(seq[0])
                while len(pending) >= window:
                    conn.drain_events(timeout=30)
    while pending:
        conn.drain_events(timeout=30)
    t_last = time.time()
    conn.release()
    with open(out, "w") as f:
        json.dump(
            {
                "t_first": t_first,
                "t_last": t_last,
                "published": sagas * len(types),
                "nacked": nacked[0],
            },
            f,
        )


def _relay_next(producer, bodies: dict, domain: str, message) -> None:
    """Publish the type that follows the received one on the happy path (if any), carrying
    the saga's bench_t0 so the last hop measures the whole saga."""
    nxt = NEXT.get((domain, message.headers.get("task")))
    if nxt:
        b, h = bodies[nxt]
        _publish(producer, b, nxt, {**h, "bench_t0": message.headers["bench_t0"]})


def _drain_for_a_second(conn) -> None:
    """Dispatch what arrives within a second; a quiet second is not an error."""
    try:
        conn.drain_events(timeout=1)
    except TimeoutError:
        pass
    except OSError as exc:  # socket.timeout is an OSError subclass
        if "timed out" not in str(exc):
            raise


def role_consume(
    url: str,
    exchange: str,
    domain: str,
    queue: str,
    expect: int,
    relay: bool,
    out: str,
    timeout: float,
) -> None:
    from kombu import Exchange, Producer, Queue

    bodies = _bodies() if relay else {}
    conn = _connection(url, confirm=False)
    conn.connect()
    pub_conn = producer = None
    if relay:
        pub_conn = _connection(url, confirm=True)
        pub_conn.connect()
        producer = Producer(
            pub_conn.channel(), exchange=Exchange(exchange, type="topic", no_declare=True)
        )
    state = {"n": 0, "t_first": None, "t_last": None}
    latencies: list[float] = []

    def on_message(body, message):
        now = time.time()
        if state["t_first"] is None:
            state["t_first"] = now
        if relay:
            _relay_next(producer, bodies, domain, message)
            if domain == "notification":
                latencies.append((now - message.headers["bench_t0"]) * 1000)
        message.ack()
        state["n"] += 1
        state["t_last"] = time.time()

    channel = conn.channel()
    channel.basic_qos(0, PREFETCH, False)
    q = Queue(queue, no_declare=True)
    with conn.Consumer(q, callbacks=[on_message], accept=None, channel=channel, no_ack=False):
        deadline = time.monotonic() + timeout
        while state["n"] < expect and time.monotonic() < deadline:
            _drain_for_a_second(conn)
    with open(out, "w") as f:
        json.dump({**state, "latencies_ms": latencies}, f)
    conn.release()
    if pub_conn:
        pub_conn.release()


# --- driver (bench process) ----------------------------------------------------------------------


def _consumers_ready(settings, want: int = 1, timeout: float = 60) -> None:
    from choreo.messaging.admin import BrokerAdmin
    from config.settings import DOMAINS

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with BrokerAdmin(settings) as admin:
            stats = {q["name"]: q["consumers"] for q in admin.queue_stats()}
        if all((stats.get(f"{settings.namespace}.{d}") or 0) >= want for d in DOMAINS):
            return
        time.sleep(0.2)
    raise RuntimeError("raw consumers did not attach")


def _load_json(path) -> dict:
    with open(path) as f:
        return json.load(f)


def _spawn(args: list[str], workdir, name: str) -> subprocess.Popen:
    from bench.common import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # the child holds its own copy of the log's descriptor: ours can close once it is spawned
    with open(workdir / f"{name}.log", "ab") as log_f:
        return subprocess.Popen(
            [sys.executable, "-m", "bench.raw", *args],
            cwd=str(ROOT),
            env=env,
            stdout=log_f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _run_once(
    sb,
    settings,
    sagas: int,
    mode: str,
    publishers: int,
    rate: float | None,
    sampler_cls,
    timeout: float,
    window: int = 1,
) -> dict:
    from bench.common import ProcSampler, broker_pid, redis_pid, stop_pid
    from config.settings import DOMAINS

    per = deliveries_per_type()
    names = settings.namespace
    tag = uuid.uuid4().hex[:6]
    consumers, outs = {}, {}
    relay = mode == "relay"
    for d in DOMAINS:
        expect = sagas * len(per[d])
        outs[d] = str(sb.workdir / f"raw-{tag}-{d}.json")
        consumers[d] = _spawn(
            [
                "consume",
                "--url",
                sb.broker_url,
                "--exchange",
                f"{names}.events",
                "--domain",
                d,
                "--queue",
                f"{names}.{d}",
                "--expect",
                str(expect),
                "--out",
                outs[d],
                "--timeout",
                str(timeout),
                *(["--relay"] if relay else []),
            ],
            sb.workdir,
            f"c-{d}",
        )
    try:
        _consumers_ready(settings)
        roots = {f"consumer-{d}": p.pid for d, p in consumers.items()}
        sampler = sampler_cls(
            roots, external={"broker": broker_pid(), "redis": redis_pid()}
        ).start()
        pubs, pub_outs = [], []
        types = ["place_order"] if relay else HAPPY_PATH
        share = [
            sagas // publishers + (1 if i < sagas % publishers else 0) for i in range(publishers)
        ]
        c0 = sampler.cpu()
        for i, k in enumerate(share):
            o = str(sb.workdir / f"raw-{tag}-pub{i}.json")
            pub_outs.append(o)
            pubs.append(
                _spawn(
                    [
                        "publish",
                        "--url",
                        sb.broker_url,
                        "--exchange",
                        f"{names}.events",
                        "--sagas",
                        str(k),
                        "--out",
                        o,
                        "--types",
                        ",".join(types),
                        "--window",
                        str(window),
                        *(["--rate", str(rate / publishers)] if rate else []),
                    ],
                    sb.workdir,
                    f"p-{i}",
                )
            )
            sampler.roots[f"publisher-{i}"] = pubs[-1].pid
        deadline = time.monotonic() + timeout
        c1 = sampler.cpu()
        for p in [*pubs, *consumers.values()]:
            # keep the last CPU reading of every process: one that exits is gone from /proc
            while p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
                now = sampler.cpu()
                now["procs"] = {**c1["procs"], **now["procs"]}
                now["roles"] = {**c1["roles"], **now["roles"]}
                c1 = now
                sampler.sample()
        sampler.stop()
        res = {d: _load_json(outs[d]) for d in DOMAINS}
        pres = [_load_json(o) for o in pub_outs]
    finally:
        for p in consumers.values():
            if p.poll() is None:
                stop_pid(p.pid)
    got = sum(r["n"] for r in res.values())
    want = sagas * deliveries_per_saga()
    t_first = min(p["t_first"] for p in pres)
    t_last = max(r["t_last"] for r in res.values() if r["t_last"])
    cpu = ProcSampler.cpu_delta(c0, c1)
    out = {
        "mode": mode,
        "window": window,
        "sagas": sagas,
        "publishers": publishers,
        "deliveries": got,
        "expected": want,
        "seconds": t_last - t_first,
        "msgs_per_s": got / (t_last - t_first),
        "sagas_per_s": sagas / (t_last - t_first),
        "publish_seconds": max(p["t_last"] for p in pres) - t_first,
        "cpu": cpu,
        "cpu_s_per_saga": cpu["workers"] / sagas,
        "memory": sampler.memory(),
    }
    if relay:
        from bench.common import percentiles

        lat = res["notification"]["latencies_ms"]
        out["latency_ms"] = percentiles(lat)
        out["latency_ms_mean"] = sum(lat) / len(lat) if lat else None
    if got != want:
        out["error"] = f"delivered {got} of {want}"
    return out


def run_raw(
    n: int,
    *,
    publishers: int = 2,
    window: int = 256,
    sync_publishers: int = 5,
    latency: bool = True,
    lat_min_s: float = 20,
    lat_max_s: float = 30,
    lat_orders: int | None = None,
) -> dict:
    """The ceiling: `publishers` processes with up to `window` confirms in flight. Context: the same
    with one confirm at a time from `sync_publishers` processes (choreo publishes that way from five
    domain processes), and the zero-work relay's throughput and latency."""
    from bench.common import ProcSampler, log, sandbox
    from consumers.registry import topology

    result: dict = {
        "arm": "raw",
        "n": n,
        "deliveries_per_saga": deliveries_per_saga(),
        "deliveries_per_type": deliveries_per_type(),
    }
    with sandbox("raw") as sb:
        # The sandbox's own settings: the raw clients connect as its bootstrap user (they are the
        # ceiling, not choreo services); the queue depths are read as its operator.
        settings = sb.settings
        topology(settings).declare()
        _run_once(
            sb, settings, min(50, n), "bulk", publishers, None, ProcSampler, 120, window
        )  # warm-up
        result["throughput"] = thr = _run_once(
            sb, settings, n, "bulk", publishers, None, ProcSampler, max(180, n / 20), window
        )
        log(
            f"raw bulk: {thr['msgs_per_s']:.0f} msgs/s = {thr['sagas_per_s']:.0f} sagas/s "
            f"({thr['deliveries']}/{thr['expected']} delivered, {publishers} publishers, "
            f"window {window})"
        )
        if sync_publishers:
            result["sync_confirm"] = sc = _run_once(
                sb, settings, n, "bulk", sync_publishers, None, ProcSampler, max(180, n / 5), 1
            )
            log(
                f"raw bulk, one confirm at a time x {sync_publishers} publishers: "
                f"{sc['msgs_per_s']:.0f} msgs/s"
            )
        if latency:
            result["relay_throughput"] = rt = _run_once(
                sb, settings, n, "relay", 1, None, ProcSampler, max(180, n / 5)
            )
            log(f"raw relay (zero-work choreography): {rt['sagas_per_s']:.0f} sagas/s")
            rate = 0.5 * rt["sagas_per_s"]
            count = lat_orders if lat_orders is not None else n // 2
            count = max(10, int(min(max(count, rate * lat_min_s), rate * lat_max_s)))
            result["latency"] = lt = _run_once(
                sb, settings, count, "relay", 1, rate, ProcSampler, 180
            )
            lt["rate_target"] = rate
            lt["definition"] = (
                "relay: notification consumer's receive time - place_order publish time "
                "(6 sequential hops, each consume + confirmed publish + ack), at half the relay's "
                "own throughput"
            )
            p = lt["latency_ms"]
            log(
                f"raw relay latency at {rate:.0f} sagas/s x {count}: "
                f"p50 {p['p50']:.1f} p95 {p['p95']:.1f} p99 {p['p99']:.1f} ms"
            )
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="role", required=True)
    p = sub.add_parser("publish")
    p.add_argument("--url", required=True)
    p.add_argument("--exchange", required=True)
    p.add_argument("--sagas", type=int, required=True)
    p.add_argument("--rate", type=float, default=None)
    p.add_argument("--types", default=",".join(HAPPY_PATH))
    p.add_argument("--window", type=int, default=1)
    p.add_argument("--out", required=True)
    c = sub.add_parser("consume")
    c.add_argument("--url", required=True)
    c.add_argument("--exchange", required=True)
    c.add_argument("--domain", required=True)
    c.add_argument("--queue", required=True)
    c.add_argument("--expect", type=int, required=True)
    c.add_argument("--relay", action="store_true")
    c.add_argument("--timeout", type=float, default=300)
    c.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.role == "publish":
        role_publish(a.url, a.exchange, a.sagas, a.rate, a.out, a.types.split(","), a.window)
    else:
        role_consume(a.url, a.exchange, a.domain, a.queue, a.expect, a.relay, a.out, a.timeout)


if __name__ == "__main__":
    main()
