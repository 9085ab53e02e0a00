"""The Redis data model (fastws.cluster) and the hub's holding of a session's order (HeldSink), sans I/O."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, strategies as st

from fastws.cluster import Keys, decode_message, decode_tail, encode_tail, record_of, shard_of, split_channel
from fastws.hub import HeldSink

names = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)


@given(names, names, names, st.none() | names, st.integers(0, 3), st.binary(max_size=200))
def test_a_tail_decodes_to_what_was_encoded(event_type, source, publisher, target, priority, payload):
    tail = encode_tail(1234.5, priority, event_type, source, publisher, target, b"tagtag00", 77, payload)
    message = decode_message(b"41 00112233aabbccdd " + tail)
    assert message == (41, "00112233aabbccdd", 1234.5, priority, event_type, source, publisher, target,
                       b"tagtag00", 77, payload)
    assert decode_tail(41, "e", tail).payload == payload


def test_a_record_carries_the_frame_given():
    message = decode_tail(3, "e", encode_tail(0.0, 1, "t", "s", "p", None, b"x" * 8, 1, b"{}"))
    assert record_of(message, b"FRAME") == (3, "t", "s", 1, "p", None, b"FRAME")


def test_keys_are_under_the_prefix_and_the_tenant():
    keys = Keys("dep1")
    assert keys.channel("ideas:acme") == "dep1:t:acme:c:ideas"
    assert keys.script_keys("ideas:acme") == ("dep1:t:acme:c:ideas:m", "dep1:t:acme:c:ideas:s", "dep1:t:acme:channels")
    assert keys.tenant_channels("tenant:acme") == "dep1:t:acme:channels"
    # another tenant's channel, whatever its name, is under that tenant's keys
    assert not Keys("dep1").channel("x:acme:other").startswith("dep1:t:acme:")
    assert Keys("dep2").channel("ideas:acme") != keys.channel("ideas:acme")
    assert split_channel("a.b:acme") == ("a.b", "acme")


def test_shards_are_stable_and_spread():
    channels = [f"c{i}:t{i % 7}" for i in range(2000)]
    first = [shard_of(c, 3) for c in channels]
    assert first == [shard_of(c, 3) for c in channels]
    counts = [first.count(i) for i in range(3)]
    assert min(counts) > 500, counts
    assert all(shard_of(c, 1) == 0 for c in channels)
    # a known value: the hash is crc32 of "tenant\0name", the same on every host and version
    assert (shard_of("tenant:acme", 2), shard_of("tenant:globex", 2), shard_of("orders:acme", 3)) == (0, 1, 1)


class ListSink:
    def __init__(self) -> None:
        self.out: list[tuple] = []
        self.closed: tuple | None = None

    def send(self, frame: bytes) -> None:
        self.out.append(("reply", frame))

    def send_event(self, frame: bytes, priority: int, channel: str, offset: int) -> None:
        self.out.append(("event", channel, offset))

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


def test_held_frames_keep_their_order_around_an_answer():
    sink = ListSink()
    held = HeldSink(sink, 1 << 20)
    held.send(b"first")  # nothing waits: passed on at once
    slot = held.slot()
    held.send_event(b"e", 1, "a:t", 5)  # the channel's events at or before the position are left out
    held.send(b"pong")
    held.send_event(b"e", 1, "a:t", 7)
    held.send_event(b"e", 1, "b:t", 2)
    assert sink.out == [("reply", b"first")]
    held.fill(slot, [(b"ack", -1, "", 0), (b"r", 1, "a:t", 6)], "a:t", 6)
    assert sink.out == [("reply", b"first"), ("reply", b"ack"), ("event", "a:t", 6), ("reply", b"pong"),
                        ("event", "a:t", 7), ("event", "b:t", 2)]
    assert not held.entries and not held.open and held.nbytes == 0


def test_answers_go_out_in_the_order_their_commands_came():
    sink = ListSink()
    held = HeldSink(sink, 1 << 20)
    one, two = held.slot(), held.slot()
    held.send(b"pong")
    held.fill(two, [(b"ack2", -1, "", 0)])
    assert sink.out == []
    held.fill(one, [(b"ack1", -1, "", 0)])
    assert [frame for _, frame in sink.out] == [b"ack1", b"ack2", b"pong"]


def test_holding_is_bounded():
    sink = ListSink()
    held = HeldSink(sink, 100)
    slot = held.slot()
    for _ in range(20):
        held.send_event(b"x" * 10, 1, "a:t", 1)
    assert sink.closed is not None and sink.closed[0] == 4008
    held.fill(slot, [(b"late", -1, "", 0)])  # nothing more goes out
    assert sink.out == []


@pytest.mark.parametrize("count", [1, 3])
def test_a_missed_notice_names_the_range(count):
    from fastws.hub import Hub

    hub = Hub()
    sink = ListSink()
    session = hub.connect(sink, "acme", "u1")
    hub.subscribe(session, "ideas", None)
    sink.out.clear()
    hub.notify_missed("ideas:acme", 4, 3 + count)
    (kind, frame), = sink.out
    notice = orjson.loads(frame[2:])
    assert notice == {"type": "missed", "count": count,
                      "channels": {"ideas:acme": {"first": 4, "last": 3 + count, "count": count}}}


def test_a_pubsub_message_carries_one_calls_events_of_a_channel_in_order():
    from fastws.cluster import decode_messages, encode_messages

    tails = [encode_tail(0.0, 1, "t", "s", "p", None, b"x" * 8, i, b'{"i":%d}' % i) for i in range(3)]
    data = encode_messages([b"%d e1 " % (i + 5) + tail for i, tail in enumerate(tails)])
    messages = decode_messages(data)
    assert [(m.offset, m.epoch, m.sequence, m.payload) for m in messages] == [
        (5, "e1", 0, b'{"i":0}'), (6, "e1", 1, b'{"i":1}'), (7, "e1", 2, b'{"i":2}')]
    assert decode_messages(b"") == []
