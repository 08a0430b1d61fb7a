"""A real stack for the run: the user service and five worker processes, started like
`choreo up`."""

from __future__ import annotations

import pytest


def start_stack(settings, env=None, names=None):
    from choreo.ops.stack import bring_up, process_names

    return bring_up(
        settings, names or [n for n in process_names(settings) if n != "flower"], 90, env
    )


@pytest.fixture(scope="session")
def stack(settings):
    from choreo.ops.stack import process_names

    s = start_stack(settings)
    yield s
    for name in reversed(process_names(settings)):
        s.stop(name)
