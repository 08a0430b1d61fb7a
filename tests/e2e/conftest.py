"""A real stack for the run: the user service and five worker processes, started like `choreo up`."""
from __future__ import annotations

import pytest

from tests.helpers import wait_for


def start_stack(settings, env=None, names=None):
    from choreo.messaging.admin import BrokerAdmin
    from choreo.stack import Stack, process_names
    from config.settings import DOMAINS

    stack = Stack(settings, env)
    names = names or [n for n in process_names() if n != "flower"]
    for name in names:
        stack.start(name)

    def consuming():
        with BrokerAdmin(settings) as admin:
            stats = {q["name"]: q["consumers"] for q in admin.queue_stats()}
        dead = [n for n in names if stack.pid(n) is None]
        assert not dead, f"processes died at start: {dead}; see {stack.log_dir}"
        wanted = [d for d in DOMAINS if f"worker-{d}" in names]
        return all(stats.get(f"{settings.namespace}.{d}") for d in wanted)

    wait_for(consuming, 90, what="workers to consume")
    return stack


@pytest.fixture(scope="session")
def stack(settings):
    from choreo.stack import process_names

    s = start_stack(settings)
    yield s
    for name in reversed(process_names()):
        s.stop(name)
