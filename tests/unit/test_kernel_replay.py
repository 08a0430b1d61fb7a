"""BrokerAdmin.replay over a fake channel: which dead letters it moves, in what batches, the
record before the move, and the ones it does not select put back. The real broker is in
tests/e2e/test_dlq_replay.py and tests/integration/test_unrouted.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from choreo.messaging.admin import BrokerAdmin, Replayed
from choreo.messaging.topology import Names
from config.settings import Settings


@dataclass
class FakeChannel:
    """A dead-letter queue of event ids; every call is written to `log`."""

    letters: list[str]
    log: list[tuple] = field(default_factory=list)
    is_open: bool = True

    def basic_get(self, queue: str, auto_ack: bool):
        if not self.letters:
            return None, None, None
        tag = len([e for e in self.log if e[0] == "get"]) + 1
        event_id = self.letters.pop(0)
        self.log.append(("get", queue, tag))
        method = SimpleNamespace(delivery_tag=tag, routing_key="payment.completed", exchange="")
        props = SimpleNamespace(
            headers={"id": event_id, "task": "payment.completed"}, message_id=event_id
        )
        return method, props, b"[]"

    def basic_reject(self, tag: int, requeue: bool) -> None:
        self.log.append(("reject", tag, requeue))

    def basic_nack(self, delivery_tag: int, requeue: bool) -> None:
        self.log.append(("nack", delivery_tag, requeue))

    def close(self) -> None:
        self.log.append(("close",))
        self.is_open = False


def _admin(channel: FakeChannel) -> BrokerAdmin:
    admin = BrokerAdmin.__new__(BrokerAdmin)  # no broker: only the channel is used
    admin.settings = Settings()
    admin.names = Names(admin.settings.namespace)
    admin.conn = SimpleNamespace(channel=lambda: channel)
    return admin


def test_one_event_id_moves_only_that_letter_and_puts_the_others_back():
    channel = FakeChannel(["ev-1", "ev-2", "ev-3"])
    moved = _admin(channel).replay("payment", "ev-2")
    assert [v.event_id for v in moved] == ["ev-2"]
    actions = [e for e in channel.log if e[0] != "get"]
    assert actions == [("reject", 2, False), ("nack", 1, True), ("nack", 3, True), ("close",)]


def test_batches_are_recorded_before_they_move_and_limit_stops_the_read():
    channel = FakeChannel([f"ev-{i}" for i in range(1, 6)])

    def record(batch: list[Replayed]) -> None:
        channel.log.append(("record", [r.view.event_id for r in batch], {r.outcome for r in batch}))

    moved = _admin(channel).replay("payment", limit=3, batch=2, before_ack=record)
    assert [v.event_id for v in moved] == ["ev-1", "ev-2", "ev-3"]
    assert [e for e in channel.log if e[0] != "get"] == [
        ("record", ["ev-1", "ev-2"], {"replayed"}),
        ("reject", 1, False),
        ("reject", 2, False),
        ("record", ["ev-3"], {"replayed"}),
        ("reject", 3, False),
        ("close",),
    ]
    assert channel.letters == ["ev-4", "ev-5"]  # never read


def test_a_failed_record_moves_nothing_and_puts_nothing_back_twice():
    channel = FakeChannel(["ev-1", "ev-2"])

    def record(batch: list[Replayed]) -> None:
        raise RuntimeError("database down")

    with pytest.raises(RuntimeError):
        _admin(channel).replay("payment", select=lambda v: v.event_id == "ev-2", before_ack=record)
    # ev-1 was not selected: put back; ev-2 stays unacked until the channel closes.
    assert [e for e in channel.log if e[0] != "get"] == [("nack", 1, True), ("close",)]


def test_an_unknown_domain_is_refused_before_any_read():
    channel = FakeChannel(["ev-1"])
    with pytest.raises(ValueError, match="unknown domain"):
        _admin(channel).replay("nowhere")
    assert channel.log == []
