"""Alerts that survive what they alert on: a killed worker's queue has no consumer, and the stack's
monitor (a process that is not a worker) still counts it, so ChoreoQueueWithoutConsumer fires in
a real Prometheus within its window and clears once the worker consumes again; `choreo order` of
an order waiting in that queue says where it waits; the dashboard links choreo prints answer."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.helpers import settled, sqlite_pass_only, wait_for

pytestmark = [pytest.mark.e2e, sqlite_pass_only]  # the broker, the monitor and Prometheus
NAME, DOMAIN = "worker-payment", "payment"
ALERT = "ChoreoQueueWithoutConsumer"


def _no_consumer_alerts(s, queue: str) -> list[dict]:
    from choreo.ops import prometheus as prom

    return [
        a
        for a in prom.alerts(s)
        if a["labels"].get("alertname") == ALERT and a["labels"].get("queue") == queue
    ]


def test_a_killed_worker_fires_the_no_consumer_alert_and_its_orders_say_where_they_wait(
    settings, stack, tmp_path
):
    from click.testing import CliRunner

    from choreo.cli import cli
    from choreo.messaging.topology import Names
    from choreo.ops import prometheus as prom
    from choreo.ops.stack import free_port, wait_consuming
    from choreo.ops.status import gather_status
    from choreo.ops.workload import publish_orders

    queue = Names(settings.namespace).queue(DOMAIN)
    # A Prometheus of the test's own (folder, port) scraping the session's stack every second,
    # with a 5 s window instead of the default minute: the same generated rules otherwise.
    s = settings.model_copy(
        update={
            "run_dir": tmp_path / "run",
            "prometheus_port": free_port(),
            "prometheus_interval": 1.0,
            "alert_no_consumer_for": 5.0,
        }
    )
    assert gather_status(settings)["health"]["monitor"]["health"] == "ok"
    runner = CliRunner()
    try:
        prom.start(s)
        prom.wait_ready(s, 30)
        # The links `choreo up` and `choreo demo` print answer on the Prometheus installed here.
        links = prom.ui_links(s)
        for page, link in {**links, "home": prom.url(s)}.items():
            r = httpx.get(link, timeout=5, trust_env=False, follow_redirects=True)
            assert r.status_code == 200, f"{page}: {link} answered {r.status_code}"

        consumers = f'choreo_queue_consumers{{process="monitor",queue="{queue}",kind="queue"}}'
        wait_for(
            lambda: [r["value"][1] for r in prom.query(s, consumers)] == ["1"],
            30,
            0.5,
            what=f"the monitor's count of 1 consumer on {queue} in Prometheus",
        )
        assert not _no_consumer_alerts(s, queue)

        stack.kill(NAME)  # kill -9: nothing of the worker is left to report its own queue
        ((order_id, _),) = publish_orders(settings, ["completed"], seed=None)
        fired = wait_for(
            lambda: [a for a in _no_consumer_alerts(s, queue) if a["state"] == "firing"],
            45,
            0.5,
            what=f"{ALERT} firing for {queue}",
        )
        assert fired[0]["labels"]["domain"] == DOMAIN
        assert fired[0]["labels"]["severity"] == "critical"

        def waiting() -> dict | None:
            out = runner.invoke(cli, ["order", order_id, "--json"])
            assert out.exit_code == 0, out.output
            return json.loads(out.output)["waiting"]

        w = wait_for(waiting, 30, 0.5, what=f"{order_id} waiting on payment")
        assert w["service"] == DOMAIN
        assert w["queue"]["name"] == queue
        assert w["queue"]["consumers"] == 0 and w["queue"]["messages"] >= 1
        text = runner.invoke(cli, ["order", order_id])
        assert text.exit_code == 0, text.output
        assert f"in {queue}: " in text.output and "0 consumers" in text.output, text.output
        assert "worker down?" in text.output, text.output

        stack.start(NAME)  # what `choreo up` / `choreo start` do
        wait_consuming(settings, stack, [NAME], 60)
        settled(settings, [order_id])
        wait_for(
            lambda: not _no_consumer_alerts(s, queue),
            30,
            0.5,
            what=f"{ALERT} for {queue} cleared once the worker consumes",
        )
        done = runner.invoke(cli, ["order", order_id, "--json"])
        assert json.loads(done.output)["waiting"] is None
    finally:  # the session's stack as it was, whatever failed above
        stack.start(NAME)
        wait_consuming(settings, stack, [NAME], 60)
        prom.stop(s)
