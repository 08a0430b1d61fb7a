"""A process stopped on purpose (`choreo stop NAME`) stays stopped: the mark under run_dir, the
restarters' `Stack.restart` that leaves it alone, the explicit `Stack.start` that ends it, and
the chaos harness and `wait_consuming(start=...)` that do not start it again.

No service is needed: the processes are `python -c 'sleep'` with ` -m choreo ` in their command
line, which is all `Stack` looks at to call a pid its own."""

from __future__ import annotations

import random
import sys
from types import SimpleNamespace

import pytest
from rich.console import Console

from choreo.ops import stack as stack_module
from choreo.ops.stack import Stack, alive, process_names
from config.settings import Settings

SLEEPER = "import time; time.sleep(60)"


@pytest.fixture
def stack(tmp_path, monkeypatch):
    """A Stack over a tmp run_dir whose processes sleep; every one is stopped at the end."""
    monkeypatch.setattr(
        stack_module, "argv_for", lambda name: [sys.executable, "-c", SLEEPER, "-m", "choreo", name]
    )
    settings = Settings(
        saga_mode="choreography", run_dir=tmp_path / "run", data_dir=tmp_path / "data"
    )
    s = Stack(settings)
    yield s
    for name in process_names(settings):
        s.stop(name, timeout=2)


def test_stop_on_purpose_marks_before_it_stops_and_a_restart_leaves_it_alone(stack):
    pid = stack.start("worker-shipment")
    assert stack.pid("worker-shipment") == pid and not stack.held("worker-shipment")
    assert stack.pidfile("worker-shipment").read_text() == f"{pid}\n"  # a line, as files end

    assert stack.stop_on_purpose("worker-shipment", timeout=2) == pid
    assert not alive(pid)
    assert stack.held("worker-shipment")
    assert stack.stopped_file("worker-shipment").exists()

    assert stack.restart("worker-shipment") is None
    assert stack.pid("worker-shipment") is None
    assert stack.held_names() == ["worker-shipment"]


def test_stopping_what_is_not_running_still_holds_it(stack):
    assert stack.stop_on_purpose("worker-payment", timeout=2) is None
    assert stack.held("worker-payment")
    assert stack.restart("worker-payment") is None


def test_an_explicit_start_ends_the_hold(stack):
    stack.stop_on_purpose("worker-order", timeout=2)
    pid = stack.start("worker-order")
    assert stack.pid("worker-order") == pid
    assert not stack.held("worker-order")
    assert stack.restart("worker-order") == pid  # running: the same pid, nothing started twice


def test_a_restart_starts_what_is_not_held(stack):
    pid = stack.restart("users")
    assert pid is not None and stack.pid("users") == pid


def test_a_hold_written_while_a_restarter_starts_stops_what_it_started(stack, monkeypatch):
    """The operator's mark lands between the restarter's look and its start: the restarter sees
    it once started and stops its process again."""
    launch = stack._launch

    def racing_launch(name: str) -> int:
        stack.hold(name)  # `choreo stop` writes its mark now, before the pid file exists
        return launch(name)

    monkeypatch.setattr(stack, "_launch", racing_launch)
    assert stack.restart("worker-inventory") is None
    assert stack.pid("worker-inventory") is None
    assert stack.held("worker-inventory")


def test_release_all_ends_every_hold(stack):
    for name in ("worker-order", "flower"):
        stack.hold(name)
    assert stack.release_all() == ["flower", "worker-order"]
    assert stack.held_names() == []


def test_wait_consuming_neither_waits_for_nor_starts_a_held_process(stack, monkeypatch):
    settings = stack.settings
    names = [n for n in process_names(settings) if n != "flower"]
    for name in names:
        stack.start(name)
    stack.stop_on_purpose("worker-shipment", timeout=2)
    stack.kill("worker-order")  # died on its own: a restarter starts it again

    class Admin:  # every queue consumed but shipment's, which has no worker
        def __init__(self, settings) -> None:
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        def queue_stats(self) -> list[dict]:
            return [
                {
                    "name": f"{settings.namespace}.{d}",
                    "messages": 0,
                    "consumers": int(d != "shipment"),
                }
                for d in settings.domains
            ]

    monkeypatch.setattr(stack_module, "BrokerAdmin", Admin)
    started: list[str] = []

    def restart(name: str) -> int | None:
        started.append(name)
        return stack.restart(name)

    stack_module.wait_consuming(settings, stack, names, 10, start=restart)
    assert started == ["worker-order"]
    assert stack.pid("worker-shipment") is None and stack.pid("worker-order")


def test_the_chaos_harness_leaves_a_held_worker_alone(stack):
    from choreo.devtools.chaos.faults import Faults
    from choreo.devtools.chaos.report import Journal

    journal = Journal(Console(quiet=True))
    sandbox = SimpleNamespace(settings=stack.settings)
    faults = Faults(sandbox, stack, random.Random(1), journal, "none")  # type: ignore[arg-type]
    for name in ["users", *faults.workers]:
        faults.start(name)
    stack.stop_on_purpose("worker-shipment", timeout=2)
    faults.restart_due["worker-shipment"] = 0.0  # as if it had killed it just before the stop

    faults.tend()

    assert stack.pid("worker-shipment") is None
    assert faults.counts["unexpected_exit"] == 0  # not "found dead"
    assert [a["kind"] for a in journal.actions if a.get("process") == "worker-shipment"] == ["held"]
    faults.tend()  # and again: nothing more to say about it
    assert faults.counts["unexpected_exit"] == 0
    assert all(stack.pid(n) for n in ["users", *faults.workers] if n != "worker-shipment")


@pytest.fixture
def cli_in(tmp_path, monkeypatch):
    """The `choreo` group with this test's run_dir (and nothing of a real stack in it)."""
    from click.testing import CliRunner

    from choreo.cli import cli
    from config.settings import get_settings

    monkeypatch.setenv("CHOREO_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("CHOREO_SAGA_MODE", "choreography")
    monkeypatch.setenv("CHOREO_WORKERS_PER_DOMAIN", "1")
    get_settings.cache_clear()
    yield lambda *args: CliRunner().invoke(cli, list(args))
    get_settings.cache_clear()


def test_stop_refuses_an_unknown_name_in_one_line_naming_the_valid_ones(cli_in):
    result = cli_in("stop", "worker-nope")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: unknown process 'worker-nope'; choose from: "
        + ", ".join(process_names(Settings(saga_mode="choreography")))
    ]
    assert cli_in("start", "prometheus").exit_code == 2  # not a Stack process: up/down run it


def test_stop_of_what_does_not_run_holds_it_and_down_ends_every_hold(cli_in, tmp_path):
    result = cli_in("stop", "worker-shipment")
    assert result.exit_code == 0, result.output
    assert "worker-shipment was not running; held stopped until" in result.output
    assert (tmp_path / "run" / "worker-shipment.stopped").exists()
    assert cli_in("down").exit_code == 0
    assert not (tmp_path / "run" / "worker-shipment.stopped").exists()


def test_the_agent_s_start_proposal_says_a_process_was_stopped_on_purpose(stack):
    from choreo.agent.tools import propose_start

    stack.stop_on_purpose("worker-shipment")
    proposal = propose_start(stack.settings, "worker-shipment", "it is not running")
    assert proposal["held"] is True and proposal["running"] is False
    assert "stopped on purpose (`choreo stop worker-shipment`)" in proposal["would"]
    assert proposal["executed"] is False and stack.held("worker-shipment")  # nothing done
    assert propose_start(stack.settings, "worker-payment")["held"] is False
