"""The crash proofs' fault hook (tasks.faults): a worker that loads it exits hard, like kill -9,
at one point of a batch, once per marker file.

A test names this module in CHOREO_FAULT_HOOK for the one worker it starts, with
CHOREO_FAULT_CRASH_POINT (one of tasks.faults.POINTS or TIMER_POINTS), CHOREO_FAULT_CRASH_DOMAIN and
CHOREO_FAULT_MARKER (the worker crashes only if the file exists, and removes it first).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tasks.faults import POINTS, TIMER_POINTS

log = logging.getLogger("choreo.faults")


class CrashOnce:
    def __init__(self, point: str, marker: Path) -> None:
        self.point, self.marker = point, marker

    def at(self, point: str) -> None:
        if point != self.point:
            return
        try:
            self.marker.unlink()
        except FileNotFoundError:
            return
        log.warning("fault injection: exiting hard at %s", point)
        os._exit(137)


def faults(domain: str) -> CrashOnce | None:
    point = os.environ.get("CHOREO_FAULT_CRASH_POINT", "")
    if point not in (*POINTS, *TIMER_POINTS):
        raise ValueError(
            f"CHOREO_FAULT_CRASH_POINT must be one of {', '.join((*POINTS, *TIMER_POINTS))}: "
            f"{point!r}"
        )
    if os.environ.get("CHOREO_FAULT_CRASH_DOMAIN") != domain:
        return None
    return CrashOnce(point, Path(os.environ["CHOREO_FAULT_MARKER"]))
