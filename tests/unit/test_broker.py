"""SharedBroker without processes: two brokers on one segment, as two workers would be."""

from __future__ import annotations

import pytest

from fastws.broker import SharedBroker, SharedSegment
from fastws.config import Limits


class Worker:
    def __init__(self, segment_path: str, number: int, limits: Limits) -> None:
        self.delivered: list[tuple] = []
        self.commands: list[bytes] = []
        self.notified = 0
        self.broker = SharedBroker(
            SharedSegment.attach(segment_path), number, limits, self._on_event, self._on_command, self._notify
        )
        self.broker.start()

    def _on_event(self, channel, event_type, source, priority, publisher, target, frame, offset, published_at):
        self.delivered.append((channel, event_type, frame))

    def _on_command(self, body: bytes) -> int:
        self.commands.append(body)
        return len(body)

    def _notify(self) -> None:
        self.notified += 1

    def publish(self, channel: str, n: int) -> tuple[int, bytes]:
        return self.broker.sequence(channel, b'{"n":%d}' % n, "e", "s", 1, "u", None)


@pytest.fixture
def limits():
    return Limits(history_total_bytes=64 * 1024, history_size=50)


@pytest.fixture
def path(tmp_path, limits):
    location = str(tmp_path / "segment")
    SharedSegment.create(location, limits, max_workers=4, max_overrides=8)
    return location


def test_events_reach_the_other_worker_in_log_order(path, limits):
    """Worker 1 applies worker 0's events in the order they were appended, with the same offsets and frames."""
    a, b = Worker(path, 0, limits), Worker(path, 1, limits)
    sent = [a.publish("c:t", n) for n in range(5)] + [b.publish("c:t", 5)]
    assert [offset for offset, _ in sent] == [1, 2, 3, 4, 5, 6]
    b.broker.catch_up()
    assert [frame for _, _, frame in b.delivered] == [frame for _, frame in sent[:5]]
    a.broker.catch_up()
    assert [frame for _, _, frame in a.delivered] == [sent[5][1]]
    assert a.notified == 5 and b.notified == 1


def test_interleaved_publishers_share_one_numbering(path, limits):
    """Two workers publishing to one channel get consecutive offsets from the one log."""
    a, b = Worker(path, 0, limits), Worker(path, 1, limits)
    offsets = []
    for n in range(10):
        offsets.append((a if n % 3 else b).publish("c:t", n)[0])
    assert offsets == list(range(1, 11))


def test_stream_start_gives_every_worker_one_epoch(path, limits):
    """The first position() of a channel on any worker starts the stream once; everyone reports that epoch."""
    a, b = Worker(path, 0, limits), Worker(path, 1, limits)
    epoch, last = a.broker.position("new:t")
    b.broker.catch_up()
    assert b.broker.position("new:t") == (epoch, last) == (epoch, 0)


def test_recovery_on_another_worker_and_after_restart(path, limits):
    """History written by one worker is recovered on another, and by a worker that restarted."""
    a, b = Worker(path, 0, limits), Worker(path, 1, limits)
    epoch, _ = a.broker.position("c:t")
    frames = [a.publish("c:t", n)[1] for n in range(8)]
    b.broker.catch_up()
    recovered, same_epoch, last, records = b.broker.recover("c:t", epoch, 3)
    assert (recovered, same_epoch, last) == (True, epoch, 8)
    assert [r[6] for r in records] == frames[3:]
    restarted = Worker(path, 1, limits)
    assert restarted.broker.recover("c:t", epoch, 0)[3] == [
        (i + 1, "e", "s", 1, "u", None, frame) for i, frame in enumerate(frames)
    ]
    assert restarted.delivered == []  # rebuilding delivers nothing
    assert restarted.broker.recover("c:t", "f" * 16, 0)[0] is False


def test_per_channel_bound_and_wrapped_log(path, limits):
    """Past history_size a channel's oldest events are not recoverable; a log that wraps past a stream ends it."""
    a = Worker(path, 0, limits)
    epoch, _ = a.broker.position("c:t")
    for n in range(60):
        a.publish("c:t", n)
    assert a.broker.recover("c:t", epoch, 9)[0] is False
    assert a.broker.recover("c:t", epoch, 10)[0] is True
    for n in range(2000):
        a.publish("other:t", n)
    recovered, new_epoch, last, _ = a.broker.recover("c:t", epoch, 59)
    assert recovered is False and new_epoch != epoch and last == 0


def test_commands_are_applied_everywhere_once(path, limits):
    """A command runs on its writer at once and on every other worker when it catches up."""
    a, b = Worker(path, 0, limits), Worker(path, 1, limits)
    position = a.broker.command(b"disconnect")
    b.broker.catch_up()
    assert a.commands == b.commands == [b"disconnect"]
    assert a.broker.command_results[-1] == b.broker.command_results[-1] == (position, len(b"disconnect"))


def test_a_lagging_worker_counts_what_it_lost(path, limits):
    """A worker that falls behind a wrapped log counts the records it lost and carries on."""
    a, b = Worker(path, 0, limits), Worker(path, 1, limits)
    for n in range(3000):
        a.publish("c:t", n)
    b.broker.catch_up()
    assert b.broker.lost > 0
    a.publish("c:t", 1)
    b.delivered.clear()
    b.broker.catch_up()
    assert len(b.delivered) == 1
