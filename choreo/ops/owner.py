"""Which checkout owns a namespace on this machine's broker and Redis.

Two clones with the same settings share the namespace (`CHOREO_NAMESPACE`), the broker users
named after it (choreo.messaging.access.user_name: users are global to the broker) and the
Redis prefix; each keeps its own broker passwords under its run_dir, so the second `choreo up`
would silently overwrite the first stack's passwords (its processes then fail to reconnect) and
reset its counters. `choreo up` claims the namespace for its checkout (its run_dir, where those
passwords live) in Redis and refuses, in one line, when another checkout holds it; `choreo down`
gives it back. Tests and chaos runs have their own Redis prefix and broker users
(choreo.devtools.sandbox), so they never meet a claim of another's.
"""

from __future__ import annotations

from pathlib import Path

from choreo.infra.redis_client import redis_client
from choreo.messaging.access import user_name
from config.settings import Settings


def key(settings: Settings) -> str:
    """The claim on the broker users' names this stack sets up (`choreo-` or `choreo-shop-`)."""
    return f"{settings.redis_prefix}:owner:{user_name(settings, '')}"


def checkout(settings: Settings) -> str:
    """This checkout, as its broker passwords' folder (run_dir, resolved)."""
    return str(Path(settings.run_dir).resolve())


def claim(settings: Settings, force: bool = False) -> str | None:
    """Claim the namespace for this checkout. Returns the other checkout that holds it (nothing
    claimed), or None: this checkout holds it now (`force` takes it over)."""
    client, here = redis_client(settings), checkout(settings)
    if client.set(key(settings), here, nx=True):
        return None
    raw = client.get(key(settings))
    other = raw.decode() if isinstance(raw, bytes) else raw
    if other is None or other == here or force:
        client.set(key(settings), here)
        return None
    return other


def release(settings: Settings) -> bool:
    """Give the namespace back if this checkout holds it (`choreo down`); True if it did."""
    client = redis_client(settings)
    raw = client.get(key(settings))
    if raw is None or (raw.decode() if isinstance(raw, bytes) else raw) != checkout(settings):
        return False
    client.delete(key(settings))
    return True


def refusal(settings: Settings, other: str) -> str:
    """The one line `choreo up` fails with when another checkout holds the namespace."""
    return (
        f"namespace {settings.namespace!r} (broker users {user_name(settings, '')}*, Redis "
        f"prefix {settings.redis_prefix!r}) is held by the checkout at {other}: starting here "
        "would overwrite its broker passwords. Choose another: CHOREO_NAMESPACE=<name> "
        "CHOREO_REDIS_PREFIX=<name> and other ports (docs/configuration.md), or "
        "`choreo up --take-namespace` if that checkout runs no stack any more"
    )
