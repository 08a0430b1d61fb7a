"""The user service (customers over HTTP, plus /health /ready /metrics /breakers) and its client, behind a
shared circuit breaker and a bulkhead."""
from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pybreaker
import redis
from sqlalchemy.engine import Engine
from sqlmodel import Session

from choreo.infra.db import reachable
from choreo.infra.health import Cached, answer, route
from choreo.infra.telemetry import Recorder
from config.catalog import CUSTOMERS
from models.tables import Customer

log = logging.getLogger("choreo.world.users")


class UserServiceUnavailable(Exception):
    """Transient: the user service did not answer; the retry ladder will try again."""


class UsersClient:
    """GET /users/{id}. One pooled HTTP client per process; a breaker whose state lives in Redis,
    so every worker process stops calling a dead service at once; a semaphore as bulkhead so a
    slow user service can hold at most `max_concurrent` of this process's threads."""

    def __init__(self, base_url: str, redis_client: redis.Redis | None, namespace: str,
                 timeout: float = 2.0, max_concurrent: int = 4) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=timeout)
        storage = None
        if redis_client is not None:
            storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, redis_client,
                                                    namespace=f"{namespace}:breaker:users")
        self.breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=10, state_storage=storage,
                                                name="user-service")
        self.bulkhead = threading.BoundedSemaphore(max_concurrent)

    def _fetch(self, customer_id: str) -> dict | None:
        resp = self.http.get(f"/users/{customer_id}")
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        return resp.json()

    def get(self, customer_id: str) -> dict | None:
        if not self.bulkhead.acquire(timeout=5):
            raise UserServiceUnavailable("bulkhead full: too many concurrent user-service calls")
        try:
            return self.breaker.call(self._fetch, customer_id)
        except pybreaker.CircuitBreakerError as exc:
            raise UserServiceUnavailable(f"circuit open: {exc}") from None
        except (httpx.HTTPError, redis.RedisError) as exc:
            raise UserServiceUnavailable(f"user service: {exc!r}") from None
        finally:
            self.bulkhead.release()

    def breaker_state(self) -> dict:
        return {"name": self.breaker.name, "state": self.breaker.current_state,
                "failures": self.breaker.fail_counter}


def seed_customers(engine: Engine) -> None:
    with Session(engine) as s:
        for cid in CUSTOMERS:
            if s.get(Customer, cid) is None:
                n = cid.split("-")[1]
                s.add(Customer(id=cid, name=f"Customer {n}", email=f"customer{n}@example.test"))
        s.commit()


class UserServiceProbes:
    """The user service's /health (its HTTP thread answers), /ready (its database answers),
    /breakers (none: the breakers are in its callers, the workers)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.readiness = Cached(self._readiness)

    def liveness(self) -> tuple[bool, dict]:
        return True, {"state": "serving"}

    def _readiness(self) -> tuple[bool, dict]:
        ok = reachable(self.engine)
        return ok, {"checks": {"database": ok}}

    def breakers(self) -> list[dict]:
        return []


def make_server(engine: Engine, host: str, port: int, metrics: bool = True) -> ThreadingHTTPServer:
    probes = UserServiceProbes(engine)
    recorder = Recorder("users", metrics)

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            parts = [p for p in self.path.split("?")[0].split("/") if p]
            if len(parts) == 2 and parts[0] == "users":
                started = time.monotonic()
                try:
                    with Session(engine) as s:
                        c = s.get(Customer, parts[1])
                except Exception:
                    recorder.handled("GET /users", "error", time.monotonic() - started)
                    raise
                recorder.handled("GET /users", "processed" if c else "not_found", time.monotonic() - started)
                if c is None:
                    return self._send(404, {"error": f"no user {parts[1]!r}"})
                return self._send(200, {"id": c.id, "name": c.name, "email": c.email})
            found = route(self.path, probes, "users")
            if found is not None:
                return answer(self, *found)
            return self._send(404, {"error": "not found"})

        def log_message(self, fmt, *args) -> None:
            log.debug("users http: " + fmt, *args)

    return _Server((host, port), Handler)


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True  # a restarted service rebinds its port at once (no TIME_WAIT wait)
