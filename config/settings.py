"""Every setting choreo reads, from environment variables (prefix CHOREO_) with sane defaults."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DOMAINS = ("order", "payment", "inventory", "shipment", "notification")
# Services with a database: the five domains, the user service, and the sandbox payment
# gateway (an "external" provider with books of its own).
SERVICES = (*DOMAINS, "user", "gateway")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHOREO_", extra="ignore")

    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Every Redis key choreo writes starts with this, so test runs never see each other.
    redis_prefix: str = "choreo"
    # Queue and exchange names start with this (within the vhost of broker_url).
    namespace: str = "choreo"

    data_dir: Path = Path("data")
    run_dir: Path = Path("run")
    # One database per service. Empty means the default: a SQLite file under data_dir,
    # or, when database_server is set, a database named choreo_<service> on that server.
    database_server: str = ""
    # Database names on that server: <database_prefix>_<service>.
    database_prefix: str = "choreo"
    order_database_url: str = ""
    payment_database_url: str = ""
    inventory_database_url: str = ""
    shipment_database_url: str = ""
    notification_database_url: str = ""
    user_database_url: str = ""
    gateway_database_url: str = ""

    # Retry policy for transient failures: broker-side TTL ladder, exponential with jitter.
    retry_max_attempts: int = Field(3, ge=0, le=20)
    retry_initial_delay: float = Field(1.0, gt=0)
    retry_max_delay: float = Field(60.0, gt=0)
    retry_jitter: float = Field(0.2, ge=0, lt=1)
    # A quorum queue dead-letters a message redelivered this many times (crash loops).
    delivery_limit: int = Field(50, ge=1)

    worker_concurrency: int = Field(1, ge=1)
    worker_pool: str = "prefork"
    prefetch_multiplier: int = Field(4, ge=1)
    # Outbox rows still unsent after this many seconds are published by the relay.
    outbox_relay_after: float = 2.0
    outbox_relay_interval: float = 0.5

    user_service_host: str = "127.0.0.1"
    user_service_port: int = 8001
    user_service_url: str = ""
    flower_port: int = 5555

    # Test hook for the outbox proof: the worker of this domain exits hard (like kill -9)
    # right after committing, before publishing, once per existing marker path below.
    fault_crash_after_commit: str = ""
    fault_marker: str = ""

    idempotency_ttl: int = 7 * 24 * 3600
    log_level: str = "INFO"
    log_json: bool = True

    @field_validator("worker_pool")
    @classmethod
    def _pool(cls, value: str) -> str:
        if value not in {"prefork", "threads", "solo"}:
            raise ValueError("worker_pool must be prefork, threads or solo")
        return value

    def database_url(self, service: str) -> str:
        if service not in SERVICES:
            raise ValueError(f"unknown service {service!r}")
        explicit = getattr(self, f"{service}_database_url")
        if explicit:
            return explicit
        if self.database_server:
            return f"{self.database_server.rstrip('/')}/{self.database_prefix}_{service}"
        return f"sqlite:///{(self.data_dir / f'{service}.db').resolve()}"

    @property
    def users_url(self) -> str:
        return self.user_service_url or f"http://{self.user_service_host}:{self.user_service_port}"

    def retry_delay(self, attempt: int) -> float:
        """Delay before retry number `attempt` (1-based), before jitter."""
        return min(self.retry_max_delay, self.retry_initial_delay * 2 ** (attempt - 1))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
