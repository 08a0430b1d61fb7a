"""Test hooks at the named points of a batch, injected through the runtime (Runtime.faults).

Off in production: `Runtime.faults` is None unless the process's environment names a hook
module in CHOREO_FAULT_HOOK (a test sets it for the one worker it starts; the sandbox blanks it,
so a shell's value is never inherited). The module's `faults(domain)` returns an object with an
`at(point)` method, or None; tasks.adapter calls it at each of POINTS. The crash proofs
(tests/e2e/test_crash_points.py) exit hard there, like kill -9.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Protocol

log = logging.getLogger("choreo.faults")

HOOK_ENV = "CHOREO_FAULT_HOOK"

# Where tasks.adapter calls a hook, in a batch's order.
POINTS = ("before_commit", "after_commit", "mid_burst", "after_publish")
# Where tasks.timers calls it, in a sweep that found due timers: inside the transaction that
# fires them, after its commit (nothing published), after the publish (nothing marked sent).
TIMER_POINTS = ("timer_before_commit", "timer_after_commit", "timer_after_publish")


class Faults(Protocol):
    def at(self, point: str) -> None:
        """Called at `point` (one of POINTS) of every batch, and of TIMER_POINTS of every sweep
        that fires timers."""


def load_faults(domain: str) -> Faults | None:
    """The test hook the environment names for this process, or None (always, in production)."""
    module = os.environ.get(HOOK_ENV, "")
    if not module:
        return None
    hook = importlib.import_module(module).faults(domain)
    if hook is not None:
        log.warning("test fault hook %s is active in this %s worker", module, domain)
    return hook
