"""Where a service's parts are: `consumers/<service>/<part>.py`, found by the service's name (a
domain is registered by its name in config.settings.DOMAINS). The registry reads its handlers,
models.envelope its messages, models.tables its tables, all through `service_part`."""

from __future__ import annotations

from importlib import import_module
from types import ModuleType


def service_part(service: str, part: str, *, optional: bool = False) -> ModuleType | None:
    """`consumers.<service>.<part>`; None when `optional` and the service has no such module (a
    missing import inside the module is an error all the same)."""
    name = f"consumers.{service}.{part}"
    try:
        return import_module(name)
    except ModuleNotFoundError as exc:
        if optional and exc.name == name:
            return None
        raise
