"""Flower's command line: the tasks list's columns and, when a RabbitMQ management API answers,
the Broker tab's source (`--broker_api`).

Flower fills its Broker tab (queue depths, rates) only from RabbitMQ's management API; without
one it says "No queue data is available". The API is broker_admin_api when set (docker-compose
sets it), else the first node's port 15672; it is passed only when it answers there, and
without credentials: Flower then asks as its own broker user (from its broker URL), whose
`management` tag lets it read the queues of its vhost and nothing more (choreo.messaging.access).
"""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from choreo.messaging.access import broker_urls
from config.settings import Settings

# The tasks list: the order (args: `order=… correlation=… event=…`, choreo.messaging.wire) next
# to the message type and its outcome; the uuid (`<event id>@<domain>`) last.
TASKS_COLUMNS = "name,args,state,result,retries,received,started,runtime,worker,uuid"
PROBE_TIMEOUT = 2.0


def management_api(settings: Settings) -> str:
    """Where this broker's management API would be: `<scheme>://host:port/api/`."""
    if settings.broker_admin_api:
        return f"{settings.broker_admin_api.rstrip('/')}/api/"
    host = urlsplit(broker_urls(settings.broker_url)[0]).hostname or "127.0.0.1"
    return f"http://{host}:15672/api/"


def answering(api: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """A management API answers at `api` (any HTTP answer, a 401 too: it is there)."""
    try:
        with httpx.Client(timeout=timeout, trust_env=False) as client:
            client.get(f"{api}overview")
    except httpx.HTTPError:
        return False
    return True


def argv(settings: Settings, broker_api: str | None) -> list[str]:
    """Flower's arguments (after `flower`) for this stack; `broker_api`: a management API that
    answers, or None (the Broker tab then stays empty)."""
    return [
        f"--port={settings.flower_port}",
        "--address=127.0.0.1",
        "--purge_offline_workers=60",
        f"--tasks_columns={TASKS_COLUMNS}",
        *([f"--broker_api={broker_api}"] if broker_api else []),
    ]


def broker_api(settings: Settings) -> str | None:
    """The management API Flower may read, if one answers."""
    api = management_api(settings)
    return api if answering(api) else None
