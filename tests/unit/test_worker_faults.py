"""Test fault hooks come through the runtime (tasks.faults), never through settings: off unless
the environment names a hook module, and called at each named point of a batch, in order.
(The crash proofs that use them: tests/e2e/test_crash_points.py.)"""

from __future__ import annotations

import pytest

from config.catalog import CARD_OK
from tasks.faults import HOOK_ENV, POINTS, load_faults
from tests.unit.handler_harness import Harness
from tests.unit.test_handlers import snapshot


class Recording:
    def __init__(self) -> None:
        self.points: list[str] = []

    def at(self, point: str) -> None:
        self.points.append(point)


class HookedBurst:
    """The harness's burst, calling `before_each` as the real one does before each publish."""

    def __init__(self, burst) -> None:
        self.burst = burst

    def run(self, messages, before_each=None):
        for n in range(len(messages)):
            if before_each is not None:
                before_each(n, len(messages))
        return self.burst.run(messages)


def test_no_hook_is_loaded_unless_the_environment_names_one(monkeypatch):
    monkeypatch.delenv(HOOK_ENV, raising=False)
    assert load_faults("payment") is None
    monkeypatch.setenv(HOOK_ENV, "")
    assert load_faults("payment") is None


def test_the_named_module_gives_the_hook_for_the_domain(monkeypatch, tmp_path):
    (tmp_path / "my_faults.py").write_text(
        "class Hook:\n    def at(self, point): pass\n\n"
        "def faults(domain):\n    return Hook() if domain == 'payment' else None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(HOOK_ENV, "my_faults")
    assert type(load_faults("payment")).__name__ == "Hook"
    assert load_faults("order") is None


def test_the_adapter_calls_the_hook_at_each_point_of_a_batch_in_order(tmp_path):
    with Harness("payment", tmp_path) as h:
        assert h.rt.faults is None  # what production runs: no hook
        h.rt.faults = hook = Recording()
        h.rt.burst = HookedBurst(h.burst)
        envelopes = [
            h.envelope(
                "order.placed",
                f"ord-{n}",
                {"order": snapshot(("SKU-RED", 1)), "card_token": CARD_OK},
            )
            for n in range(2)
        ]
        results = h.deliver_batch(envelopes)
    assert [r.outcome.kind for r in results] == ["processed"] * 2
    assert hook.points == list(POINTS)


def test_the_crash_hook_refuses_an_unknown_point_and_spares_other_domains(monkeypatch, tmp_path):
    from tests.e2e import crash_hook

    monkeypatch.setenv("CHOREO_FAULT_CRASH_POINT", "sometime")
    with pytest.raises(ValueError, match="CHOREO_FAULT_CRASH_POINT"):
        crash_hook.faults("inventory")
    monkeypatch.setenv("CHOREO_FAULT_CRASH_POINT", "after_commit")
    monkeypatch.setenv("CHOREO_FAULT_CRASH_DOMAIN", "inventory")
    monkeypatch.setenv("CHOREO_FAULT_MARKER", str(tmp_path / "armed"))
    assert crash_hook.faults("payment") is None
    hook = crash_hook.faults("inventory")
    exits: list[int] = []
    monkeypatch.setattr(crash_hook.os, "_exit", exits.append)
    hook.at("after_commit")  # no marker: no crash
    (tmp_path / "armed").write_text("armed")
    hook.at("before_commit")
    hook.at("after_commit")
    hook.at("after_commit")  # once per marker
    assert exits == [137] and not (tmp_path / "armed").exists()
