"""In-process cost of choreo's adapter + handlers per message, without Celery's worker around it.

Runs K sagas in lock step: each hop of HOPS is one `tasks.adapter.process_batch(rt, [K
deliveries])` call for that domain, as a worker does with the K messages its prefetch holds
(real SQLite, Redis, broker publishes with confirms on the burst's channel, users service over
HTTP). What a batch published feeds the next hop. Counted per message: SQL statements by verb,
transactions, Redis commands and round trips, HTTP calls, AMQP publishes and confirm bursts,
and CPU time per hop; optional cProfile. `--batch 1` gives the unbatched per-message figure.
Candidate changes are applied as monkeypatches here, never to the core. Sandbox as
everywhere: own vhost, redis prefix, temp folder, all removed after.

    .venv/bin/python -m bench.handler_profile [--sagas 160] [--batch 16]
                                              [--cprofile [--profile-clock cpu]]
                                              [--variant NAME ...]
    .venv/bin/python -m bench.handler_profile --ab base,log_warning [--rounds 6] [--sagas 64]
                                              [--batch 16]

CPU and wall figures cover the `process_batch` calls only: building the deliveries (the
envelope's wire form, what kombu would have decoded) and reading back what was published are
the harness's own work, kept out of the figures and out of the profile.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import random
import re
import time
from collections import Counter

from bench.common import log, patched_environ, sandbox
from choreo.messaging.access import owners

HOPS = [
    ("order", "place_order"),
    ("payment", "order.placed"),
    ("order", "payment.completed"),
    ("inventory", "payment.completed"),
    ("order", "inventory.reserved"),
    ("shipment", "inventory.reserved"),
    ("order", "shipment.created"),
    ("notification", "order.completed"),
]


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

        for r in redis_clients:  # single commands (pybreaker's state, ...)
            orig = r.execute_command

            def wrapped(*args, _orig=orig, **kw):
                self.c[f"redis:{args[0]}"] += 1
                self.c["redis"] += 1
                self.c["redis:roundtrips"] += 1
                return _orig(*args, **kw)

            r.execute_command = wrapped

    def install_redis_pipelines(self) -> None:
        """Idempotency.seen / remember batch their commands in a pipeline: one round trip each."""
        import redis.client

        orig = redis.client.Pipeline.execute

        def execute(pipe, *a, **kw):
            if pipe.command_stack:
                self.c["redis:roundtrips"] += 1
                for args, _options in pipe.command_stack:
                    self.c[f"redis:{args[0]}"] += 1
                    self.c["redis"] += 1
            return orig(pipe, *a, **kw)

        redis.client.Pipeline.execute = execute

    def install_amqp(self, names) -> None:
        import amqp.channel
        import amqp.connection

        orig = amqp.channel.Channel._basic_publish

        def counted(ch, msg, exchange="", routing_key="", *a, **kw):
            kind = (
                "event"
                if exchange == names.events
                else "dlx"
                if exchange == names.dlx
                else "queue"
                if exchange == ""
                else "celeryev"
                if "celeryev" in exchange
                else "other"
            )
            self.c["amqp:publish"] += 1
            self.c[f"amqp:publish:{kind}"] += 1
            return orig(ch, msg, exchange, routing_key, *a, **kw)

        # `basic_publish` is a class-level alias of `_basic_publish` (a channel without confirm
        # mode, like the burst's, calls it); `basic_publish_confirm` calls `self._basic_publish`.
        if amqp.channel.Channel.basic_publish is orig:
            amqp.channel.Channel.basic_publish = counted
        amqp.channel.Channel._basic_publish = counted

        orig_confirm = amqp.channel.Channel.basic_publish_confirm

        def confirm(ch, *a, **kw):  # a publish that waits for its own confirm: none expected now
            self.c["amqp:confirm_sync"] += 1
            return orig_confirm(ch, *a, **kw)

        amqp.channel.Channel.basic_publish_confirm = confirm

        orig_drain = amqp.connection.Connection.drain_events

        def drain(conn, *a, **kw):  # ConfirmedBurst._wait reads the broker's acks this way
            self.c["amqp:drain_events"] += 1
            return orig_drain(conn, *a, **kw)

        amqp.connection.Connection.drain_events = drain

    def install_http(self) -> None:
        import httpx

        orig = httpx.Client.send

        def send(client, *a, **kw):
            self.c["http"] += 1
            return orig(client, *a, **kw)

        httpx.Client.send = send


# --- candidate changes, as monkeypatches (the core is not edited) --------------------------------


def variant_log_warning():
    """Per-message INFO logs off (CHOREO_LOG_LEVEL=WARNING)."""
    import logging

    logging.getLogger().setLevel("WARNING")


VARIANTS = {"log_warning": variant_log_warning}


class Harness:
    """A sandboxed in-process saga runner: `block(n)` runs n sagas, `batch` at a time in lock step,
    and returns CPU/wall per message."""

    def __init__(self, log_level: str = "INFO", batch: int = 16) -> None:
        self.log_level = log_level
        self.batch = batch

    def __enter__(self) -> Harness:
        import logging

        import httpx

        from bench.choreo_arm import choreo_env
        from choreo.app.bootstrap import prepare
        from choreo.infra import logs
        from choreo.infra.db import engine_for
        from choreo.ops.stack import Stack
        from config.settings import DOMAINS, get_settings
        from consumers.registry import topology
        from tasks.app import make_app
        from tasks.runtime import runtime

        self._stack_ctx = contextlib.ExitStack()
        try:
            sb = self._stack_ctx.enter_context(sandbox("handler"))
            # prefetch = the batch: what a worker with this prefetch would hand process_batch
            env = choreo_env(sb, self.batch, {"CHOREO_LOG_LEVEL": self.log_level})
            self._stack_ctx.enter_context(patched_environ(env))
            get_settings.cache_clear()
            self.settings = settings = get_settings()
            prepare(settings)
            topology(settings).declare()
            logs.configure("bench", settings.log_level, settings.log_json)
            self._log_file = open(sb.workdir / "handler.log", "w")
            self._stack_ctx.callback(self._log_file.close)
            logging.getLogger().handlers[0].stream = self._log_file  # like a worker's log file
            self.stack = Stack(settings, env)
            self.stack.start("users")
            self._stack_ctx.callback(self.stack.stop, "users")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{settings.users_url}/ready", timeout=1).status_code == 200:
                        break
                except Exception:
                    time.sleep(0.2)
            self.apps = {d: make_app(d, settings) for d in DOMAINS}
            self._stack_ctx.callback(self._close_apps)
            self.rts = {d: runtime(self.apps[d]) for d in DOMAINS}
            self.counters = Counters()
            self.counters.install(
                [engine_for(settings, s) for s in (*DOMAINS, "gateway")],
                {
                    id(rt.idempotency.client): rt.idempotency.client for rt in self.rts.values()
                }.values(),
            )
            self.counters.install_redis_pipelines()
            self.counters.install_amqp(next(iter(self.rts.values())).names)
            self.counters.install_http()
            self.captured: list = []  # (runtime, message) of the current batch's bursts
            for rt in self.rts.values():
                self._capture(rt)
        except BaseException:
            self._stack_ctx.close()
            raise
        self.rng = random.Random(3)
        self.prof: cProfile.Profile | None = None
        self.hop_cpu: Counter = Counter()
        self.hop_wall: Counter = Counter()
        self.hop_n: Counter = Counter()
        return self

    def _capture(self, rt) -> None:
        """Record what each burst publishes (to feed the next hop); the real burst still runs."""
        orig = rt.burst.run

        def run(messages, before_each=None, _orig=orig, _rt=rt):
            if messages:
                self.counters.c["amqp:bursts"] += 1
            self.captured.extend((_rt, m) for _key, m in messages)
            return _orig(messages, before_each)

        rt.burst.run = run

    def _published(self) -> list:
        """The events the last batch published (outside the timed window: harness work)."""
        from models.envelope import Envelope

        out = []
        for rt, m in self.captured:
            if m.get("exchange") == rt.names.events:
                out.append(Envelope.model_validate(m["args"][0]))
            else:  # a retry-ladder or DLQ copy: nothing should go there in a happy saga
                self.counters.c["burst:not_an_event"] += 1
        self.captured.clear()
        return out

    def _close_apps(self) -> None:
        from choreo.infra.db import dispose_all
        from config.settings import get_settings

        for rt in getattr(self, "rts", {}).values():
            rt.burst.close()
        for app in self.apps.values():
            with contextlib.suppress(Exception):
                app.close()
        dispose_all()
        get_settings.cache_clear()

    def __exit__(self, *exc) -> None:
        self._stack_ctx.close()

    def sagas_in_step(self, k: int) -> None:
        """k sagas; each hop one process_batch call of k deliveries for the hop's domain."""
        import tasks.adapter as adapter
        from choreo.ops.scenarios import make_order

        inboxes: dict[str, dict] = {}
        for _ in range(k):
            spec = make_order("completed", self.rng)
            oid = f"ord-{self.rng.getrandbits(64):016x}"
            inboxes[oid] = {"place_order": spec.place_order(oid, "bench")}
        for domain, type_ in HOPS:
            envs = [inbox[type_] for inbox in inboxes.values()]
            # Sent by the type's owner, as the broker would vouch for a real delivery.
            sender = min(owners(type_))
            deliveries = [
                adapter.Delivery(type_, [e.to_wire()], {}, e.event_id, sender=sender) for e in envs
            ]
            rt = self.rts[domain]
            hop = f"{domain}<-{type_}"
            self.captured.clear()
            if self.prof:
                self.prof.enable()
            c0, w0 = time.process_time(), time.perf_counter()
            outcomes = adapter.process_batch(rt, deliveries)
            c1, w1 = time.process_time(), time.perf_counter()
            if self.prof:
                self.prof.disable()
            self.hop_cpu[hop] += c1 - c0
            self.hop_wall[hop] += w1 - w0
            self.hop_n[hop] += len(deliveries)
            kinds = Counter(o.kind for o in outcomes)
            if kinds != {"processed": len(deliveries)}:
                failed = [o.detail for o in outcomes if o.kind != "processed"]
                raise RuntimeError(f"{hop}: {dict(kinds)}: {failed[:3]}")
            for e in self._published():
                inboxes[e.order_id][e.type] = e
        missing = [oid for oid, inbox in inboxes.items() if "order.completed" not in inbox]
        assert not missing, f"{len(missing)} saga(s) did not complete"

    def block(self, sagas: int, prof: cProfile.Profile | None = None) -> dict:
        """Run `sagas` sagas (rounded up to whole batches) and return the figures per message."""
        self.counters.c.clear()
        self.hop_cpu.clear()
        self.hop_wall.clear()
        self.hop_n.clear()
        self.prof = prof
        rounds = max(1, -(-sagas // self.batch))
        t_cpu = time.process_time()
        try:
            for _ in range(rounds):
                self.sagas_in_step(self.batch)
        finally:
            self.prof = None
        total_cpu = time.process_time() - t_cpu
        n = rounds * self.batch
        msgs = n * len(HOPS)
        cpu, wall = sum(self.hop_cpu.values()), sum(self.hop_wall.values())
        return {
            "sagas_run": n,
            "batch": self.batch,
            "messages": msgs,
            "cpu_ms_per_msg": 1000 * cpu / msgs,
            "wall_ms_per_msg": 1000 * wall / msgs,
            "cpu_ms_per_saga": 1000 * cpu / n,
            "wall_ms_per_saga": 1000 * wall / n,
            "harness_cpu_ms_per_msg": 1000 * (total_cpu - cpu) / msgs,
            "per_msg_counts": {k: round(v / msgs, 3) for k, v in sorted(self.counters.c.items())},
            "per_hop_cpu_ms_per_msg": {
                k: round(1000 * self.hop_cpu[k] / self.hop_n[k], 3) for k in self.hop_cpu
            },
            "per_hop_wall_ms_per_msg": {
                k: round(1000 * self.hop_wall[k] / self.hop_n[k], 3) for k in self.hop_wall
            },
        }


def own_time_by_package(stats: pstats.Stats, top: int = 20) -> str:
    """The profile's own (tottime) seconds summed per library / stdlib module / project package."""
    import sysconfig
    from pathlib import Path

    from bench.common import ROOT

    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    own: Counter = Counter()
    for (file, _line, fn), (_cc, _nc, tt, _ct, _callers) in stats.stats.items():
        # a builtin, by its type's or module's name: <method 'execute' of 'sqlite3.Cursor' objects>
        if file == "~":
            m = re.search(r" of '([\w.]+)'", fn) or re.search(r"built-in method ([\w.]+)\.", fn)
            own[f"builtin:{m.group(1).split('.')[0]}" if m else "builtin"] += tt
            continue
        path = Path(file).resolve()
        if "site-packages" in path.parts:
            own[path.parts[path.parts.index("site-packages") + 1].removesuffix(".py")] += tt
        elif path.is_relative_to(ROOT):
            rel = path.relative_to(ROOT).parts
            own["/".join(rel[:2]) if len(rel) > 2 else "/".join(rel)] += tt
        elif path.is_relative_to(stdlib):
            own[f"stdlib:{path.relative_to(stdlib).parts[0].removesuffix('.py')}"] += tt
        else:
            own[file] += tt
    total = sum(own.values()) or 1.0
    rows = [f"{'own time by package':40} {'s':>7} {'share':>6}"]
    rows += [f"{k:40} {v:7.3f} {100 * v / total:5.1f}%" for k, v in own.most_common(top)]
    return "\n".join(rows) + "\n"


def run(
    sagas: int,
    use_cprofile: bool,
    variants: list[str],
    log_level: str = "INFO",
    batch: int = 16,
    top: int = 35,
    profile_clock: str = "wall",
    profile_out: str | None = None,
) -> dict:
    out: dict = {
        "sagas": sagas,
        "variants": variants,
        **({"profile_clock": profile_clock} if use_cprofile else {}),
    }
    with Harness(log_level, batch) as h:
        for v in variants:
            fn = VARIANTS[v]
            fn(list(h.apps.values())) if fn.__code__.co_argcount else fn()
        h.block(max(10, batch))  # warm-up
        # wall: cProfile's default (a recv or an fsync counts its waiting); cpu: this process's
        # CPU only (time.process_time, a system call per event: more overhead, same ranking)
        prof = (
            (cProfile.Profile(time.process_time) if profile_clock == "cpu" else cProfile.Profile())
            if use_cprofile
            else None
        )
        out.update(h.block(sagas, prof))
        if prof:
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(top)
            out["cprofile"] = s.getvalue()
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(top)
            out["cprofile_self"] = s.getvalue() + "\n" + own_time_by_package(pstats.Stats(prof))
            if profile_out:
                prof.dump_stats(profile_out)
    return out


# --- A/B: toggles switched between interleaved blocks in one process (noise hits all alike) -------


# which runtime observers each A/B toggle switches off (as CHOREO_TRACING / CHOREO_METRICS=false)
_OBSERVERS = {
    "dark": ("tracer", "recorder"),
    "notrace": ("tracer",),
    "nometrics": ("recorder",),
}


def _switch_observers(h: Harness, part: str, on: bool) -> None:
    """Switch one observer toggle on (observers saved, then set to None) or off (restored)."""
    fields = _OBSERVERS[part]
    for rt in h.rts.values():
        if on:
            rt.saved_observers = tuple(getattr(rt, f) for f in fields)
            for f in fields:
                setattr(rt, f, None)
        else:
            # strict=False as it always was. NB: a variant combining two observer toggles
            # ('notrace+nometrics') overwrites saved_observers with the second one's, so what
            # the first restores is wrong (a shorter tuple stops this zip early).
            for f, saved in zip(fields, rt.saved_observers, strict=False):
                setattr(rt, f, saved)


def _switch(h: Harness, variant: str, on: bool, log_level: str) -> None:
    """Switch every part of an A/B variant ('a+b' combines) on, or back off."""
    import logging

    for part in variant.split("+"):
        if part == "base":
            continue
        if part == "log_warning":
            logging.getLogger().setLevel("WARNING" if on else log_level)
        elif part in _OBSERVERS:
            _switch_observers(h, part, on)
        else:
            raise ValueError(part)


def _ab_summary(results: dict[str, list[dict]], variants: list[str]) -> dict:
    """Per variant: CPU and wall ms/msg medians, and the CPU cost relative to the first variant."""
    import statistics

    first = results[variants[0]]
    base = statistics.median(x["cpu_ms_per_msg"] for x in first)
    summary = {}
    for v, xs in results.items():
        cpu = [x["cpu_ms_per_msg"] for x in xs]
        wall = [x["wall_ms_per_msg"] for x in xs]
        summary[v] = {
            "cpu_ms_per_msg_median": statistics.median(cpu),
            "cpu_min": min(cpu),
            "cpu_max": max(cpu),
            "wall_ms_per_msg_median": statistics.median(wall),
            "cpu_vs_first": statistics.median(cpu) / base - 1,
            # each round's ratio to the first variant's block of the same round (adjacent in
            # time, so a slow minute on a shared machine hits both): the steadier estimate
            "paired_vs_first": statistics.median(
                x["cpu_ms_per_msg"] / b["cpu_ms_per_msg"] for x, b in zip(xs, first, strict=True)
            )
            - 1,
            "cpu_per_round": [round(c, 3) for c in cpu],
            "counts": xs[-1]["per_msg_counts"],
        }
    return summary


def ab(
    variants: list[str], rounds: int, sagas: int, log_level: str = "INFO", batch: int = 16
) -> dict:
    """Variants: base, log_warning, dark (metrics and tracing off), notrace, nometrics; 'a+b'
    combines. Reports median CPU ms/msg per variant (this process's CPU: the span exporter's
    thread included)."""
    results: dict[str, list[dict]] = {v: [] for v in variants}
    with Harness(log_level, batch) as h:
        h.block(max(10, batch))
        for r in range(rounds):
            order = variants if r % 2 == 0 else list(reversed(variants))
            for v in order:
                _switch(h, v, True, log_level)
                try:
                    h.block(batch)  # settle after switching
                    results[v].append(h.block(sagas))
                finally:
                    _switch(h, v, False, log_level)
            log(f"A/B round {r + 1}/{rounds} done")
    summary = _ab_summary(results, variants)
    return {"rounds": rounds, "sagas_per_block": sagas, "batch": batch, "summary": summary}


def main() -> None:
    import json

    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--sagas",
        type=int,
        default=160,
        help="sagas per measured block (rounded up to whole batches)",
    )
    ap.add_argument(
        "--batch",
        type=int,
        default=16,
        help="sagas in lock step = deliveries per process_batch call",
    )
    ap.add_argument("--cprofile", action="store_true")
    ap.add_argument(
        "--top", type=int, default=35, help="cProfile rows, by cumulative and by own time"
    )
    ap.add_argument(
        "--profile-clock", choices=("wall", "cpu"), default="wall", help="cProfile's timer"
    )
    ap.add_argument(
        "--profile-out", help="also write the raw cProfile stats here (for pstats / snakeviz)"
    )
    ap.add_argument("--variant", action="append", default=[], choices=sorted(VARIANTS))
    ap.add_argument("--log-level", default="INFO")
    ap.add_argument("--ab", help="comma-separated A/B variants, e.g. base,log_warning")
    ap.add_argument("--rounds", type=int, default=6)
    a = ap.parse_args()
    if a.batch < 1 or a.sagas < 1:
        ap.error("--batch and --sagas must be at least 1")
    if a.ab:
        r = ab(a.ab.split(","), a.rounds, a.sagas, a.log_level, a.batch)
        print(json.dumps(r, indent=1))
        print(
            "\nvariant                                   CPU ms/msg median (min-max)   "
            "vs first   paired   wall ms/msg"
        )
        for v, x in r["summary"].items():
            print(
                f"{v:42} {x['cpu_ms_per_msg_median']:6.2f} ({x['cpu_min']:.2f}-{x['cpu_max']:.2f})"
                f"        {100 * x['cpu_vs_first']:+6.1f}%  {100 * x['paired_vs_first']:+6.1f}%"
                f"   {x['wall_ms_per_msg_median']:6.2f}"
            )
        return
    r = run(
        a.sagas, a.cprofile, a.variant, a.log_level, a.batch, a.top, a.profile_clock, a.profile_out
    )
    prof, prof_self = r.pop("cprofile", None), r.pop("cprofile_self", None)
    print(json.dumps(r, indent=1))
    if prof:
        print(prof)
        print(prof_self)


if __name__ == "__main__":
    main()
