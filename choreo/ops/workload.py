"""Workload helpers the CLI, the tests, chaos and the bench share: place orders, wait until they
are terminal, compare where they ended with where their data asked them to end."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator

from choreo.app.queries import order_states
from choreo.messaging.access import may_send, owners
from choreo.messaging.publisher import Publisher
from choreo.messaging.topology import Names
from choreo.ops.scenarios import SCENARIOS, expected_outcome, make_order
from config.settings import Settings
from consumers.order.messages import PlaceOrder
from consumers.order.rules import TERMINAL
from models.envelope import make_envelope
from tasks.app import ChoreoApp, make_app

States = dict[str, tuple[str, str | None]]  # order id -> (state, reason)


def new_order_id(rng: random.Random | None = None) -> str:
    """A fresh order id; from `rng`, one that repeats with its seed."""
    bits = rng.getrandbits(128) if rng is not None else uuid.uuid4().int
    return f"ord-{uuid.UUID(int=bits).hex[:16]}"


class Placer:
    """The one path by which choreo's own tools place orders (`choreo enqueue`, `choreo place`,
    the Python client in choreo.client): a place_order envelope per order, validated, published
    as the operator and confirmed by the broker before `place` returns. One connection for
    every order placed through it; close it (or use it as a context manager) when done."""

    def __init__(self, settings: Settings, source: str = "cli") -> None:
        self.source = source
        self.app = make_app("client", settings)
        self.publisher = Publisher(self.app, Names(settings.namespace))

    def place(self, payload: PlaceOrder, order_id: str | None = None) -> str:
        """Place one order; returns its id (`order_id`, or a new one)."""
        order_id = order_id or new_order_id()
        self.publisher.publish(make_envelope("place_order", order_id, payload, source=self.source))
        return order_id

    def close(self) -> None:
        self.app.close()

    def __enter__(self) -> Placer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def place_orders(
    settings: Settings,
    orders: Iterable[tuple[str | None, PlaceOrder]],
    on_sent: Callable[[], None] | None = None,
    source: str = "cli",
) -> list[str]:
    """Place each (order id or None, payload) in turn, each confirmed by the broker; returns the
    order ids. An order that fails to publish stops the loop: the ids returned so far were
    placed."""
    placed: list[str] = []
    with Placer(settings, source) as placer:
        for order_id, payload in orders:
            placed.append(placer.place(payload, order_id))
            if on_sent:
                on_sent()
    return placed


def publish_orders(
    settings: Settings,
    scenarios: list[str],
    seed: int | None,
    on_sent: Callable[[], None] | None = None,
    source: str = "cli",
) -> list[tuple[str, str]]:
    """Place one order per scenario (confirmed by the broker); returns [(order id, scenario)].
    With a seed, order ids and order data repeat from run to run."""
    rng = random.Random(seed)

    def drawn() -> Iterator[tuple[str | None, PlaceOrder]]:
        for scenario in scenarios:
            spec = make_order(scenario, rng)
            yield new_order_id(rng if seed is not None else None), spec.payload()

    return list(zip(place_orders(settings, drawn(), on_sent, source), scenarios, strict=False))


class AsOwners:
    """Publishes each envelope as the service that owns its type (its source, when that may
    send it): a service re-publishing what it said before, as its outbox relay does after a
    crash. Consumers believe no other sender (choreo.messaging.access), so the chaos harness
    and the tests re-deliver this way."""

    def __init__(self, settings: Settings, name: str = "client") -> None:
        self.settings = settings
        self.name = name
        self.apps: dict[str, ChoreoApp] = {}
        self.publishers: dict[str, Publisher] = {}

    def publisher(self, env) -> Publisher:
        owner = env.source if may_send(env.source, env.type) else min(owners(env.type))
        if owner not in self.publishers:
            self.apps[owner] = make_app(self.name, self.settings, service=owner)
            self.publishers[owner] = Publisher(self.apps[owner], Names(self.settings.namespace))
        return self.publishers[owner]

    def publish(self, env) -> None:
        self.publisher(env).publish(env)

    def close(self) -> None:
        for app in self.apps.values():
            app.close()
        self.apps, self.publishers = {}, {}


def terminal_count(states: States) -> int:
    return sum(1 for state, _ in states.values() if state in TERMINAL)


def wait_terminal(
    settings: Settings,
    order_ids: list[str],
    timeout: float,
    poll: float = 0.3,
    on_poll: Callable[[States], None] | None = None,
) -> States:
    """Poll the read model until every order is terminal or `timeout` passes; returns the last
    states seen (a caller that needs all of them checks `terminal_count`)."""
    deadline = time.monotonic() + timeout
    while True:
        states = order_states(settings, order_ids)
        if on_poll:
            on_poll(states)
        if terminal_count(states) == len(order_ids) or time.monotonic() > deadline:
            return states
        time.sleep(poll)


def expected_by_scenario() -> dict[str, tuple[str, str | None]]:
    """(state, reason) each scenario's orders must end in."""
    out = {}
    for s in SCENARIOS:
        spec = make_order(s, random.Random(0))
        out[s] = expected_outcome(spec.card_token, spec.items, spec.address)
    return out


def outcomes(sent: list[tuple[str, str]], states: States) -> list[dict]:
    """Per scenario: orders, expected outcome, actual outcomes counted, and how many differ."""
    expected = expected_by_scenario()
    rows = []
    for scenario in SCENARIOS:
        ids = [o for o, s in sent if s == scenario]
        if not ids:
            continue
        exp = expected[scenario]
        actual: dict[str, int] = {}
        wrong = 0
        for o in ids:
            st, reason = states.get(o, ("MISSING", None))
            key = f"{st} ({reason})" if reason else st
            actual[key] = actual.get(key, 0) + 1
            wrong += (st, reason) != exp
        exp_text = f"{exp[0]} ({exp[1]})" if exp[1] else exp[0]
        rows.append(
            {
                "scenario": scenario,
                "orders": len(ids),
                "expected": exp_text,
                "actual": actual,
                "mismatches": wrong,
                "ok": actual == {exp_text: len(ids)},
            }
        )
    return rows
