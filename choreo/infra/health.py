"""One small loopback HTTP listener per process: /health, /ready, /metrics, /breakers.

  /health    liveness: the process's loop is alive (it made progress, or it waits idle, or it
             is reconnecting to a broker that is away). Never fails just because the broker is
             down: a supervisor would restart-loop a worker that is only waiting.
  /ready     readiness: connected and consuming, database and Redis reachable (503 if not).
  /metrics   Prometheus text format (prometheus_client's default registry).
  /breakers  each circuit breaker's state and counts (Spring's actuator/circuitbreakers).

The user service answers the same paths on its own port (`route` is shared); a worker runs
`HealthServer` in a daemon thread of its main process, so it answers while a batch runs.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger("choreo.infra.health")


class Probes(Protocol):
    def liveness(self) -> tuple[bool, dict]: ...
    def readiness(self) -> tuple[bool, dict]: ...
    def breakers(self) -> list[dict]: ...


def route(path: str, probes: Probes, service: str) -> tuple[int, str, bytes] | None:
    """The answer to GET `path`, or None when it is not one of the four paths."""
    path = path.split("?")[0].rstrip("/") or "/"
    if path == "/metrics":
        return 200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY)
    if path == "/health":
        ok, detail = probes.liveness()
        # The pid: a second process of the same service cannot bind this port, so the pid says
        # which process answers (the one `choreo status` lists, or not).
        return _json(
            200 if ok else 503,
            {"status": "ok" if ok else "stalled", "service": service, "pid": os.getpid(), **detail},
        )
    if path == "/ready":
        ok, detail = probes.readiness()
        return _json(200 if ok else 503, {"ready": ok, "service": service, **detail})
    if path == "/breakers":
        return _json(200, {"service": service, "breakers": probes.breakers()})
    return None


def _json(status: int, body: dict) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(body, default=str).encode()


def answer(handler: BaseHTTPRequestHandler, status: int, content_type: str, data: bytes) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class HealthServer:
    """The listener of a worker (or any process without an HTTP server of its own)."""

    def __init__(self, host: str, port: int, probes: Probes, service: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                try:
                    found = route(self.path, probes, service)
                except Exception as exc:  # a probe's bug must not kill the listener
                    log.error("health route %s failed: %r", self.path, exc, exc_info=True)
                    found = _json(500, {"error": repr(exc)[:300]})
                answer(self, *(found or _json(404, {"error": "not found", "paths": PATHS})))

            def log_message(self, fmt, *args) -> None:
                log.debug("health http: " + fmt, *args)

        self.server = _Server((host, port), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="health-http", daemon=True
        )

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> HealthServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


PATHS = ["/health", "/ready", "/metrics", "/breakers"]


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True


class Cached:
    """A probe's result kept `ttl` seconds: a burst of scrapes or curls costs one check."""

    def __init__(self, fn: Callable[[], tuple[bool, dict]], ttl: float = 1.0) -> None:
        self.fn, self.ttl = fn, ttl
        self._at = 0.0
        self._value: tuple[bool, dict] = (False, {})
        self._lock = threading.Lock()

    def __call__(self) -> tuple[bool, dict]:
        with self._lock:
            now = time.monotonic()
            if now - self._at >= self.ttl:
                self._value, self._at = self.fn(), now
            return self._value
