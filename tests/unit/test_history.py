"""History streams: growth, bounds, epochs, recovery; and recovery through the hub."""

from __future__ import annotations

import orjson
import pytest

from fastws.config import Limits
from fastws.core import RingBuffer
from fastws.exceptions import ProtocolError
from fastws.history import STREAM_OVERHEAD, History, payload_of
from fastws.hub import Hub
from fastws.messages import Filters
from tests.unit.test_hub import ListSink, send, unframe


def add(history, channel, count, size=100, target=None):
    for _ in range(count):
        offset = history.next_offset(channel)
        history.append(channel, offset, b"\x81\x7e" + b"x" * size, "e", "s", 1, "u", target)


def test_streams_grow_to_the_per_channel_bounds():
    """A stream starts small and grows until the per-channel count and byte bounds hold."""
    history = History(Limits(history_size=100, history_bytes=8192))
    add(history, "c:t", 10)
    small = history.nbytes
    add(history, "c:t", 500)
    epoch, last, records = history.read("c:t", 0, 1000)
    assert last == 510
    assert history.nbytes > small
    assert len(records) <= 100 and sum(len(r[6]) for r in records) <= 8192
    assert [r[0] for r in records] == list(range(511 - len(records), 511))
    assert history.position("c:t") == (epoch, 510)


def test_growth_keeps_epoch_and_offsets():
    """Growing a stream keeps its epoch, so positions given earlier still resume."""
    history = History(Limits())
    epoch, _ = history.position("c:t")
    add(history, "c:t", 300)
    recovered, same_epoch, last, records = history.recover("c:t", epoch, 0)
    assert (recovered, same_epoch, last, len(records)) == (True, epoch, 300, 300)


def test_recover_refuses_other_epochs_and_lost_offsets():
    """A different epoch, an offset that left the ring, or a future offset is not recovered."""
    history = History(Limits(history_size=10))
    epoch, _ = history.position("c:t")
    add(history, "c:t", 30)
    assert history.recover("c:t", epoch, 25)[0] is True
    assert history.recover("c:t", epoch, 20)[0] is True  # offsets 21-30 are all held
    assert history.recover("c:t", epoch, 19)[0] is False
    assert history.recover("c:t", "0" * 16, 25)[0] is False
    assert history.recover("c:t", None, 25)[0] is False
    assert history.recover("c:t", epoch, 31)[0] is False


def test_total_bound_drops_least_recently_published_streams():
    """Past the total bound, whole streams go, oldest publish first; a returning channel gets a new epoch."""
    history = History(Limits(history_size=1000, history_bytes=64 * 1024, history_total_bytes=100 * 1024))
    first_epoch, _ = history.position("a:t")
    add(history, "a:t", 200, size=200)
    add(history, "b:t", 200, size=200)
    add(history, "c:t", 200, size=200)
    assert history.nbytes <= 100 * 1024
    assert "a:t" not in history
    epoch, last = history.position("a:t")
    assert epoch != first_epoch and last == 0


def test_payload_of_strips_each_header_size():
    """payload_of() undoes core.frame_text for all three header sizes."""
    from fastws.core import frame_text

    for size in (5, 200, 70_000):
        assert payload_of(frame_text(b"x" * size)) == b"x" * size


# -- through the hub ------------------------------------------------------------


def publish(hub, session, **fields):
    send(session, {"type": "publish", "event": "e", **fields})


@pytest.fixture
def hub():
    return Hub(Limits())


def test_events_carry_consecutive_offsets_per_channel(hub):
    """Every delivered event has its channel's next offset, starting at 1."""
    session, sink = hub.connect(ListSink(), "t", "u"), None
    sink = session.sink
    sink.take()
    for _ in range(3):
        publish(hub, session)
    send(session, {"type": "subscribe", "channel": "x"})
    publish(hub, session, channel="x")
    assert [m["offset"] for m in sink.take()] == [1, 2, 3, 1]


def test_welcome_carries_the_tenant_stream_position(hub):
    """The welcome event's data has the tenant channel's epoch and latest offset."""
    first = hub.connect(ListSink(), "t", "u")
    (welcome,) = first.sink.take()
    publish(hub, first)
    second = hub.connect(ListSink(), "t", "v")
    (welcome2,) = second.sink.take()
    assert welcome2["data"]["epoch"] == welcome["data"]["epoch"]
    assert (welcome["data"]["offset"], welcome2["data"]["offset"]) == (0, 1)
    assert "recovered" not in welcome["data"]


def test_resume_on_connect_replays_missed_events_through_filters(hub):
    """Connecting with since/epoch replays what was missed, filtered and targeted, then goes live."""
    publisher = hub.connect(ListSink(), "t", "p")
    epoch = publisher.sink.take()[0]["data"]["epoch"]
    publish(hub, publisher, event="a")
    publish(hub, publisher, event="b", priority="high")
    publish(hub, publisher, event="c", targetUserId="me")
    publish(hub, publisher, event="d", targetUserId="someone")
    publish(hub, publisher, event="a", priority="high")
    me = hub.connect(ListSink(), "t", "me", Filters(priorities=frozenset({"high", "normal"}), event_types=frozenset({"b", "c", "a"})), since=1, epoch=epoch)
    publish(hub, publisher, event="b")
    welcome, *events = me.sink.take()
    assert welcome["data"]["recovered"] is True and welcome["data"]["offset"] == 5
    assert [(e["eventType"], e["offset"]) for e in events] == [("b", 2), ("c", 3), ("a", 5), ("b", 6)]


