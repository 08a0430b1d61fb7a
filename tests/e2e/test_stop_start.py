"""`choreo stop NAME` stops one process and keeps it stopped: its queue has no consumer, the
restarters (the chaos harness, `wait_consuming(start=...)`) leave it alone and `choreo status`
says it was stopped on purpose; `choreo start NAME` starts it and waits until it consumes."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from tests.helpers import wait_for

pytestmark = pytest.mark.e2e
NAME = "worker-shipment"


def _consumers(settings, domain: str) -> int:
    from choreo.messaging.admin import BrokerAdmin

    queue = f"{settings.namespace}.{domain}"
    with BrokerAdmin(settings) as admin:
        return next(q["consumers"] for q in admin.queue_stats() if q["name"] == queue) or 0


def test_a_worker_stopped_on_purpose_stays_stopped_until_started(settings, stack):
    from click.testing import CliRunner
    from rich.console import Console

    from choreo.cli import cli
    from choreo.devtools.chaos.faults import Faults
    from choreo.devtools.chaos.report import Journal
    from choreo.ops.stack import alive, process_names, wait_consuming
    from choreo.ops.status import HELD, gather_status

    runner = CliRunner()
    before = stack.pid(NAME)
    assert before, f"{NAME} is not running before the test"
    try:
        stopped = runner.invoke(cli, ["stop", NAME])
        assert stopped.exit_code == 0, stopped.output
        assert f"stopped {NAME} (pid {before})" in stopped.output
        assert not alive(before) and stack.pid(NAME) is None and stack.held(NAME)
        wait_for(lambda: _consumers(settings, "shipment") == 0, 15, what="no consumer on shipment")

        again = runner.invoke(cli, ["stop", NAME])  # already stopped: says so, still held
        assert again.exit_code == 0 and f"{NAME} was not running" in again.output, again.output

        # The chaos harness's restarter: nothing started, not counted as a process found dead.
        faults = Faults(
            SimpleNamespace(settings=settings),  # type: ignore[arg-type]
            stack,
            random.Random(0),
            Journal(Console(quiet=True)),
            "none",
        )
        faults.restart_due[NAME] = 0.0  # as if it had just killed it
        faults.tend()
        names = [n for n in process_names(settings) if n != "flower"]
        wait_consuming(settings, stack, names, 30, start=faults.start)
        assert stack.pid(NAME) is None and faults.counts["unexpected_exit"] == 0
        assert _consumers(settings, "shipment") == 0
        assert gather_status(settings)["health"][NAME]["health"] == HELD

        started = runner.invoke(cli, ["start", NAME, "--wait", "60"])
        assert started.exit_code == 0, started.output
        pid = stack.pid(NAME)
        assert pid and pid != before and f"started {NAME} (pid {pid})" in started.output
        assert not stack.held(NAME)
        assert _consumers(settings, "shipment") == 1
    finally:  # the session's stack as it was, whatever failed above
        stack.start(NAME)
        wait_consuming(settings, stack, [NAME], 60)
