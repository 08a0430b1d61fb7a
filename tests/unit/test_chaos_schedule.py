"""The chaos run's one-off faults: each scheduled fault fires exactly the fault it names."""

from __future__ import annotations

import random

import pytest

from choreo.devtools.chaos.report import ChaosConfig
from choreo.devtools.chaos.run import _Schedule, fire_one_off


class FakeFaults:
    """Records the faults asked for; `bounce_ok` says whether a stop_app bounce ran."""

    def __init__(self, bounce_ok: bool = True) -> None:
        self.bounce_ok = bounce_ok
        self.calls: list[str] = []

    def restart_broker(self) -> None:
        self.calls.append("broker")

    def kill_leader_node(self, seconds: float) -> None:
        self.calls.append("node_kill")

    def bounce_app(self, seconds: float) -> bool:
        self.calls.append("stop_app")
        return self.bounce_ok

    def restart_redis(self, snapshot) -> None:
        self.calls.append("redis")


class FakeInjector:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def poison(self) -> None:
        self.calls.append("poison")


def fire(what: str, faults: FakeFaults) -> float | None:
    injector = FakeInjector(faults.calls)
    return fire_one_off(what, 10.0, ChaosConfig(), None, faults, injector, random.Random(1))


@pytest.mark.parametrize("what", ["poison", "broker", "node_kill", "stop_app", "redis"])
def test_a_one_off_fires_only_itself(what):
    faults = FakeFaults()
    assert fire(what, faults) is None
    assert faults.calls == [what]


def test_a_successful_stop_app_bounce_does_not_also_restart_redis():
    # The old if/elif chain fell through to the Redis restart after every successful bounce.
    faults = FakeFaults(bounce_ok=True)
    fire("stop_app", faults)
    assert "redis" not in faults.calls


def test_a_refused_bounce_is_tried_again_a_second_later_and_nothing_else_happens():
    faults = FakeFaults(bounce_ok=False)
    assert fire("stop_app", faults) == 11.0
    assert faults.calls == ["stop_app"]


def test_an_unknown_fault_name_is_an_error():
    with pytest.raises(ValueError, match="unknown one-off fault"):
        fire("meteor", FakeFaults())


def test_the_fault_phase_outlasts_its_duration_only_while_a_one_off_fault_waits():
    cfg = ChaosConfig(duration=70.0, settle_timeout=150.0)
    # The node kill happened; the stop_app (due at 31 s) waits for the killed node to run again.
    schedule = _Schedule({"node_kill": None, "stop_app": 1031.0}, [], next_kill=1000.0)
    assert schedule.injecting(1069.0, 1000.0, cfg)
    assert schedule.injecting(1100.0, 1000.0, cfg)  # past the duration: it has not happened
    assert not schedule.injecting(1220.0, 1000.0, cfg)  # bounded by the settle timeout
    schedule.one_offs["stop_app"] = None  # it happened
    assert not schedule.injecting(1070.0, 1000.0, cfg)
