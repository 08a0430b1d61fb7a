"""The dedup window's one rule (choreo.app.window): the settings refuse a window shorter than the
longest way a message can come back; the adapter dead-letters a message older than the window
instead of running it; only the operator's mark runs one anyway; replay plans refuse it.
(On a real stack: tests/e2e/test_dedup_window.py.)"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from choreo.app.window import AHEAD_OF_CLOCK, OUTSIDE_WINDOW
from choreo.messaging.admin import UNROUTED, DeadLetterView
from choreo.ops.replay import Candidate, Window
from config.catalog import CARD_OK
from config.settings import Settings, duration
from consumers.payment.tables import Charge
from models.envelope import decode, make_envelope
from models.tables import DeadLetter
from tasks.worker import _delivery
from tests.unit.handler_harness import Harness
from tests.unit.test_handlers import snapshot

DAY = 86400.0


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.upper().startswith("CHOREO_"):
            monkeypatch.delenv(name)


# -- the configuration check ------------------------------------------------------------------


def test_the_longest_return_is_the_horizon_plus_the_whole_ladder_plus_the_replay_window():
    s = Settings(
        retry_max_attempts=4,
        retry_initial_delay=10,
        retry_max_delay=30,
        retry_jitter=0.5,
        redelivery_horizon=100,
        dlq_replay_window=1000,
        dedup_window=2000,
    )
    assert s.retry_ladder() == (10 + 20 + 30 + 30) * 1.5  # each rung capped, jitter as a margin
    assert s.longest_return() == 100 + 135 + 1000


def test_the_defaults_keep_a_margin_over_the_longest_return():
    s = Settings()
    assert s.longest_return() == 2 * DAY + (1 + 2 + 4) * 1.2 + 7 * DAY
    assert s.dedup_window == 14 * DAY > s.longest_return()


def test_a_window_exactly_the_longest_return_is_accepted():
    s = Settings(
        redelivery_horizon=60, dlq_replay_window=60, retry_max_attempts=0, dedup_window=120
    )
    assert s.retry_ladder() == 0 and s.dedup_window == s.longest_return()


def test_a_shorter_window_is_refused_with_one_line_naming_the_window_and_each_term():
    with pytest.raises(ValidationError) as caught:
        Settings(dedup_window=600)
    [error] = caught.value.errors()
    msg = error["msg"].removeprefix("Value error, ")
    assert "\n" not in msg
    assert msg == (
        "CHOREO_DEDUP_WINDOW=600s (10m) is shorter than the longest time a message can come "
        "back, 9d 8.4s: CHOREO_REDELIVERY_HORIZON 2d + the retry ladder 8.4s (CHOREO_RETRY_*) "
        "+ CHOREO_DLQ_REPLAY_WINDOW 7d"
    )


def test_a_longer_ladder_or_replay_window_alone_can_make_the_default_window_too_short():
    with pytest.raises(ValidationError, match="CHOREO_DLQ_REPLAY_WINDOW 13d"):
        Settings(dlq_replay_window=13 * DAY)
    with pytest.raises(ValidationError, match="the retry ladder"):
        Settings(retry_max_attempts=20, retry_max_delay=6 * DAY)


def test_the_cli_prints_a_cross_setting_refusal_as_its_own_line():
    from choreo.cli import settings_error

    with pytest.raises(ValidationError) as caught:
        Settings(dedup_window=600)
    assert settings_error(caught.value).startswith("CHOREO_DEDUP_WINDOW=600s (10m) is shorter")
    with pytest.raises(ValidationError) as caught:
        Settings(retry_jitter=2)
    assert settings_error(caught.value).startswith("setting CHOREO_RETRY_JITTER: ")


@pytest.mark.parametrize(
    "seconds, text",
    [(0, "0s"), (0.5, "0.5s"), (600, "10m"), (450, "7m 30s"), (9 * DAY + 420, "9d 7m")],
)
def test_durations_read_exactly(seconds, text):
    assert duration(seconds) == text


# -- the adapter -----------------------------------------------------------------------------


@pytest.fixture
def h(tmp_path):
    with Harness("payment", tmp_path) as harness:
        yield harness


def placed(h: Harness, order_id: str, age: float):
    """An order.placed that occurred `age` seconds ago (negative: in the future)."""
    env = make_envelope(
        "order.placed",
        order_id,
        {"order": snapshot(("SKU-RED", 1)), "card_token": CARD_OK},
        source="order",
        now=datetime.now(UTC) - timedelta(seconds=age),
    )
    return decode(env.to_wire())


def test_a_message_older_than_the_window_is_dead_lettered_not_run_and_the_order_told(h):
    window = h.settings.dedup_window
    fresh, stale = h.deliver_batch([placed(h, "ord-1", 60), placed(h, "ord-old", window + 60)])
    assert (fresh.outcome.kind, stale.outcome.kind) == ("processed", "dead_lettered")
    assert f"{OUTSIDE_WINDOW}: it occurred 14d 1m" in stale.outcome.detail
    assert "CHOREO_DEDUP_WINDOW 14d" in stale.outcome.detail
    assert {c.order_id for c in h.rows(Charge)} == {"ord-1"}  # never charged
    assert h.gateway.moved("ord-old")["charge"] == 0
    assert stale.types == ["saga.dead_lettered"]  # the order needs an operator's look
    [record] = h.rows(DeadLetter)
    assert record.order_id == "ord-old" and record.reason.startswith(f"{OUTSIDE_WINDOW}: ")
    [copy] = [m for m in h.burst.sent if m["exchange"] == h.rt.names.dlx]
    assert copy["headers"]["x-choreo-reason"].startswith(f"{OUTSIDE_WINDOW}: ")


def test_a_message_just_inside_the_window_runs(h):
    [out] = h.deliver_batch([placed(h, "ord-1", h.settings.dedup_window - 60)])
    assert out.outcome.kind == "processed" and len(h.rows(Charge)) == 1


def test_a_message_a_little_ahead_of_the_clock_runs(h):
    # A sender's clock ahead by less than the skew allowed: believed, and its record outlives it.
    [out] = h.deliver_batch([placed(h, "ord-1", -(h.settings.max_clock_skew - 30))])
    assert out.outcome.kind == "processed" and len(h.rows(Charge)) == 1


def test_a_message_further_ahead_than_the_skew_allowed_is_dead_lettered_not_run(h):
    # Its age would read too young for as long as it lies ahead: a copy of it could be believed
    # after its record was gone.
    [out] = h.deliver_batch([placed(h, "ord-1", -3600)])
    assert out.outcome.kind == "dead_lettered" and h.rows(Charge) == []
    assert f"{AHEAD_OF_CLOCK}: it occurred at " in out.outcome.detail
    [record] = h.rows(DeadLetter)
    assert record.reason.startswith(f"{AHEAD_OF_CLOCK}: ")
    assert ", 1h in this worker's future" in record.reason
    assert "CHOREO_MAX_CLOCK_SKEW 5m" in record.reason


def test_records_outlive_the_window_by_the_skew_allowed():
    from choreo.app.retention import COMMON_KINDS

    s = Settings(max_clock_skew=120)
    kept = {k.name: k.window(s) for k in COMMON_KINDS}
    assert kept["inbox"] == kept["copies"] == s.dedup_window + 120


def test_a_forgery_is_refused_as_such_before_its_age_is_read(h):
    from tasks.adapter import Delivery

    env = placed(h, "ord-x", h.settings.dedup_window + 60)
    [out] = h.deliver_batch([Delivery(env.type, [env.to_wire()], {}, env.event_id, sender=None)])
    assert out.outcome.kind == "poison" and "unauthorized" in out.outcome.detail


def test_a_stale_dead_letter_runs_only_when_the_operator_forces_it_and_only_once(h):
    stale = placed(h, "ord-old", h.settings.dedup_window + 60)
    h.deliver_batch([stale])
    [copy] = [m for m in h.burst.sent if m["exchange"] == h.rt.names.dlx]
    # Moved back by a plain replay (the domain's own user_id): dead-lettered again.
    [again] = h.deliver_batch([h.returned(copy, replayed=True)])
    assert again.outcome.kind == "dead_lettered" and h.rows(Charge) == []
    # The operator's marked copy (tasks.worker sets `forced` only for the operator's user_id):
    # its sender still proven by the domain's record of the dead letter.
    forced = h.returned(copy, replayed=True)
    forced.forced = True
    [ran] = h.deliver_batch([forced])
    assert ran.outcome.kind == "processed" and len(h.rows(Charge)) == 1
    twice = h.returned(copy, replayed=True)
    twice.forced = True
    assert h.deliver_batch([twice])[0].outcome.kind == "duplicate"
    assert len(h.rows(Charge)) == 1


def test_a_forced_copy_naming_a_sender_without_a_record_is_refused(h):
    stale = placed(h, "ord-old", h.settings.dedup_window + 60)
    h.deliver_batch([stale])
    [copy] = [m for m in h.burst.sent if m["exchange"] == h.rt.names.dlx]
    forged = h.returned(copy, replayed=True)
    forged.forced, forged.claim = True, "inventory"  # no record of such a copy
    [out] = h.deliver_batch([forged])
    assert out.outcome.kind == "poison" and h.rows(Charge) == []


# -- the worker: who may mark a copy as forced ------------------------------------------------


class FakeMessage:
    def __init__(self, user_id, headers):
        self.headers = {"task": "payment.completed", "id": "ev-1", **headers}
        self.properties = {"user_id": user_id}
        self.delivery_info: dict = {}

    def decode(self):
        return [{"order_id": "ord-1"}], {}, {}


MARK = {"x-choreo-forced-replay": "ann (replay run r1)", "x-choreo-sender": "payment"}


@pytest.mark.parametrize(
    "user_id, forced, sender, claim",
    [
        ("t-operator", True, None, "payment"),  # the operator's marked copy: a claim to prove
        ("t-inventory", False, None, "payment"),  # the domain's own copy: the mark means nothing
        ("t-payment", False, "payment", None),  # another service: nothing
        ("t-client", False, "client", None),
        (None, False, None, None),  # nobody vouches
    ],
)
def test_only_the_operator_can_mark_a_copy_as_forced(user_id, forced, sender, claim):
    settings = Settings(broker_user_prefix="t-")
    d = _delivery(FakeMessage(user_id, MARK), settings, "inventory")
    assert (d.forced, d.sender, d.claim) == (forced, sender, claim)


def test_the_operator_without_the_mark_is_only_the_operator():
    settings = Settings(broker_user_prefix="t-")
    d = _delivery(FakeMessage("t-operator", {"x-choreo-sender": "payment"}), settings, "inventory")
    assert (d.forced, d.sender, d.claim) == (False, "operator", None)


# -- the replay plan --------------------------------------------------------------------------


def letter(age: float | None, domain: str = "payment", **headers) -> DeadLetterView:
    occurred = None if age is None else (datetime.now(UTC) - timedelta(seconds=age)).isoformat()
    return DeadLetterView(
        1, "ev-1", None, domain, "order.placed", "ord-1", "failed after 4 attempts", domain, 4,
        None, {"x-choreo-sender": "order", **headers}, "[]", occurred,
    )  # fmt: skip


def candidate(view: DeadLetterView, force: bool = False, settings=None) -> Candidate:
    import time

    from choreo.ops.replay import refusal

    s = settings or Settings()
    return Candidate(view, False, 0, None, Window.of(s, view, time.time()), force, refusal(s))


def test_a_dead_letter_inside_the_window_runs_again():
    c = candidate(letter(DAY))
    assert not c.refused and not c.forced and c.effect == "runs again"


def test_a_dead_letter_outside_the_window_is_refused_with_why_unless_forced():
    c = candidate(letter(15 * DAY))
    assert c.refused and c.effect.startswith(
        "refused: older than the dedup window (14d): its dedup record may be gone and it would "
        "run again"
    )
    assert "--force-outside-window" in c.effect
    forced = candidate(letter(15 * DAY), force=True)
    assert forced.forced and not forced.refused and forced.effect.startswith("forced outside")
    assert forced.as_dict()["forced"] is True


def test_some_dead_letters_cannot_be_forced():
    no_copy = letter(15 * DAY)
    del no_copy.headers["x-choreo-sender"]  # the broker dead-lettered it
    unrouted = letter(15 * DAY, domain=UNROUTED)
    long_ago = letter(30 * DAY)  # its copy record, a window after it was written, may be gone
    long_ago.dead_lettered_at = (datetime.now(UTC) - timedelta(days=15)).isoformat()
    for view in (no_copy, unrouted, long_ago):
        c = candidate(view, force=True)
        assert c.refused and "it cannot be forced" in c.effect


def test_a_stale_message_dead_lettered_recently_can_be_forced():
    view = letter(30 * DAY)
    view.dead_lettered_at = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    assert candidate(view, force=True).forced


def test_a_dead_letter_with_no_readable_occurred_at_is_not_refused_for_its_age():
    assert not candidate(letter(None)).refused
