"""The composition root: the real dependencies handlers use, and each service's tables and seed
data.

Handlers see only `consumers.base.HandlerDeps`; this builds the live one (the sandbox gateway,
the user service client, the seller's catalog). Unit tests hand handlers fakes instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property

import redis
from sqlmodel import Session

from choreo.infra.db import engine_for
from choreo.infra.schema import require_current, upgrade
from choreo.world.gateway import SandboxGateway
from choreo.world.users import CALLERS, UsersClient, seed_customers, users_token
from config.catalog import PRICES_CENTS
from config.settings import SERVICES, Settings
from models.tables import service_tables


class LiveDeps:
    """What handlers may use, for real. Built lazily: a domain that never calls the gateway never
    opens it.
    `caller`: the service whose token the user service client sends (its domain)."""

    def __init__(
        self, settings: Settings, redis_client: redis.Redis | None, caller: str | None = None
    ) -> None:
        self.settings = settings
        self._redis = redis_client
        self.caller = caller

    @cached_property
    def gateway(self) -> SandboxGateway:
        return SandboxGateway(engine_for(self.settings, "gateway"))

    @property
    def catalog(self) -> Mapping[str, int]:
        """The order service's price list: the seller, not the client, sets the price."""
        return PRICES_CENTS

    @cached_property
    def users(self) -> UsersClient:
        caller = self.caller
        token = users_token(self.settings.run_dir, caller) if caller in CALLERS else None
        return UsersClient(
            self.settings.users_url,
            self._redis,
            self.settings.redis_prefix,
            caller=caller,
            token=token,
            run_dir=self.settings.run_dir,
        )


def prepare(settings: Settings, services=SERVICES, migrate: bool = True) -> None:
    """Bring each service's database to this code's schema (choreo.infra.schema) and seed its
    reference data; idempotent. `migrate=False` (a worker starting): refuse, with
    SchemaError, a database not already at this code's head instead of upgrading it: `choreo up`
    and the compose set-up upgrade once, before any worker starts."""
    for service in services:
        if migrate:
            upgrade(settings, service)
        else:
            require_current(settings, service)
        engine = engine_for(settings, service)
        seed = getattr(service_tables(service), "seed", None)  # a domain's reference data
        if seed is not None:
            with Session(engine) as s:
                seed(s)
                s.commit()
        if service == "user":
            seed_customers(engine)
