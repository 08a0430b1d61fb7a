"""Prometheus metrics of one process (prometheus_client's default registry, served on /metrics).

Labels are bounded: a service, a message type (only types the contract knows; anything else is
"unknown"), an outcome, a breaker, a queue. Never an order id or an event id.

Counted where the work happens (the adapter, the consumer, the relay); what is cheaper to read
when scraped (outbox backlog, breaker state, queue depth) is read at scrape time by a collector
the process registers (`ScrapeTime`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("choreo.infra.telemetry")

BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}  # pybreaker's state names

REQUESTS = Counter(
    "service_request",
    "Messages (or HTTP requests) handled, by service, message type and outcome.",
    ["service", "type", "outcome"],
)
LATENCY = Histogram(
    "service_latency_seconds",
    "Handling time of a message: received by the consumer to settled "
    "(its batch's wait, transaction and confirmed publishes included).",
    ["service", "type"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
BATCH = Histogram(
    "choreo_batch_size",
    "Messages per batch (one transaction, one publish burst).",
    ["service"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
RELAYED = Counter(
    "choreo_relay_published",
    "Outbox rows the relay published (a crash stranded them).",
    ["service"],
)
RETENTION_DELETED = Counter(
    "choreo_retention_deleted",
    "Rows the retention cleaner removed, by kind of record (docs/operating/retention.md).",
    ["service", "kind"],
)
RETENTION_LONGEST = Gauge(
    "choreo_retention_longest_batch_seconds",
    "The longest delete transaction of the retention cleaner's last run, begin to commit.",
    ["service"],
)


def known_type(name: object, known: Iterable[str]) -> str:
    """A message type as a label: one the domain hears, else "unknown" (hostile names stay out,
    and so does anything that is not a string: a header may hold a list or a dict)."""
    return name if isinstance(name, str) and name in known else "unknown"


class Recorder:
    """The per-message counters of one service, label children cached (a dict lookup per
    message)."""

    def __init__(self, service: str, enabled: bool = True) -> None:
        self.service = service
        self.enabled = enabled
        self._requests: dict[tuple[str, str], Counter] = {}
        self._latency: dict[str, Histogram] = {}

    def handled(self, type_: str, outcome: str, seconds: float | None = None) -> None:
        if not self.enabled:
            return
        child = self._requests.get((type_, outcome))
        if child is None:
            child = self._requests[(type_, outcome)] = REQUESTS.labels(self.service, type_, outcome)
        child.inc()
        if seconds is not None:
            hist = self._latency.get(type_)
            if hist is None:
                hist = self._latency[type_] = LATENCY.labels(self.service, type_)
            hist.observe(seconds)

    def batch(self, size: int) -> None:
        if self.enabled:
            BATCH.labels(self.service).observe(size)


class ScrapeTime(Collector):
    """Gauges read when Prometheus scrapes, from callables the process registers. A source that
    fails (database or broker away) is left out of that scrape, and logged at debug."""

    def __init__(self) -> None:
        self.sources: list[Callable[[], Iterable[GaugeMetricFamily]]] = []

    def add(self, source: Callable[[], Iterable[GaugeMetricFamily]]) -> None:
        self.sources.append(source)

    def collect(self):
        for source in self.sources:
            try:
                yield from source()
            except Exception as exc:
                log.debug("scrape source %r failed: %r", source, exc)


_scrape: dict[str, ScrapeTime] = {}


def scrape_time(service: str) -> ScrapeTime:
    """The process's collector for `service` (registered once)."""
    found = _scrape.get(service)
    if found is None:
        found = _scrape[service] = ScrapeTime()
        REGISTRY.register(found)
    return found


