"""`choreo chaos`: place orders while killing workers, restarting the broker and Redis and injecting
duplicates, out-of-order events and poison; then let the system settle and audit it.

Everything runs in a sandbox of its own (a RabbitMQ vhost, a Redis server it starts, data,
run and log folders, ports), so a run never touches `choreo up`'s stack or a test session,
and every process it signals is one it started. Faults follow a schedule drawn from a
seeded random.Random: a run is repeatable up to the machine's timing.
"""

from __future__ import annotations

from choreo.devtools.chaos.report import ChaosConfig, ChaosReport
from choreo.devtools.chaos.run import run_chaos

__all__ = ["ChaosConfig", "ChaosReport", "run_chaos"]
