"""In-process cost of choreo's adapter + handlers per message, without Celery's worker around it.

Runs whole sagas by calling tasks.adapter.process() for each hop in turn (real SQLite, Redis,
broker publishes with confirms, users service over HTTP), counting per message: SQL statements,
transactions, Redis commands, AMQP publishes, and CPU time; optional cProfile. Used to find
waste and to measure the gain of a candidate change (applied as a monkeypatch here, never to
the core). Sandbox as everywhere: own vhost, redis prefix, temp folder.

    .venv/bin/python -m bench.handler_profile [--sagas 200] [--cprofile] [--variant NAME ...]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import time
from collections import Counter

from bench.common import log, patched_environ, sandbox

HOPS = [("order", "place_order"), ("payment", "order.placed"), ("order", "payment.completed"),
        ("inventory", "payment.completed"), ("order", "inventory.reserved"), ("shipment", "inventory.reserved"),
        ("order", "shipment.created"), ("notification", "order.completed")]


class Counters:
    def __init__(self) -> None:
        self.c: Counter = Counter()

    def install(self, engines, redis_clients) -> None:
        from sqlalchemy import event

        for eng in engines:
            @event.listens_for(eng, "before_cursor_execute")
            def _sql(conn, cursor, statement, params, context, executemany, _eng=eng):
                word = statement.split(None, 1)[0].upper()
                self.c[f"sql:{word}"] += 1
                self.c["sql"] += 1

            @event.listens_for(eng, "commit")
            def _commit(conn):
                self.c["sql:transactions"] += 1

        for r in redis_clients:
            orig = r.execute_command

            def wrapped(*args, _orig=orig, **kw):
                self.c[f"redis:{args[0]}"] += 1
                self.c["redis"] += 1
                return _orig(*args, **kw)
            r.execute_command = wrapped

    def install_amqp(self) -> None:
        import amqp.channel

        orig = amqp.channel.Channel._basic_publish

        def counted(ch, msg, exchange="", routing_key="", *a, **kw):
            self.c["amqp:publish"] += 1
            self.c[f"amqp:publish:{'events' if 'celeryev' in exchange else 'task'}"] += 1
            return orig(ch, msg, exchange, routing_key, *a, **kw)
        amqp.channel.Channel._basic_publish = counted
        orig_wait = amqp.channel.Channel.basic_publish_confirm

        def confirm(ch, *a, **kw):
            self.c["amqp:confirm_waits"] += 1
            return orig_wait(ch, *a, **kw)
        amqp.channel.Channel.basic_publish_confirm = confirm


# --- candidate changes, as monkeypatches (the core is not edited) --------------------------------

def variant_log_warning():
    """Per-message INFO logs off (CHOREO_LOG_LEVEL=WARNING)."""
    import logging
    logging.getLogger().setLevel("WARNING")


VARIANTS = {"log_warning": variant_log_warning}


class Harness:
    """A sandboxed in-process saga runner: `block(k)` runs k sagas and returns CPU/wall per message."""

    def __init__(self, log_level: str = "INFO") -> None:
        self.log_level = log_level

    def __enter__(self) -> "Harness":
        import contextlib
        import logging

        import httpx

        from bench.choreo_arm import choreo_env
        from choreo.infra import logs
        from tasks.runtime import runtime
        from choreo.infra.db import engine_for
        from consumers.registry import topology
        from choreo.app.bootstrap import prepare
        from choreo.ops.stack import Stack
        from config.settings import DOMAINS, get_settings
        from tasks.app import make_app

        self._stack_ctx = contextlib.ExitStack()
        sb = self._stack_ctx.enter_context(sandbox("handler"))
        env = choreo_env(sb, "solo", 1, 4, {"CHOREO_LOG_LEVEL": self.log_level})
        self._stack_ctx.enter_context(patched_environ(env))
        get_settings.cache_clear()
        self.settings = settings = get_settings()
        prepare(settings)
        topology(settings).declare()
        logs.configure("bench", settings.log_level, settings.log_json)
        self._log_file = open(sb.workdir / "handler.log", "w")
        logging.getLogger().handlers[0].stream = self._log_file  # like a worker's log file
        self.stack = Stack(settings, env)
        self.stack.start("users")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{settings.users_url}/users/cust-1", timeout=1).status_code == 200:
                    break
            except Exception:
                time.sleep(0.2)
        self.apps = {d: make_app(d, settings) for d in DOMAINS}
        self.rts = {d: runtime(self.apps[d]) for d in DOMAINS}
        self.counters = Counters()
        self.counters.install([engine_for(settings, s) for s in (*DOMAINS, "gateway")],
                              {id(rt.idempotency.client): rt.idempotency.client for rt in self.rts.values()}.values())
        self.counters.install_amqp()
        self.published: list = []
        for rt in self.rts.values():
            orig = rt.publisher.publish

            def pub(envelope, _orig=orig):
                self.published.append(envelope)
                return _orig(envelope)
            rt.publisher.publish = pub
        self.rng = random.Random(3)
        self.per_hop_cpu: Counter = Counter()
        self.per_hop_n: Counter = Counter()
        return self

    def __exit__(self, *exc) -> None:
        from choreo.infra.db import dispose_all
        from config.settings import get_settings

        for app in self.apps.values():
            try:
                app.close()
            except Exception:
                pass
        self.stack.stop("users")
        dispose_all()
        get_settings.cache_clear()
        self._log_file.close()
        self._stack_ctx.close()

    def one_saga(self) -> None:
        import tasks.adapter as adapter
        from choreo.ops.scenarios import make_order
        from consumers.registry import CHOREOGRAPHY as SUBSCRIPTIONS
        from models.envelope import decode

        spec = make_order("completed", self.rng)
        oid = f"ord-{self.rng.getrandbits(64):016x}"
        env0 = spec.place_order(oid, "bench")
        inbox = {"place_order": env0}
        for domain, type_ in HOPS:
            wire = inbox[type_].to_wire()
            t0 = time.process_time()
            envelope = decode(wire)  # what handle() does before process()
            rt = self.rts[domain]
            rt.idempotency.seen(domain, envelope.event_id)
            self.published.clear()
            adapter.process(rt, SUBSCRIPTIONS[domain][type_], envelope)
            self.per_hop_cpu[f"{domain}<-{type_}"] += time.process_time() - t0
            self.per_hop_n[f"{domain}<-{type_}"] += 1
            for e in self.published:
                inbox[e.type] = e
        assert "order.completed" in inbox, inbox.keys()

    def block(self, sagas: int, prof: cProfile.Profile | None = None) -> dict:
        self.counters.c.clear()
        self.per_hop_cpu.clear()
        self.per_hop_n.clear()
        t_wall, t_cpu = time.perf_counter(), time.process_time()
        if prof:
            prof.enable()
        for _ in range(sagas):
            self.one_saga()
        if prof:
            prof.disable()
        wall, cpu = time.perf_counter() - t_wall, time.process_time() - t_cpu
        msgs = sagas * len(HOPS)
        return {"wall_ms_per_msg": 1000 * wall / msgs, "cpu_ms_per_msg": 1000 * cpu / msgs,
                "cpu_ms_per_saga": 1000 * cpu / sagas, "wall_ms_per_saga": 1000 * wall / sagas,
                "per_msg_counts": {k: round(v / msgs, 2) for k, v in sorted(self.counters.c.items())},
                "per_hop_cpu_ms": {k: round(1000 * self.per_hop_cpu[k] / self.per_hop_n[k], 2) for k in self.per_hop_cpu}}


def run(sagas: int, use_cprofile: bool, variants: list[str], log_level: str = "INFO") -> dict:
    out: dict = {"sagas": sagas, "variants": variants}
    with Harness(log_level) as h:
        for v in variants:
            fn = VARIANTS[v]
            fn(list(h.apps.values())) if fn.__code__.co_argcount else fn()
        h.block(10)  # warm-up
        prof = cProfile.Profile() if use_cprofile else None
        out.update(h.block(sagas, prof))
        if prof:
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(70)
            out["cprofile"] = s.getvalue()
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(40)
            out["cprofile_self"] = s.getvalue()
    return out


# --- A/B: toggles switched between interleaved blocks in one process (noise hits all alike) -------

def ab(variants: list[str], rounds: int, sagas: int, log_level: str = "INFO") -> dict:
    """Variants: base, log_warning; 'a+b' combines. Reports median CPU ms/msg per variant."""
    import logging
    import statistics

    results: dict[str, list[dict]] = {v: [] for v in variants}
    with Harness(log_level) as h:

        def apply(variant: str, on: bool) -> None:
            for part in variant.split("+"):
                if part == "base":
                    continue
                if part == "log_warning":
                    logging.getLogger().setLevel("WARNING" if on else log_level)
                else:
                    raise ValueError(part)
        h.block(10)
        for r in range(rounds):
            order = variants if r % 2 == 0 else list(reversed(variants))
            for v in order:
                apply(v, True)
                try:
                    h.block(3)  # settle after switching
                    results[v].append(h.block(sagas))
                finally:
                    apply(v, False)
            log(f"A/B round {r + 1}/{rounds} done")
    base = statistics.median(x["cpu_ms_per_msg"] for x in results[variants[0]])
    summary = {}
    for v, xs in results.items():
        cpu = [x["cpu_ms_per_msg"] for x in xs]
        wall = [x["wall_ms_per_msg"] for x in xs]
        summary[v] = {"cpu_ms_per_msg_median": statistics.median(cpu), "cpu_min": min(cpu), "cpu_max": max(cpu),
                      "wall_ms_per_msg_median": statistics.median(wall),
                      "cpu_vs_first": statistics.median(cpu) / base - 1, "counts": xs[-1]["per_msg_counts"]}
    return {"rounds": rounds, "sagas_per_block": sagas, "summary": summary}


def main() -> None:
    import json
    ap = argparse.ArgumentParser()
    ap.add_argument("--sagas", type=int, default=200)
    ap.add_argument("--cprofile", action="store_true")
    ap.add_argument("--variant", action="append", default=[], choices=sorted(VARIANTS))
    ap.add_argument("--log-level", default="INFO")
    ap.add_argument("--ab", help="comma-separated A/B variants, e.g. base,log_warning")
    ap.add_argument("--rounds", type=int, default=6)
    a = ap.parse_args()
    if a.ab:
        r = ab(a.ab.split(","), a.rounds, a.sagas, a.log_level)
        print(json.dumps(r, indent=1))
        print("\nvariant                                   CPU ms/msg median (min-max)   vs first   wall ms/msg")
        for v, x in r["summary"].items():
            print(f"{v:42} {x['cpu_ms_per_msg_median']:6.2f} ({x['cpu_min']:.2f}-{x['cpu_max']:.2f})"
                  f"        {100 * x['cpu_vs_first']:+6.1f}%   {x['wall_ms_per_msg_median']:6.2f}")
        return
    r = run(a.sagas, a.cprofile, a.variant, a.log_level)
    prof, prof_self = r.pop("cprofile", None), r.pop("cprofile_self", None)
    print(json.dumps(r, indent=1))
    if prof:
        print(prof)
        print(prof_self)


if __name__ == "__main__":
    main()
