"""SharedBroker without processes: two brokers on one segment, as two workers would be."""

from __future__ import annotations

import pytest

from fastws.broker import SharedBroker, SharedSegment
from fastws.config import Limits
from fastws.exceptions import ProtocolError
from fastws.history import STREAM_OVERHEAD


class Worker:
    def __init__(self, segment_path: str, number: int, limits: Limits) -> None:
        self.delivered: list[tuple] = []
        self.commands: list[bytes] = []
        self.notified = 0
        self.lost: list[int] = []
        self.broker = SharedBroker(
            SharedSegment.attach(segment_path), number, limits, self._on_event, self._on_command, self._notify,
            self.lost.append,
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
    """Past history_size a channel's oldest events are not recoverable; once the log has wrapped past a
    stream's events, recovery says so (the replica stays: forgetting it is the total bound's decision)."""
    a = Worker(path, 0, limits)
    epoch, _ = a.broker.position("c:t")
    for n in range(60):
        a.publish("c:t", n)
    assert a.broker.recover("c:t", epoch, 9)[0] is False
    assert a.broker.recover("c:t", epoch, 10)[0] is True
    for n in range(2000):
        a.publish("other:t", n)
    assert a.broker.recover("c:t", epoch, 59)[:3] == (False, epoch, 60)
    assert a.broker.recover("c:t", epoch, 60)[:3] == (True, epoch, 60)  # nothing missed
    assert a.publish("c:t", 60)[0] == 61


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
    assert b.broker.lost > 0 and b.lost == [b.broker.lost]
    a.publish("c:t", 1)
    b.delivered.clear()
    b.broker.catch_up()
    assert len(b.delivered) == 1


def test_replicas_are_bounded_and_the_same_on_every_worker(path, limits):
    """Past history_total_bytes (records kept plus STREAM_OVERHEAD each), the least recently published
    replicas are forgotten, by the same decisions on every worker; a forgotten channel's next event
    starts a new stream, so resuming from the old one is refused."""
    a, b = Worker(path, 0, limits), Worker(path, 1, limits)
    epoch, _ = a.broker.position("old:t")
    a.publish("old:t", 0)
    for n in range(2000):
        (a if n % 3 else b).publish(f"c{n}:t{n % 4}", n)
    a.broker.catch_up()
    b.broker.catch_up()
    assert list(a.broker._streams) == list(b.broker._streams)
    assert a.broker.nbytes == b.broker.nbytes <= limits.history_total_bytes
    assert len(a.broker._streams) <= limits.history_total_bytes // STREAM_OVERHEAD
    assert "c1999:t3" in a.broker and "old:t" not in a.broker
    assert sum(a.broker.tenants.counts.values()) == len(a.broker._streams)
    assert b.publish("old:t", 1)[0] == 1  # a new stream
    a.broker.catch_up()
    recovered, new_epoch, last, _ = a.broker.recover("old:t", epoch, 1)
    assert recovered is False and new_epoch != epoch and last == 1


def test_a_rebuilt_worker_keeps_offsets_consistent(path, limits):
    """A worker rebuilt from the log lacks a replica the others keep (its records wrapped out of the log
    before it started): when it publishes there, every worker takes the writer's new epoch and offset,
    and a resume from the old stream is refused, never answered with a gap."""
    a = Worker(path, 0, limits)
    epoch, _ = a.broker.position("quiet:t")
    a.publish("quiet:t", 0)
    for n in range(3000):
        a.publish("hot:t", n)  # wraps the log past quiet:t's records; the replica stays within the bound
    assert "quiet:t" in a.broker
    rebuilt = Worker(path, 1, limits)
    assert "quiet:t" not in rebuilt.broker
    offset, _ = rebuilt.publish("quiet:t", 1)
    a.broker.catch_up()
    assert a.broker.position("quiet:t") == rebuilt.broker.position("quiet:t") != (epoch, 1)
    assert a.broker.position("quiet:t")[1] == offset
    assert a.publish("quiet:t", 2)[0] == offset + 1
    rebuilt.broker.catch_up()
    assert rebuilt.broker.position("quiet:t") == a.broker.position("quiet:t")
    assert a.broker.recover("quiet:t", epoch, 1)[0] is False


def test_tenant_channel_cap_on_the_shared_log(path):
    """admit() refuses a tenant's new channels past max_channels_per_tenant, counted from the log on every
    worker; a read at the cap starts no stream."""
    limits = Limits(history_total_bytes=64 * 1024, max_channels_per_tenant=2)
    a, b = Worker(path, 0, limits), Worker(path, 1, limits)
    a.broker.admit("t", {"x:t", "y:t"})
    a.publish("x:t", 0)
    a.publish("y:t", 0)
    b.broker.catch_up()
    for broker in (a.broker, b.broker):
        with pytest.raises(ProtocolError) as refused:
            broker.admit("t", {"x:t", "z:t"})
        assert refused.value.code == "too_many_channels"
        broker.admit("t", {"x:t", "y:t"})
        broker.admit("u", {"z:u"})
        assert broker.position("z:t")[1] == 0 and "z:t" not in broker
        assert broker.recover("z:t", None, 0)[0] is False and broker.read("z:t", 0, 5)[2] == []
    a.broker.catch_up()
    assert "z:t" not in a.broker and a.broker.tenants.counts == {"t": 2}


def test_a_worker_that_lost_records_never_numbers_from_a_stale_replica(path, limits):
    """Worker 1 saw channel x up to offset 3; then x went on to 6 and so much else was published that
    those records left the log before worker 1 read them. Its next event of x starts a new stream (new
    epoch) instead of giving offset 4 a second time in the old one, and the log settles it everywhere."""
    a, b = Worker(path, 0, limits), Worker(path, 1, limits)
    for n in range(3):
        a.publish("x:t", n)
    b.broker.catch_up()
    old_epoch, last = b.broker.position("x:t")
    assert last == 3
    for n in range(3, 6):
        a.publish("x:t", n)
    for n in range(3000):
        a.publish("z:t", n)
    offset, _ = b.publish("x:t", 0)  # catches up under the lock first: finds the loss
    assert b.lost and b.broker.position("x:t")[0] != old_epoch and offset == 1
    a.broker.catch_up()
    assert a.broker.position("x:t") == b.broker.position("x:t")
