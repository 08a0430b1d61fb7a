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
from importlib import import_module
from types import ModuleType

from choreo.messaging.topology import Topology
from config.settings import DOMAINS, SAGA_MODES, Settings
from consumers.base import Subscription, Subscriptions
from models.envelope import ORCHESTRATOR


def handlers_of(service: str) -> ModuleType:
    """The service's handlers module, `consumers.<service>.handlers`."""
    return import_module(f"consumers.{service}.handlers")


def _tables(mode: str) -> dict[str, Subscriptions]:
    if mode == "choreography":
        return {d: handlers_of(d).SUBSCRIPTIONS for d in DOMAINS}
    tables = {
        d: getattr(handlers_of(d), "ORCHESTRATED", handlers_of(d).SUBSCRIPTIONS) for d in DOMAINS
    }
    return {**tables, ORCHESTRATOR: handlers_of(ORCHESTRATOR).ORCHESTRATED}


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
