"""Which service hears which messages, per saga mode: the single source the topology is derived
from.

Each service is a folder, `consumers/<name>/`, found by its name in `config.settings.DOMAINS`
(the one line that registers a domain; the orchestrator runs in the orchestrated mode only).
Its `handlers.py` holds `SUBSCRIPTIONS`, a table keyed by message class; a domain that hears
other messages when orchestrated (the orchestrator's commands instead of each other's events)
adds `ORCHESTRATED`. A queue's bindings are the classes' declared routing keys.
"""

from __future__ import annotations

from functools import cache
from types import ModuleType

from choreo.messaging.topology import Topology
from config.settings import DOMAINS, SAGA_MODES, Settings
from consumers.base import Subscription, Subscriptions
from models.envelope import ORCHESTRATOR
from models.services import service_part


def handlers_of(service: str) -> ModuleType:
    """The service's handlers module, `consumers.<service>.handlers`."""
    module = service_part(service, "handlers")
    assert module is not None
    return module


def _table(service: str, mode: str) -> Subscriptions:
    """What a service hears in a mode: its ORCHESTRATED table when orchestrated, if it has one."""
    handlers = handlers_of(service)
    if mode == "orchestrated" and hasattr(handlers, "ORCHESTRATED"):
        return handlers.ORCHESTRATED
    return handlers.SUBSCRIPTIONS


def _tables(mode: str) -> dict[str, Subscriptions]:
    tables = {d: _table(d, mode) for d in DOMAINS}
    if mode == "orchestrated":  # the orchestrator runs in this mode only
        tables[ORCHESTRATOR] = _table(ORCHESTRATOR, mode)
    return tables


@cache
def modes() -> dict[str, dict[str, Subscriptions]]:
    """mode -> service -> its table (message class -> subscription)."""
    return {mode: _tables(mode) for mode in SAGA_MODES}


@cache
def _by_key() -> dict[str, dict[str, dict[str, Subscription]]]:
    return {
        mode: {
            s: {kind.routing_key: sub for kind, sub in table.items()} for s, table in tables.items()
        }
        for mode, tables in modes().items()
    }


def subscriptions(mode: str) -> dict[str, dict[str, Subscription]]:
    """What the adapter looks up by an envelope's type: service -> routing key -> subscription."""
    return _by_key()[mode]


def topology(settings: Settings) -> Topology:
    """The broker topology these tables give: each service's queue bound to the keys it hears."""
    return Topology(
        settings,
        {mode: {s: sorted(subs) for s, subs in table.items()} for mode, table in _by_key().items()},
    )
