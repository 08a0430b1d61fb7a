"""A worker process's runtime for its domain: engine, publish burst, idempotency keys (and
counters), handler deps, tracer and metrics.

Built once per process and domain (connections are not fork-safe), from the app's own
settings. Tests build a `Runtime` directly with fakes (tests/unit/handler_harness.py).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from choreo.app.bootstrap import LiveDeps
from choreo.infra import tracing
from choreo.infra.db import engine_for
from choreo.infra.hotspans import HotTracer
from choreo.infra.idempotency import Idempotency
from choreo.infra.redis_client import redis_client
from choreo.infra.telemetry import Recorder
from choreo.messaging.publisher import ConfirmedBurst
from choreo.messaging.topology import Names
from config.settings import Settings
from consumers.base import HandlerDeps
from tasks.faults import Faults, load_faults


@dataclass
class Runtime:
    settings: Settings
    domain: str
    engine: Engine
    names: Names
    burst: ConfirmedBurst
    idempotency: Idempotency
    deps: HandlerDeps
    tracer: HotTracer | None = None  # None: tracing off (settings.tracing), or a test's runtime
    recorder: Recorder | None = None
    faults: Faults | None = None  # a test's hooks (tasks.faults); None in production
    pid: int = field(default_factory=os.getpid)


_runtimes: dict[tuple, Runtime] = {}
_lock = threading.Lock()


def _reset_after_fork() -> None:
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def runtime(app) -> Runtime:
    """This process's runtime for the domain of `app` (a tasks.app.ChoreoApp)."""
    settings, domain = app.settings, app.domain
    key = (os.getpid(), domain, settings.namespace, settings.broker_url)
    with _lock:
        rt = _runtimes.get(key)
        if rt is None:
            names = Names(settings.namespace)
            r = redis_client(settings)
            rt = Runtime(
                settings=settings,
                domain=domain,
                engine=engine_for(settings, domain),
                names=names,
                burst=ConfirmedBurst(app, settings.publish_confirm_timeout),
                idempotency=Idempotency(r, settings.redis_prefix, settings.idempotency_ttl),
                deps=LiveDeps(settings, r, domain),
                tracer=tracing.hot_tracer(settings, domain),
                recorder=Recorder(domain, settings.metrics),
                faults=load_faults(domain),
            )
            _runtimes[key] = rt
        return rt