def test_resume_with_a_lost_position_says_so(hub):
    """A stale epoch gives recovered false and no replay."""
    publisher = hub.connect(ListSink(), "t", "p")
    publish(hub, publisher)
    session = hub.connect(ListSink(), "t", "u", since=0, epoch="ffffffffffffffff")
    (welcome,) = session.sink.take()
    assert welcome["data"]["recovered"] is False and welcome["data"]["offset"] == 1


def test_subscribe_with_since_is_always_answered_then_replays(hub):
    """A subscribe asking for recovery gets an ack even without a ref, then the missed events of that subscription."""
    publisher = hub.connect(ListSink(), "t", "p")
    send(publisher, {"type": "subscribe", "channel": "x", "ref": 1})
    epoch = publisher.sink.take()[-1]["epoch"]
    for name in ("a", "b", "a"):
        publish(hub, publisher, event=name, channel="x")
    session = hub.connect(ListSink(), "t", "u")
    session.sink.take()
    send(session, {"type": "subscribe", "channel": "x", "since": 0, "epoch": epoch, "eventTypes": ["a"]})
    ack, *events = session.sink.take()
    assert ack == {"type": "ack", "ref": None, "channel": "x:t", "epoch": epoch, "offset": 3, "recovered": True}
    assert [e["offset"] for e in events] == [1, 3]


@pytest.mark.parametrize(
    "message",
    [
        {"type": "subscribe", "channel": "x", "since": -1},
        {"type": "subscribe", "channel": "x", "since": "3"},
        {"type": "subscribe", "channel": "x", "since": True},
        {"type": "subscribe", "channel": "x", "epoch": "e"},
        {"type": "subscribe", "channel": "x", "since": 1, "epoch": 5},
    ],
)
def test_bad_positions_are_invalid_field(hub, message):
    """since must be a non-negative integer and epoch a string that goes with it."""
    session = hub.connect(ListSink(), "t", "u")
    session.sink.take()
    send(session, {**message, "ref": "r"})
    (reply,) = session.sink.take()
    assert (reply["type"], reply["code"], reply["ref"]) == ("error", "invalid_field", "r")


def test_history_frames_are_the_delivered_frames(hub):
    """History keeps the very frame that was delivered (one encoding, one frame)."""
    session = hub.connect(ListSink(), "t", "u")
    session.sink.take()
    publish(hub, session, payload={"k": 1})
    (delivered,) = session.sink.frames
    _, _, records = hub.broker.read("tenant:t", 0, 10)
    assert records[0][6] == delivered
    assert orjson.loads(payload_of(records[0][6]))["data"] == {"k": 1}
    assert unframe(delivered)["offset"] == 1


def test_stream_overhead_bounds_many_tiny_streams():
    """Streams of one small event each are counted with STREAM_OVERHEAD: past the total bound the oldest
    go, the count of streams stays under total / (ring + overhead), and a dropped one resumes as lost."""
    limits = Limits(history_total_bytes=256 * 1024)
    history = History(limits)
    epoch, _ = history.position("first:t")
    add(history, "first:t", 1)
    for n in range(5000):
        add(history, f"c{n}:t{n % 3}", 1)
    assert history.nbytes <= limits.history_total_bytes
    smallest = len(RingBuffer.create(1024, 8).buffer) + STREAM_OVERHEAD
    assert len(list(history.channels())) <= limits.history_total_bytes // smallest
    assert "c4999:t1" in history and "first:t" not in history
    recovered, new_epoch, last, _ = history.recover("first:t", epoch, 1)
    assert recovered is False and new_epoch != epoch and last == 0
    assert sum(history.tenants.counts.values()) == len(list(history.channels()))


def test_tenant_channel_cap():
    """A tenant may start max_channels_per_tenant streams by publishing; a batch is admitted whole or not
    at all; reads at the cap keep nothing; other tenants are not affected; dropped streams free the count."""
    history = History(Limits(max_channels_per_tenant=3))
    history.admit("t", ["a:t", "b:t", "c:t"])
    for channel in ("a:t", "b:t"):
        add(history, channel, 1)
    with pytest.raises(ProtocolError) as refused:
        history.admit("t", ["a:t", "c:t", "d:t"])
    assert refused.value.code == "too_many_channels"
    history.admit("t", ["a:t", "c:t"])
    add(history, "c:t", 1)
    with pytest.raises(ProtocolError):
        history.admit("t", ["d:t"])
    history.admit("t", ["a:t"])  # existing channels go on
    history.admit("u", ["d:u"])  # another tenant
    assert history.position("d:t")[1] == 0 and "d:t" not in history  # not kept
    assert history.recover("d:t", None, 0)[0] is False and "d:t" not in history
    assert history.read("d:t", 0, 10)[2] == [] and "d:t" not in history
    history.max_total_bytes = 1  # every stream but the newest must go (when the next one starts)
    add(history, "e:u", 1)
    assert list(history.channels()) == ["e:u"] and history.tenants.counts == {"u": 1}
    history.admit("t", ["b:t", "d:t"])


def test_the_event_count_follows_appends_evictions_and_forgotten_streams():
    """len(History) is kept as a count; it always equals the rings' events."""
    from fastws.config import Limits
    from fastws.history import History

    history = History(Limits(history_size=5, history_bytes=4096, history_total_bytes=64 * 1024))
    for n in range(400):
        history.sequence(f"c{n % 37}:t", b'{"n":%d}' % n, "e", "s", 1, "u", None)
        assert len(history) == sum(len(history._rings[c]) for c in history.channels())
    assert 0 < len(history) <= 5 * 37
