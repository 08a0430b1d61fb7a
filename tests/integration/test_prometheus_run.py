"""A private Prometheus started by `choreo up`'s code path (choreo.ops.prometheus) scrapes a
process of the stack, sees one that does not answer, answers at the links choreo prints, and stops
by its pid."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable

import httpx
import pytest

from tests.helpers import sqlite_pass_only

pytestmark = [pytest.mark.integration, sqlite_pass_only]  # Prometheus and /metrics only


def wait_until(what: str, check: Callable[[], object], timeout: float = 45.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout:.0f}s")
        time.sleep(0.5)


@pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="prometheus is not installed (scripts/ensure-services.sh installs it, as root)",
)
def test_a_private_prometheus_scrapes_a_worker_sees_a_missing_process_and_stops():
    from prometheus_client import CollectorRegistry, Counter, start_http_server

    from choreo.devtools.sandbox import Sandbox
    from choreo.ops import prometheus as prom
    from choreo.ops.stack import alive, free_port

    # One "worker": a metrics server on a free loopback port, as the order worker's listener.
    registry = CollectorRegistry()
    requests = Counter(
        "service_request", "Messages handled.", ["service", "type", "outcome"], registry=registry
    )
    requests.labels("order", "order.placed", "processed").inc(3)
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    sandbox = Sandbox("prom", health_port_base=port - 1)
    pid = None
    try:
        s = sandbox.open().settings
        assert prom.scrape_targets(s)["worker-order"] == f"127.0.0.1:{port}"
        assert prom.running(s) is None
        pid = prom.start(s)
        assert prom.start(s) == pid, "a second start runs a second Prometheus"
        prom.wait_ready(s, 30)
        assert prom.running(s) == pid

        found = wait_until(
            "service_request_total of the order worker",
            lambda: prom.query(
                s, 'service_request_total{job="choreo",process="worker-order",service="order"}'
            ),
        )
        assert [r["value"][1] for r in found] == ["3"]

        def up() -> dict[str, str]:
            return {
                r["metric"]["process"]: r["value"][1] for r in prom.query(s, 'up{job="choreo"}')
            }

        seen = wait_until(
            "up of the order worker and the user service",
            lambda: (lambda u: u if {"worker-order", "users"} <= set(u) else None)(up()),
        )
        assert seen["worker-order"] == "1"
        assert seen["users"] == "0"  # nothing listens on the sandbox's user-service port
        with pytest.raises(RuntimeError, match="query"):
            prom.query(s, "up{")
        # The links `choreo up` prints answer on this Prometheus (2.42: under /classic/).
        for page, link in prom.ui_links(s).items():
            r = httpx.get(link, timeout=5, trust_env=False)
            assert r.status_code == 200, f"{page}: {link} answered {r.status_code}"
    finally:
        stopped = prom.stop(sandbox.settings)
        server.shutdown()
        server.server_close()
        sandbox.close()
    assert stopped
    assert pid is not None and not alive(pid)
    assert prom.running(sandbox.settings) is None
    assert not prom.stop(sandbox.settings), "stop with nothing running says so"
