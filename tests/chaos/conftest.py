"""One CI-sized chaos run shared by the chaos tests: its report is what they assert on.

The harness builds its own sandbox (vhost, Redis server, folders, ports), so it needs no
fixture from tests/conftest.py; it inherits that file's short retry ladder through the
environment. Set CHOREO_CHAOS_SEED to replay a run's fault schedule, and CHOREO_CHAOS_REPORT
to a path to keep the run's report as JSON (a CI artifact).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

CI_RUN = {
    "orders": 250,
    "duration": 60.0,
    "kill_every": 4.0,
    "broker_restart": "vhost",
    "settle_timeout": 90.0,
    # one domain stopped longer than its deadline: sagas expire, late answers are undone
    "outage": 16.0,
    "deadline": 10.0,
}


@pytest.fixture(scope="session")
def ci_run() -> dict:
    return dict(CI_RUN)


@pytest.fixture(scope="module")
def chaos_report(ci_run):
    from rich.console import Console

    from choreo.devtools.chaos import ChaosConfig, run_chaos

    missing = [tool for tool in ("rabbitmqctl", "redis-server") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"chaos tests need {', '.join(missing)} on PATH (make setup installs them)")
    seed = int(os.environ["CHOREO_CHAOS_SEED"]) if os.environ.get("CHOREO_CHAOS_SEED") else None
    # Printed into the captured output: shown with any failure, with the seed to replay it.
    report = run_chaos(
        ChaosConfig(seed=seed, **ci_run), console=Console(width=140, force_terminal=False)
    )
    if os.environ.get("CHOREO_CHAOS_REPORT"):
        Path(os.environ["CHOREO_CHAOS_REPORT"]).write_text(
            json.dumps(report.as_dict(), indent=2, default=str)
        )
    return report