def breaker_families(
    service: str, breakers: Callable[[], list[dict]]
) -> Callable[[], Iterable[GaugeMetricFamily]]:
    """choreo_breaker_state (0 closed, 1 half-open, 2 open) and choreo_breaker_failures."""

    def source():
        state = GaugeMetricFamily(
            "choreo_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            labels=["service", "breaker"],
        )
        fails = GaugeMetricFamily(
            "choreo_breaker_failures",
            "Consecutive failures the breaker has counted.",
            labels=["service", "breaker"],
        )
        for b in breakers():
            state.add_metric([service, b["name"]], BREAKER_STATES.get(str(b["state"]), 2))
            fails.add_metric([service, b["name"]], b["failures"])
        yield state
        yield fails

    return source


def outbox_families(service: str, backlog: Callable[[], tuple[int, float | None]]):
    """choreo_outbox_unsent and choreo_outbox_oldest_unsent_seconds (0 when nothing waits)."""

    def source():
        unsent, oldest = backlog()
        g = GaugeMetricFamily(
            "choreo_outbox_unsent",
            "Outbox rows the broker has not confirmed yet.",
            labels=["service"],
        )
        g.add_metric([service], unsent)
        yield g
        a = GaugeMetricFamily(
            "choreo_outbox_oldest_unsent_seconds",
            "Age of the oldest unsent outbox row.",
            labels=["service"],
        )
        a.add_metric([service], max(0.0, time.time() - oldest) if oldest else 0.0)
        yield a

    return source


def queue_families(depths: Callable[[], list[tuple[str, str, str, int, int]]]):
    """choreo_queue_messages and choreo_queue_consumers{queue,domain,kind} of every choreo queue
    (rows of queue, domain, kind, messages, consumers): the monitor's (choreo.ops.monitor)."""

    def source():
        labels = ["queue", "domain", "kind"]
        msgs = GaugeMetricFamily(
            "choreo_queue_messages",
            "Messages ready in the queue (the broker's count).",
            labels=labels,
        )
        cons = GaugeMetricFamily(
            "choreo_queue_consumers", "Consumers on the queue (the broker's count).", labels=labels
        )
        for queue, domain, kind, messages, consumers in depths():
            msgs.add_metric([queue, domain, kind], messages)
            cons.add_metric([queue, domain, kind], consumers)
        yield msgs
        yield cons

    return source


def consumer_families(service: str, in_hand: Callable[[], int], consuming: Callable[[], bool]):
    """choreo_prefetch_in_hand and choreo_consumer_ready, read from the consumer when scraped."""

    def source():
        held = GaugeMetricFamily(
            "choreo_prefetch_in_hand",
            "Deliveries the consumer holds unacked (its batch "
            "being collected and the one being processed).",
            labels=["service"],
        )
        held.add_metric([service], in_hand())
        yield held
        ready = GaugeMetricFamily(
            "choreo_consumer_ready",
            "1 while the consumer is connected and consuming.",
            labels=["service"],
        )
        ready.add_metric([service], 1 if consuming() else 0)
        yield ready

    return source


class SagaCounts(Protocol):
    """Open sagas by (state, age bucket) and stuck ones by step (choreo.app.stuck.SagaSummary)."""

    @property
    def open(self) -> Mapping[tuple[str, str], int]: ...

    @property
    def stuck(self) -> Mapping[str, int]: ...


def saga_families(counts: Callable[[], SagaCounts]):
    """choreo_open_sagas{state,age} and choreo_stuck_sagas{step}, counted in the order database
    when scraped (every order worker reports the same numbers: aggregate with max, not sum)."""

    def source():
        read = counts()
        opened = GaugeMetricFamily(
            "choreo_open_sagas",
            "Orders not yet terminal, by state and age since placed "
            "(lt_1m, 1m_5m, 5m_30m, gt_30m).",
            labels=["state", "age"],
        )
        for (state, age), n in read.open.items():
            opened.add_metric([state, age], n)
        yield opened
        stuck = GaugeMetricFamily(
            "choreo_stuck_sagas",
            "Open orders past CHOREO_STUCK_FRACTION of their step's deadline (or the saga's), "
            "by the step they wait in (`choreo stuck` lists them).",
            labels=["step"],
        )
        for step, n in read.stuck.items():
            stuck.add_metric([step], n)
        yield stuck

    return source
