"""Every guarantee holds while workers are killed, the broker and Redis restart, and duplicates,
out-of-order events and poison are injected (one CI-sized run of `choreo chaos`)."""

from __future__ import annotations

import pytest

# Bounded: one to two minutes on two cores (about three when it fails and waits out the settle
# timeout); the timeout is the hard stop.
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]


def _why(report) -> str:
    """Enough to start investigating: the seed, the kept sandbox (logs, databases), first
    offenders."""
    failed = {
        c["name"]: f"{c['count']} offenders, e.g. {dict(list(c['problems'].items())[:5])}"
        for c in report.audit
        if not c["passed"]
    }
    return (
        f"seed {report.seed}, sandbox kept in {report.workdir}: errors {report.errors}; "
        f"failed checks {failed}; wrong outcomes {report.mismatches}; "
        f"unsettled {len(report.unsettled)} {report.figures.get('stuck_by_state')}"
    )


def test_every_guarantee_holds_under_chaos(chaos_report):
    assert chaos_report.passed, _why(chaos_report)
    assert chaos_report.violations == 0, _why(chaos_report)
    assert [c["name"] for c in chaos_report.audit if not c["passed"]] == [], _why(chaos_report)


def test_every_order_is_terminal_where_its_data_says(chaos_report, ci_run):
    assert chaos_report.figures, _why(chaos_report)  # empty: the harness itself failed
    f = chaos_report.figures
    assert f["orders_placed"] == ci_run["orders"]
    assert f["unsettled"] == 0 and chaos_report.unsettled == [], _why(chaos_report)
    assert sum(f["terminal"].values()) == ci_run["orders"]
    assert chaos_report.mismatches == 0, _why(chaos_report)


def test_the_faults_really_happened(chaos_report):
    assert chaos_report.figures, _why(chaos_report)
    f, injected = chaos_report.figures, chaos_report.injected
    assert f["kills"]["kill_worker"] + f["kills"]["kill_child"] >= 1
    assert f["broker_restarts"] == 1
    assert f["redis_restarts"] == 1
    assert injected["duplicate"] > 0 and injected["late"] > 0
    # Some injected copies have no subscriber (inventory.released) or were dead-lettered the first
    # time (a refused refund): the log count is what the consumers really absorbed.
    assert f["duplicates_absorbed_logged"] > 0


def test_poison_is_dead_lettered_with_its_reason_and_touches_no_order(chaos_report):
    assert chaos_report.figures, _why(chaos_report)
    reasons = " ".join(chaos_report.figures["dlq_by_reason"])
    for expected in ("poison: body is not valid", "poison: unknown message type", "poison: schema"):
        assert expected in reasons
    assert "NEEDS_ATTENTION (dead_lettered" not in " ".join(chaos_report.figures["terminal"])


def test_a_long_outage_expired_sagas_and_every_late_answer_was_undone(chaos_report, ci_run):
    assert chaos_report.figures, _why(chaos_report)
    f = chaos_report.figures
    assert f["outage"]["domain"] in ("payment", "inventory", "shipment")
    assert f["outage"]["seconds"] == ci_run["outage"] > ci_run["deadline"]
    # Orders reached the stopped domain and waited past its deadline: cancelled, timeout:<step>.
    assert f["sagas_expired"].get(f["outage"]["domain"], 0) >= 1, _why(chaos_report)
    # Its backlog answered them late once it came back; the audit (money, stock, shipments,
    # deadlines) passing says each late answer was undone.
    assert f["late_answers_compensated"] >= 1, _why(chaos_report)
