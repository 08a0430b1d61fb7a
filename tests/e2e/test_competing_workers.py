"""Competing consumers: a second worker per domain on each queue, on PostgreSQL (the PostgreSQL
pass of `make test`). Every order ends where its data asked, the audit finds nothing doubled
(one charge, one reservation, one shipment, one notification of each kind per order), and both
workers of every domain did some of the work."""

from __future__ import annotations

import os

import pytest

from tests.helpers import scrape, settled

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not os.environ.get("CHOREO_TEST_DATABASE_SERVER"),
        reason="two workers per domain need PostgreSQL: the PostgreSQL pass of make test runs this",
    ),
]


def _processed(settings, domain: str, index: int) -> float:
    return sum(
        v
        for (name, labels), v in scrape(settings, domain, index).items()
        if name == "service_request_total" and ("outcome", "processed") in labels
    )


@pytest.fixture(scope="module")
def two_per_domain(settings, stack):
    from choreo.ops.stack import Stack, process_names, wait_consuming, worker_name

    two = settings.model_copy(update={"workers_per_domain": 2})
    extra = [worker_name(d, 2) for d in two.domains]
    second = Stack(two)
    for name in extra:
        second.start(name)
    try:
        wait_consuming(two, second, [n for n in process_names(two) if n.startswith("worker-")], 90)
        yield two, second
    finally:
        for name in extra:
            second.stop(name)


def test_two_workers_per_domain_share_the_work_and_never_double_an_effect(two_per_domain):
    from choreo.ops.audit import run_audit
    from choreo.ops.scenarios import SCENARIOS
    from choreo.ops.workload import expected_by_scenario, publish_orders

    settings, _ = two_per_domain
    before = {(d, i): _processed(settings, d, i) for d in settings.domains for i in (1, 2)}
    sent = publish_orders(settings, list(SCENARIOS) * 10, seed=None)
    states = settled(settings, [o for o, _ in sent], timeout=180)
    expected = expected_by_scenario()
    assert {o: states[o] for o, _ in sent} == {o: expected[s] for o, s in sent}
    # The audit over the run's databases, about these orders (other tests leave their own debris
    # there).
    ours = {o for o, _ in sent}
    checks = run_audit(settings)
    assert not [c.name for c in checks if c.error]
    doubled = {c.name: {o: why for o, why in c.problems.items() if o in ours} for c in checks}
    assert not {name: p for name, p in doubled.items() if p}, doubled
    did = {
        (d, i): _processed(settings, d, i) - before[(d, i)]
        for d in settings.domains
        for i in (1, 2)
    }
    assert all(n > 0 for n in did.values()), did
