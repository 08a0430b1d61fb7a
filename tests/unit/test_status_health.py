"""`choreo status`'s per-process health: running processes are asked /health and /ready (in
parallel, with a short timeout), the others are not asked at all."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from choreo.ops.stack import free_port
from config.settings import Settings


def serve(answers: dict[str, int], delay: float = 0.0) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            time.sleep(delay)
            code = answers.get(self.path, 404)
            body = json.dumps({"status": "ok" if code == 200 else "no"}).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    class Quiet(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address) -> None:
            pass  # the slow one writes to a client that gave up

    server = Quiet(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_health_and_readiness_of_running_processes_only():
    from choreo.ops.status import process_health

    ready = serve({"/health": 200, "/ready": 200})
    not_ready = serve({"/health": 200, "/ready": 503})
    slow = serve({"/health": 200, "/ready": 200}, delay=2.0)  # past the probe's timeout: "down"
    try:
        # users answers ready, the order worker (base + 1) not ready; nothing listens for Flower.
        s = Settings(
            saga_mode="choreography",
            user_service_port=ready.server_address[1],
            health_port_base=not_ready.server_address[1] - 1,
            flower_port=free_port(),
        )
        pids = {"users": 11, "worker-order": 12, "worker-payment": None, "flower": 13}
        started = time.monotonic()
        health = process_health(s, pids)
        assert time.monotonic() - started < 1.5
        assert health["users"] == {
            "pid": 11,
            "health_url": f"http://127.0.0.1:{ready.server_address[1]}/health",
            "metrics_url": f"http://127.0.0.1:{ready.server_address[1]}/metrics",
            "health": "ok",
            "ready": True,
        }
        assert (health["worker-order"]["health"], health["worker-order"]["ready"]) == ("ok", False)
        assert (health["worker-payment"]["health"], health["worker-payment"]["ready"]) == (
            "not running",
            None,
        )
        assert (health["flower"]["health"], health["flower"]["ready"]) == (
            "down",
            None,
        )  # nothing listens

        slow_settings = s.model_copy(update={"user_service_port": slow.server_address[1]})
        started = time.monotonic()
        assert process_health(slow_settings, {"users": 11})["users"]["health"] == "down"
        assert time.monotonic() - started < 1.5
    finally:
        for server in (ready, not_ready, slow):
            server.shutdown()
            server.server_close()
