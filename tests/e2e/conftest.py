"""A real stack for the run: the user service and five worker processes, started like
`choreo up`."""

from __future__ import annotations

import pytest


def start_stack(settings, env=None, names=None):
    from choreo.ops.stack import bring_up, process_names

    return bring_up(
        settings, names or [n for n in process_names(settings) if n != "flower"], 90, env
    )


def own_stack_settings(settings, root, tag: str, **more):
    """Settings of a second stack beside the run's (and the environment that says them to its
    processes): its own namespace, run and data folders, databases (on PostgreSQL the run's
    other order workers would otherwise fire its timers as their own), user service, monitor and
    health ports, plus `more`."""
    import uuid

    from choreo.ops.stack import free_port, free_port_block
    from config.settings import HEALTH_PORT_OFFSETS

    run = uuid.uuid4().hex[:6]
    update = {
        "namespace": f"{tag}-{run}",
        "database_prefix": f"{settings.database_prefix}_{tag}{run}",
        "run_dir": root / "run",
        "data_dir": root / "data",
        "user_service_port": free_port(),
        "monitor_port": free_port(),
        "health_port_base": free_port_block(len(HEALTH_PORT_OFFSETS)),
        **more,
    }
    env = {f"CHOREO_{k.upper()}": str(v) for k, v in update.items()}
    return settings.model_copy(update=update), env


@pytest.fixture(scope="session")
def stack(settings):
    from choreo.ops.stack import process_names

    s = start_stack(settings)
    yield s
    for name in reversed(process_names(settings)):
        s.stop(name)
