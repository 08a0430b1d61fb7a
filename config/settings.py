"""Every setting choreo reads, from environment variables (prefix CHOREO_) with sane defaults."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The domains, each a folder consumers/<name>/ (its messages, rules, tables, handlers): a name
# here is the one line that registers a domain; everything else is found by it. The order is
# the order of their health ports (and of their rows in `choreo status`).
DOMAINS = (
    "order",
    "payment",
    "inventory",
    "shipment",
    "notification",
)
SAGA_MODES = ("choreography", "orchestrated")
# The steps that have a deadline (CHOREO_DEADLINE_<STEP>): each forward step, and the whole saga.
DEADLINE_STEPS = ("payment", "inventory", "shipment", "saga")
# Services with a database: the five domains, the user service, the sandbox payment gateway
# (an "external" provider with books of its own), the orchestrator, and the operator's own
# records (`choreo dlq replay --execute`).
SERVICES = (*DOMAINS, "user", "gateway", "orchestrator", "operator")
# A worker's health listener: health_port_base + its offset, in DOMAINS order, the orchestrator
# last (the user service has its own port).
HEALTH_PORT_OFFSETS = {name: n for n, name in enumerate((*DOMAINS, "orchestrator"), start=1)}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHOREO_", extra="ignore")

    # Where the broker is (host, port, vhost). Its user is the bootstrap user, who only sets up
    # (choreo broker setup: users, grants, topology): every service connects as its own user,
    # <broker_user_prefix><service>, with its password from CHOREO_BROKER_PASSWORD_<SERVICE> or
    # a file generated once under run_dir/secrets (choreo.messaging.access).
    # A cluster: every node's URL, joined by ";" (kombu's failover list; same user and vhost),
    # e.g. the one `choreo cluster up` prints. Each process shuffles them and fails over.
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    broker_user_prefix: str = "choreo-"
    # Set up through this management API (e.g. http://rabbitmq:15672) instead of the local
    # node's rabbitmqctl: a broker in another container or host.
    broker_admin_api: str = ""
    # A private cluster of `choreo cluster up` (its folder): rabbitmqctl talks to its nodes, with
    # its cookie, instead of this machine's own node.
    broker_cluster_dir: str = ""
    # Competing consumers: how many workers `choreo up` runs per domain (each on the domain's
    # queue).
    workers_per_domain: int = Field(1, ge=1, le=8)
    redis_url: str = "redis://127.0.0.1:6379/0"
    # TLS where traffic leaves the host (choreo.infra.tls); peers are always verified. The
    # broker: amqps:// in broker_url (every node), its CA (empty: the system's CAs) and an
    # optional client certificate. Redis: a rediss:// redis_url, the same three. PostgreSQL: with
    # a CA, every database URL asks sslmode=verify-full with it as sslrootcert.
    broker_ca_file: str = ""
    broker_cert_file: str = ""
    broker_key_file: str = ""
    redis_ca_file: str = ""
    redis_cert_file: str = ""
    redis_key_file: str = ""
    database_ca_file: str = ""
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
    operator_database_url: str = ""

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

    # Each worker is one process (Celery's solo pool): it collects the deliveries it holds, up
    # to its prefetch, into one batch (tasks.adapter). More processes per domain, not threads
    # or pool children, use more cores. Chosen by `bench/run.py --sweep` (README, Performance).
    prefetch_multiplier: int = Field(32, ge=1, le=1000)
    # A batch's publishes wait this long for the broker's confirms, then its messages are requeued.
    publish_confirm_timeout: float = Field(15.0, gt=0)
    # Outbox rows still unsent after this many seconds are published by the relay.
    outbox_relay_after: float = 2.0
    outbox_relay_interval: float = 0.5

    # Deadlines, in seconds (docs/deadlines.md): how long the saga waits for each step's answer
    # (payment answers order.placed, inventory payment.completed, shipment inventory.reserved)
    # and for the whole saga from placement. Past one, the order is cancelled with reason
    # timeout:<step> and whatever was done is compensated. Timers live in the order database.
    deadline_payment: float = Field(300.0, gt=0)
    deadline_inventory: float = Field(300.0, gt=0)
    deadline_shipment: float = Field(600.0, gt=0)
    deadline_saga: float = Field(1800.0, gt=0)
    # How often each order worker looks for due timers, and how long a fired timer waits before
    # it fires again if its saga has not moved (at least once: a lost firing is repeated).
    timer_interval: float = Field(1.0, gt=0)
    timer_refire: float = Field(30.0, gt=0)
    # `choreo stuck`, the open-sagas gauge and its alert call a saga stuck past this fraction
    # of its current step's deadline.
    stuck_fraction: float = Field(0.5, gt=0, le=1)

    user_service_host: str = "127.0.0.1"
    user_service_port: int = 8001
    user_service_url: str = ""
    flower_port: int = 5555

    # Observability. Every long-running process answers /health, /ready, /metrics and /breakers
    # on loopback: domain workers on health_port_base + HEALTH_PORT_OFFSETS[domain] (a domain's
    # i-th worker (i-1) * len(HEALTH_PORT_OFFSETS) higher), the user
    # service on its own port. Prometheus (started by `choreo up`) listens on prometheus_port.
    health_port_base: int = Field(9100, ge=0, le=65000)
    # Loopback by default; a container sets 0.0.0.0 so its compose neighbour Prometheus can
    # scrape it.
    health_host: str = "127.0.0.1"
    prometheus_port: int = Field(9190, ge=1, le=65535)
    # The monitor (`choreo monitor`, started by `choreo up`): every choreo queue's depth and
    # consumers as metrics, from a process that is not a worker (choreo.ops.monitor).
    monitor_port: int = Field(9180, ge=1, le=65535)
    # Prometheus's scrape and rule evaluation interval, and how long a queue must have had no
    # consumer before ChoreoQueueWithoutConsumer fires (seconds; a test shortens both).
    prometheus_interval: float = Field(5.0, gt=0, le=300)
    alert_no_consumer_for: float = Field(60.0, gt=0)
    # Prometheus metrics and OpenTelemetry spans (off: the bench's comparison arm). Spans go to
    # OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set, else to a file per process under run_dir/traces.
    metrics: bool = True
    tracing: bool = True

    # `choreo ask` (the operator agent). The key comes from ANTHROPIC_API_KEY only. The base
    # URL is the SDK's (empty: its default, or ANTHROPIC_BASE_URL); tests point it at a local fake.
    agent_model: str = "claude-sonnet-4-6"
    agent_max_rounds: int = Field(8, ge=1, le=50)  # rounds of tool use per question
    agent_max_tokens: int = Field(2048, ge=256, le=32000)  # per model turn
    agent_max_retries: int = Field(
        3, ge=0, le=10
    )  # the SDK's own retries (overloaded, 429, network)
    agent_timeout: float = Field(60.0, gt=0)
    agent_base_url: str = ""

    idempotency_ttl: int = 7 * 24 * 3600

    # Months of life (docs/operating/retention.md): how long each kind of record is kept, in
    # seconds. The dedup window is how long a service keeps the proof that it applied a message
    # (its inbox rows and its copy records): a message older than the window is never run again
    # (it is dead-lettered with that reason), so the window must outlast every way a message can
    # come back: the retry ladder, the time a message may wait in its queue (a service down:
    # the redelivery horizon) and the time an operator has to replay a dead letter.
    dedup_window: float = Field(14 * 86400.0, gt=0)
    # How far ahead of a consumer's clock a message's occurred_at may be. A message from further
    # ahead is dead-lettered: its age would read too young, so a copy of it could be believed
    # after its dedup record was gone. Inbox rows and copy records are kept this much longer
    # than the window (`dedup_retention`), so every message within it still finds its record.
    max_clock_skew: float = Field(300.0, ge=0)
    redelivery_horizon: float = Field(2 * 86400.0, gt=0)
    dlq_replay_window: float = Field(7 * 86400.0, gt=0)
    # Sent outbox rows, dead-letter records, the operator's replay records.
    retention_outbox: float = Field(7 * 86400.0, gt=0)
    retention_dead_letters: float = Field(30 * 86400.0, gt=0)
    retention_replays: float = Field(90 * 86400.0, gt=0)
    # The cleaner (in every worker, and `choreo retention run`): how often, and how many rows one
    # short delete transaction removes at most.
    retention_interval: float = Field(60.0, gt=0)
    retention_batch: int = Field(500, ge=1, le=100_000)
    log_level: str = "INFO"
    log_json: bool = True

    @field_validator(
        "broker_ca_file",
        "broker_cert_file",
        "broker_key_file",
        "redis_ca_file",
        "redis_cert_file",
        "redis_key_file",
        "database_ca_file",
    )
    @classmethod
    def _readable(cls, value: str) -> str:
        if value and not Path(value).is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @model_validator(mode="after")
    def _competing_workers_need_a_server(self) -> Settings:
        if self.workers_per_domain > 1:
            local = [d for d in self.domains if self.database_url(d).startswith("sqlite")]
            if local:
                raise ValueError(
                    f"workers_per_domain={self.workers_per_domain} needs a database server "
                    f"(CHOREO_DATABASE_SERVER=postgresql://...): {', '.join(local)} would share "
                    "a SQLite file between processes"
                )
        return self

    @model_validator(mode="after")
    def _dedup_window_outlasts_every_return(self) -> Settings:
        # The one rule (docs/operating/retention.md): a message is acted on only while its dedup
        # record could still exist, so the window must cover the longest legitimate way back.
        longest = self.longest_return()
        if self.dedup_window < longest:
            raise ValueError(
                f"CHOREO_DEDUP_WINDOW={self.dedup_window:g}s ({duration(self.dedup_window)}) "
                f"is shorter than the longest time a message can come back, {duration(longest)}: "
                f"CHOREO_REDELIVERY_HORIZON {duration(self.redelivery_horizon)} + the retry ladder "
                f"{duration(self.retry_ladder())} (CHOREO_RETRY_*) + CHOREO_DLQ_REPLAY_WINDOW "
                f"{duration(self.dlq_replay_window)}"
            )
        return self

    @field_validator("saga_mode")
    @classmethod
    def _mode(cls, value: str) -> str:
        if value not in SAGA_MODES:
            raise ValueError(f"saga_mode must be one of {', '.join(SAGA_MODES)}")
        return value

    @property
    def domains(self) -> tuple[str, ...]:
        """The workers this mode runs: the domains, plus the orchestrator when orchestrated."""
        return DOMAINS + (("orchestrator",) if self.saga_mode == "orchestrated" else ())

    def database_url(self, service: str) -> str:
        if service not in SERVICES:
            raise ValueError(f"unknown service {service!r}")
        # A domain registered after these fields were written has no field of its own: its
        # CHOREO_<NAME>_DATABASE_URL is read from the environment.
        explicit = getattr(self, f"{service}_database_url", "") or os.environ.get(
            f"CHOREO_{service.upper()}_DATABASE_URL", ""
        )
        if explicit:
            return verified_database_url(explicit, self.database_ca_file)
        if self.database_server:
            parts = urlsplit(self.database_server)  # the server's own options (?sslmode=...) stay
            url = urlunsplit(parts._replace(path=f"/{self.database_prefix}_{service}"))
            return verified_database_url(url, self.database_ca_file)
        return f"sqlite:///{(self.data_dir / f'{service}.db').resolve()}"

    @property
    def users_url(self) -> str:
        return self.user_service_url or f"http://{self.user_service_host}:{self.user_service_port}"

    def health_port(self, process: str, index: int = 1) -> int:
        """The loopback port of a process's /health, /ready, /metrics, /breakers listener
        (`process`: a domain, "orchestrator", "users" or "monitor"; `index`: which of the domain's
        workers, each further one a block of len(HEALTH_PORT_OFFSETS) ports higher)."""
        if process == "users":
            return self.user_service_port
        if process == "monitor":
            return self.monitor_port
        return (
            self.health_port_base
            + HEALTH_PORT_OFFSETS[process]
            + (index - 1) * len(HEALTH_PORT_OFFSETS)
        )

    def health_url(self, process: str, index: int = 1) -> str:
        return f"http://127.0.0.1:{self.health_port(process, index)}"

    @property
    def trace_dir(self) -> Path:
        """Where each process writes its span file when no OTLP collector is configured."""
        return self.run_dir / "traces"

    def deadline(self, step: str) -> float:
        """The deadline of `step` (payment, inventory, shipment or saga), in seconds."""
        if step not in DEADLINE_STEPS:
            raise ValueError(f"no deadline for step {step!r}: one of {', '.join(DEADLINE_STEPS)}")
        return float(getattr(self, f"deadline_{step}"))

    def retry_delay(self, attempt: int) -> float:
        """Delay before retry number `attempt` (1-based), before jitter."""
        return min(self.retry_max_delay, self.retry_initial_delay * 2 ** (attempt - 1))

    @property
    def dedup_retention(self) -> float:
        """How long inbox rows and copy records are kept (seconds): the dedup window, plus the
        clock skew a message's occurred_at may have (choreo.app.window)."""
        return self.dedup_window + self.max_clock_skew

    def retry_ladder(self) -> float:
        """The longest a message spends waiting on the retry ladder, in seconds: every rung's
        delay, with the jitter counted as lengthening each (tasks.failures only ever shortens a
        delay by it: a margin, never an underestimate)."""
        rungs = sum(self.retry_delay(n) for n in range(1, self.retry_max_attempts + 1))
        return rungs * (1 + self.retry_jitter)

    def longest_return(self) -> float:
        """The longest time after it occurred that a message can legitimately come back to a
        consumer, in seconds: waiting in its queue or the outbox (the redelivery horizon), then
        climbing the whole retry ladder, then waiting in the DLQ for an operator's replay. The
        dedup window must be at least this (the settings refuse less)."""
        return self.redelivery_horizon + self.retry_ladder() + self.dlq_replay_window


def duration(seconds: float) -> str:
    """A span of time as a person reads it, exactly: 600 -> "10m", 777608.4 -> "9d 8.4s" (each
    unit that is not zero; the seconds to a tenth)."""
    tenths = round(seconds * 10)
    whole, frac = divmod(tenths, 10)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    if whole or frac or not parts:
        parts.append(f"{whole}.{frac}s" if frac else f"{whole}s")
    return " ".join(parts)


def verified_database_url(url: str, ca_file: str) -> str:
    """A PostgreSQL URL that verifies its server against `ca_file` (sslmode=verify-full: encrypted,
    the CA checked, the host name checked); an sslmode or sslrootcert the URL names is kept."""
    if not ca_file or not url.startswith("postgresql"):
        return url
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.setdefault("sslmode", "verify-full")
    query.setdefault("sslrootcert", ca_file)
    return urlunsplit(parts._replace(query=urlencode(query)))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, from its environment (read once)."""
    return Settings()
