"""Arm 2: a naive Celery chain of the same four steps, and its driver.

    charge -> reserve -> ship -> complete+notify, each task calling the next with .delay()

A plain Celery app with Celery's defaults: the default classic queue 'celery', no publisher
confirms, no idempotency, no outbox, early acks, prefetch multiplier 4, no result backend,
no task events. Work per step: one INSERT + COMMIT into that step's own SQLite file (payment,
inventory, shipment; the last step writes the order row with its end time and a notification
row, two files), with the same pragmas choreo uses (WAL, synchronous=NORMAL, busy_timeout).
The workers: 5 `celery worker -P prefork -c 1` processes on the one queue (5 parents + 5 pool
children, the same process count as choreo's five domain workers).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
import uuid

from celery import Celery

app = Celery(
    "naive", broker=os.environ.get("NAIVE_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
)
DATA = os.environ.get("NAIVE_DATA_DIR", "/tmp/naive-data")

SCHEMA = {
    "payment": "CREATE TABLE IF NOT EXISTS charges "
    "(order_id TEXT PRIMARY KEY, amount_cents INT, at REAL)",
    "inventory": "CREATE TABLE IF NOT EXISTS reservations "
    "(order_id TEXT PRIMARY KEY, sku TEXT, qty INT, at REAL)",
    "shipment": "CREATE TABLE IF NOT EXISTS shipments "
    "(order_id TEXT PRIMARY KEY, address TEXT, at REAL)",
    "order": "CREATE TABLE IF NOT EXISTS orders "
    "(order_id TEXT PRIMARY KEY, placed_at REAL, ended_at REAL, state TEXT)",
    "notification": "CREATE TABLE IF NOT EXISTS notifications "
    "(order_id TEXT PRIMARY KEY, email TEXT, at REAL)",
}
_conns: dict[tuple[int, str], sqlite3.Connection] = {}


def db(name: str) -> sqlite3.Connection:
    key = (os.getpid(), name)
    conn = _conns.get(key)
    if conn is None:
        conn = sqlite3.connect(os.path.join(DATA, f"{name}.db"), timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        _conns[key] = conn
    return conn


def create_all() -> None:
    os.makedirs(DATA, exist_ok=True)
    for name, ddl in SCHEMA.items():
        db(name).execute(ddl)


@app.task
def charge(order: dict) -> None:
    order = {
        **order,
        "charge_id": f"ch_{order['order_id'][-8:]}",
        "amount_cents": order["qty"] * 1299,
    }
    db("payment").execute(
        "INSERT INTO charges VALUES (?, ?, ?)",
        (order["order_id"], order["amount_cents"], time.time()),
    )
    reserve.delay(order)


@app.task
def reserve(order: dict) -> None:
    order = {**order, "reservation_id": f"rs_{order['order_id'][-8:]}"}
    db("inventory").execute(
        "INSERT INTO reservations VALUES (?, ?, ?, ?)",
        (order["order_id"], order["sku"], order["qty"], time.time()),
    )
    ship.delay(order)


@app.task
def ship(order: dict) -> None:
    order = {**order, "tracking": f"tr_{order['order_id'][-8:]}"}
    db("shipment").execute(
        "INSERT INTO shipments VALUES (?, ?, ?)", (order["order_id"], order["address"], time.time())
    )
    complete.delay(order)


@app.task
def complete(order: dict) -> None:
    db("order").execute(
        "INSERT INTO orders VALUES (?, ?, ?, 'COMPLETED')",
        (order["order_id"], order["placed_at"], time.time()),
    )
    db("notification").execute(
        "INSERT INTO notifications VALUES (?, ?, ?)",
        (order["order_id"], f"{order['customer_id']}@example.test", time.time()),
    )


# --- driver (runs in the bench process) ---------------------------------------------------


def _ended(data_dir: str, ids: list[str]) -> dict[str, tuple[float, float]]:
    conn = sqlite3.connect(os.path.join(data_dir, "order.db"), timeout=30)
    out = {}
    try:
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            q = f"SELECT order_id, placed_at, ended_at FROM orders WHERE order_id IN ({marks})"
            out.update({o: (p, e) for o, p, e in conn.execute(q, chunk)})
    finally:
        conn.close()
    return out


def _wait(data_dir: str, ids: list[str], timeout: float, poll: float = 0.5) -> float:
    deadline = time.monotonic() + timeout
    while True:
        if len(_ended(data_dir, ids)) == len(ids):
            return time.time()
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"naive: {len(_ended(data_dir, ids))}/{len(ids)} done after {timeout:.0f}s"
            )
        time.sleep(poll)


def run_naive(
    n: int,
    *,
    workers: int = 5,
    concurrency: int = 1,
    latency: bool = True,
    lat_orders: int | None = None,
    lat_min_s: float = 20,
    lat_max_s: float = 30,
    warmup: int = 20,
) -> dict:
    import random

    from bench.common import (
        ROOT,
        Pacer,
        ProcSampler,
        broker_pid,
        log,
        percentiles,
        redis_pid,
        sandbox,
        stop_pid,
    )

    result: dict = {"arm": "naive", "workers": workers, "concurrency": concurrency, "n": n}
    with sandbox("naive") as sb:
        data_dir = str(sb.workdir / "data")
        env = {
            **os.environ,
            "NAIVE_BROKER_URL": sb.broker_url,
            "NAIVE_DATA_DIR": data_dir,
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        os.environ["NAIVE_DATA_DIR"] = data_dir  # create_all() here
        global DATA
        DATA = data_dir
        create_all()
        client = Celery("naive-client", broker=sb.broker_url, set_as_current=False)
        pids: dict[str, int] = {}
        sampler = None
        try:
            for i in range(workers):
                # the worker holds its own copy of the log's descriptor: ours can close now
                with open(sb.workdir / f"naive-{i}.log", "ab") as log_f:
                    proc = subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "celery",
                            "-A",
                            "bench.naive:app",
                            "worker",
                            "-P",
                            "prefork",
                            "-c",
                            str(concurrency),
                            "-n",
                            f"naive{i}@%h",
                            "--without-gossip",
                            "--without-mingle",
                        ],
                        cwd=str(ROOT),
                        env=env,
                        stdout=log_f,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                pids[f"naive-{i}"] = proc.pid
            rng = random.Random(7)

            def publish() -> str:
                oid = f"ord-{uuid.uuid4().hex[:16]}"
                sku = rng.choice(("SKU-RED", "SKU-BLUE", "SKU-GREEN"))
                client.send_task(
                    "bench.naive.charge",
                    args=[
                        {
                            "order_id": oid,
                            "customer_id": f"cust-{rng.randint(1, 50)}",
                            "sku": sku,
                            "qty": rng.randint(1, 3),
                            "address": "1 Main Street, Springfield",
                            "card_token": "tok_visa",
                            "placed_at": time.time(),
                        }
                    ],
                )
                return oid

            # ready = the warm-up chains complete (every worker has started consuming by then)
            _wait(data_dir, [publish() for _ in range(max(warmup, 1))], 120)
            time.sleep(1.0)
            sampler = ProcSampler(
                pids, external={"broker": broker_pid(), "redis": redis_pid()}
            ).start()
            c0 = sampler.cpu()
            t_first = time.time()
            ids = [publish() for _ in range(n)]
            t_pub = time.time() - t_first
            seen = _wait(data_dir, ids, max(180, n / 5))
            c1 = sampler.cpu()
            ends = _ended(data_dir, ids)
            first = min(p for p, _ in ends.values())
            last = max(e for _, e in ends.values())
            cpu = ProcSampler.cpu_delta(c0, c1)
            thr = {
                "orders": n,
                "completed": len(ends),
                "publish_seconds": t_pub,
                "publish_rate": n / t_pub,
                "seconds_db": last - first,
                "seconds_observed": seen - t_first,
                "sagas_per_s": n / (last - first),
                "sagas_per_s_observed": n / (seen - t_first),
                "deliveries_per_saga": 4,
                "cpu": cpu,
                "cpu_s_per_saga": cpu["workers"] / n,
            }
            result["throughput"] = thr
            log(
                f"naive throughput {thr['sagas_per_s']:.1f} chains/s "
                f"(cpu {thr['cpu_s_per_saga'] * 1000:.2f} ms/chain)"
            )
            if latency:
                rate = 0.5 * thr["sagas_per_s"]
                count = lat_orders if lat_orders is not None else n // 2
                count = max(10, int(min(max(count, rate * lat_min_s), rate * lat_max_s)))
                cl0 = sampler.cpu()
                pacer = Pacer(rate)
                lids = []
                t0 = time.time()
                for _ in range(count):
                    pacer.wait()
                    lids.append(publish())
                dur = time.time() - t0
                _wait(data_dir, lids, 180)
                lcpu = ProcSampler.cpu_delta(cl0, sampler.cpu())
                ends = _ended(data_dir, lids)
                lat = [(e - p) * 1000 for p, e in ends.values()]
                result["latency"] = {
                    "rate_target": rate,
                    "rate_actual": count / dur,
                    "orders": count,
                    "seconds": dur,
                    "publisher_max_lag_ms": pacer.max_lag * 1000,
                    "latency_ms": percentiles(lat),
                    "latency_ms_mean": sum(lat) / len(lat),
                    "definition": "orders.ended_at (complete step's commit) - "
                    "placed_at (time.time() just before .delay of charge)",
                    "cpu": lcpu,
                }
                p = result["latency"]["latency_ms"]
                log(
                    f"naive latency at {rate:.1f}/s x {count}: "
                    f"p50 {p['p50']:.0f} p95 {p['p95']:.0f} p99 {p['p99']:.0f} ms"
                )
            sampler.stop()
            result["memory"] = sampler.memory()
        finally:
            if sampler:
                sampler.stop()
            for pid in pids.values():
                stop_pid(pid)
            with contextlib.suppress(Exception):
                client.close()
            for conn in list(_conns.values()):
                conn.close()
            _conns.clear()
    return result
