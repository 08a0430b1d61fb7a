"""Every setting choreo reads, from environment variables (prefix CHOREO_) with sane defaults."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DOMAINS = ("order", "payment", "inventory", "shipment", "notification")
SAGA_MODES = ("choreography", "orchestrated")
# Services with a database: the five domains, the user service, and the sandbox payment
# gateway (an "external" provider with books of its own).
SERVICES = (*DOMAINS, "user", "gateway", "orchestrator")


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
    orchestrator_database_url: str = ""

    # choreography: domains react to each other's events (the broker's bindings decide the
    # flow). orchestrated: an orchestrator worker sends commands and hears the replies.
    saga_mode: str = "choreography"

    # Retry policy for transient failures: broker-side TTL ladder, exponential with jitter.
    retry_max_attempts: int = Field(3, ge=0, le=20)
    retry_initial_delay: float = Field(1.0, gt=0)
    retry_max_delay: float = Field(60.0, gt=0)
    retry_jitter: float = Field(0.2, ge=0, lt=1)
    # A quorum queue dead-letters a message redelivered this many times (crash loops).
    delivery_limit: int = Field(50, ge=1)
    # A message body larger than this is dead-lettered unread. The largest valid message (100
    # items, every string at its schema limit) is about 13 KiB.
    max_message_bytes: int = Field(64 * 1024, ge=1024)

    # Chosen by `bench/run.py --sweep` (the figures are in the README, Performance). The solo
    # pool runs each message in the consuming process (no pool child, no pipe); more
    # concurrency buys nothing on a box whose cores the workers and the broker already fill.
    # A crash takes the whole solo worker down (its supervisor restarts it; its unacked
    # messages go back to the queue); prefork would fork a new child instead.
    worker_concurrency: int = Field(1, ge=1)
    worker_pool: str = "solo"
    prefetch_multiplier: int = Field(16, ge=1)
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

    @field_validator("saga_mode")
    @classmethod
    def _mode(cls, value: str) -> str:
        if value not in SAGA_MODES:
            raise ValueError(f"saga_mode must be one of {', '.join(SAGA_MODES)}")
        return value

    @property
    def domains(self) -> tuple[str, ...]:
        """The workers this mode runs: the five domains, plus the orchestrator when orchestrated."""
        return DOMAINS + (("orchestrator",) if self.saga_mode == "orchestrated" else ())

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
    """The settings of this process, from its environment (read once)."""
    return Settings()
