"""The composition root: builds the real dependencies for workers, the CLI and tests alike."""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping

import redis
from celery import Celery
from sqlalchemy.engine import Engine

from choreo.db import engine_for
from choreo.gateway import SandboxGateway
from choreo.idempotency import Idempotency
from choreo.messaging.publisher import Publisher
from choreo.metrics import Metrics
from choreo.messaging.topology import Topology
from choreo.users import UsersClient
from config.catalog import PRICES_CENTS
from config.settings import Settings, get_settings


def redis_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2,
                                health_check_interval=15, retry_on_timeout=True)


@dataclass
class Deps:
    """What handlers may use. Built lazily: a domain that never calls the gateway never opens it."""
    settings: Settings
    _redis: redis.Redis | None = None

    @cached_property
    def gateway(self) -> SandboxGateway:
        return SandboxGateway(engine_for(self.settings, "gateway"))

    @property
    def catalog(self) -> Mapping[str, int]:
        """The order service's price list: the seller, not the client, sets the price."""
        return PRICES_CENTS

    @cached_property
    def users(self) -> UsersClient:
        return UsersClient(self.settings.users_url, self._redis, self.settings.redis_prefix)


@dataclass
class Runtime:
    settings: Settings
    domain: str
    app: Celery
    engine: Engine
    topology: Topology
    publisher: Publisher
    idempotency: Idempotency
    deps: Deps
    metrics: Metrics
    pid: int = field(default_factory=os.getpid)


_runtimes: dict[tuple, Runtime] = {}
_lock = threading.Lock()


def _reset_after_fork() -> None:
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def runtime(domain: str, app: Celery, settings: Settings | None = None) -> Runtime:
    """This process's runtime for `domain` (built once per process: connections are not fork-safe)."""
    settings = settings or getattr(app, "choreo_settings", None) or get_settings()
    key = (os.getpid(), domain, settings.namespace, settings.broker_url)
    with _lock:
        rt = _runtimes.get(key)
        if rt is None:
            topo = Topology(settings)
            r = redis_client(settings)
            rt = Runtime(settings=settings, domain=domain, app=app, engine=engine_for(settings, domain),
                         topology=topo, publisher=Publisher(app, topo.names),
                         idempotency=Idempotency(r, settings.redis_prefix, settings.idempotency_ttl),
                         deps=Deps(settings, r), metrics=Metrics(r, settings.redis_prefix))
            _runtimes[key] = rt
        return rt
