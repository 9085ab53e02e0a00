"""The ring-buffer history on both implementations, and their byte-for-byte parity."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastws import _core_py
from tests.conftest import IMPLEMENTATIONS


def fill(ring, count, size=100, start=1, target=None):
    for offset in range(start, start + count):
        assert ring.append(offset, b"%08d" % offset + b"x" * (size - 8), "e", "s", 1, "u", target)


def test_offsets_start_at_1_and_since_is_exclusive(core):
    """The first event is offset 1; read(since) returns events after since."""
    ring = core.RingBuffer.create(10_000, 100)
    assert (ring.first_offset, ring.next_offset, ring.last_offset, len(ring)) == (1, 1, 0, 0)
    fill(ring, 5)
    assert [e[0] for e in ring.read(0, 100)] == [1, 2, 3, 4, 5]
    assert [e[0] for e in ring.read(3, 100)] == [4, 5]
    assert [e[0] for e in ring.read(3, 1)] == [4]
    assert ring.read(5, 100) == []


def test_records_round_trip(core):
    """Every field of an event comes back as stored."""
    ring = core.RingBuffer.create(10_000, 10)
    ring.append(1, b"\x81\x02{}", "idea_created", "idea_service", 3, "alice", "bob")
    ring.append(2, b"frame", "é", "s", 0, "u")
    assert ring.read(0, 10) == [
        (1, "idea_created", "idea_service", 3, "alice", "bob", b"\x81\x02{}"),
        (2, "é", "s", 0, "u", None, b"frame"),
    ]


def test_bounded_by_count(core):
    """At max_events the oldest event goes."""
    ring = core.RingBuffer.create(100_000, 10)
    fill(ring, 25)
    assert (ring.first_offset, ring.last_offset, len(ring)) == (16, 25, 10)
    assert ring.covers(15) and not ring.covers(14) and ring.covers(25) and not ring.covers(26)


def test_bounded_by_bytes_with_wraparound(core):
    """Past capacity the oldest events go; records never straddle the end of the data region."""
    ring = core.RingBuffer.create(1000, 1000)
    fill(ring, 50, size=90)
    assert ring.nbytes <= 1000
    events = ring.read(0, 1000)
    assert [e[0] for e in events] == list(range(ring.first_offset, 51))
    assert all(e[6] == b"%08d" % e[0] + b"x" * 82 for e in events)


def test_an_event_larger_than_the_ring_restarts_history_after_it(core):
    """An event that can never fit is not stored, and the history continues after it."""
    ring = core.RingBuffer.create(500, 10)
    fill(ring, 3)
    assert ring.append(4, b"x" * 600, "e", "s", 1, "u") is False
    assert (ring.first_offset, ring.next_offset, len(ring)) == (5, 5, 0)
    assert not ring.covers(3) and ring.covers(4)
    fill(ring, 2, start=5)
    assert [e[0] for e in ring.read(0, 10)] == [5, 6]


def test_offsets_must_be_consecutive(core):
    """append() refuses an offset other than next_offset."""
    ring = core.RingBuffer.create(1000, 10)
    with pytest.raises(ValueError):
        ring.append(2, b"x", "e", "s", 1, "u")


def test_epoch_is_random_and_kept_by_the_layout(core):
    """A new ring gets a fresh 16-character epoch; a ring attached to the same buffer reads the same state."""
    first = core.RingBuffer.create(1000, 10)
    second = core.RingBuffer.create(1000, 10)
    assert len(first.epoch) == 16 and first.epoch != second.epoch
    fill(first, 3)
    attached = core.RingBuffer(first.buffer)
    assert (attached.epoch, attached.last_offset, attached.read(0, 10)) == (first.epoch, 3, first.read(0, 10))


def test_attaching_to_garbage_is_refused(core):
    """A buffer without the ring's magic and version is refused."""
    with pytest.raises(ValueError):
        core.RingBuffer(bytearray(1000))


def test_both_implementations_read_each_others_buffers():
    """The layout is one: a buffer written by one implementation is read by the other."""
    if "cython" not in IMPLEMENTATIONS:
        pytest.skip("the compiled core is not built")
    from fastws import _core

    ring = _core.RingBuffer.create(2000, 8, next_offset=41)
    fill(ring, 30, size=70, start=41)
    twin = _core_py.RingBuffer(ring.buffer)
    assert twin.read(0, 100) == ring.read(0, 100)
    assert (twin.first_offset, twin.next_offset, twin.nbytes, len(twin)) == (
        ring.first_offset, ring.next_offset, ring.nbytes, len(ring))


appends = st.lists(
    st.tuples(
        st.integers(0, 300),  # frame size
        st.sampled_from(["a", "bb", "ccc", "é"]),
        st.integers(0, 3),
        st.one_of(st.none(), st.sampled_from(["u1", "u2"])),
    ),
    max_size=80,
)


@pytest.mark.skipif(len(IMPLEMENTATIONS) < 2, reason="the compiled core is not built")
@settings(max_examples=200, deadline=None)
@given(st.integers(50, 3000), st.integers(1, 40), appends, st.lists(st.tuples(st.integers(-1, 100), st.integers(0, 50)), max_size=5))
def test_compiled_and_python_rings_agree(capacity, max_events, sequence, reads):
    """Random appends and reads give the same results and the very same bytes on both implementations."""
    from fastws import _core

    rings = [impl.RingBuffer.create(capacity, max_events, epoch="0123456789abcdef") for impl in (_core, _core_py)]
    for offset, (size, name, priority, target) in enumerate(sequence, start=1):
        frame = bytes([offset % 251]) * size
        results = [ring.append(offset, frame, name, "src", priority, "pub", target) for ring in rings]
        assert results[0] == results[1]
        assert rings[0].buffer == rings[1].buffer
    for since, limit in reads:
        assert rings[0].read(since, limit) == rings[1].read(since, limit)
        assert rings[0].covers(since) == rings[1].covers(since)
    assert [len(r) for r in rings][0] == len(rings[1])
