"""Per-channel message history for recovery, sans I/O.

Each channel has a stream: a RingBuffer (compiled or twin, see core.py)
holding its recent events as encoded frames, numbered by offset, named by an
epoch. Streams start small and double up to the per-channel bounds; the sum
of all streams is bounded too, and past it the least recently published
channels lose their whole stream (their next stream gets a new epoch, so a
client resuming from the old one is told it must resync).

Invariants:

1. Offsets of a stream are consecutive from 1; ``since`` is exclusive.
2. A stream's epoch never repeats: it is random, chosen when the stream starts.
3. ``position()`` creates the stream if needed, so the (epoch, offset) a client
   is given on subscribe is the one its later resume is checked against.
"""

from __future__ import annotations

from typing import Iterator

from .config import Limits
from .core import RingBuffer, frame_event

__all__ = ["History", "payload_of"]

_INITIAL_CAPACITY = 4096
_INITIAL_EVENTS = 32
# record header: priority and four name lengths (see _core_py.RingBuffer)
_RECORD_OVERHEAD = 5

Record = tuple[int, str, str, int, str, "str | None", bytes]


def payload_of(frame: bytes) -> bytes:
    """The JSON inside a server text frame built by core.frame_text."""
    length = frame[1] & 0x7F
    return frame[2:] if length < 126 else frame[4:] if length == 126 else frame[10:]


class History:
    """Every channel's stream, bounded per channel and in total."""

    def __init__(self, limits: Limits) -> None:
        self.max_events = limits.history_size
        self.max_bytes = limits.history_bytes
        self.max_total_bytes = limits.history_total_bytes
        # channel -> ring, least recently appended first
        self._rings: dict[str, RingBuffer] = {}
        self._total_bytes = 0

    def __len__(self) -> int:
        """Events held across all channels."""
        return sum(len(ring) for ring in self._rings.values())

    def __contains__(self, channel: str) -> bool:
        return channel in self._rings

    def channels(self) -> Iterator[str]:
        return iter(self._rings)

    @property
    def nbytes(self) -> int:
        """Bytes of all rings' layouts (what the bounds count)."""
        return self._total_bytes

    # -- positions ------------------------------------------------------------------

    def _ring(self, channel: str) -> RingBuffer:
        ring = self._rings.get(channel)
        if ring is None:
            ring = RingBuffer.create(
                min(_INITIAL_CAPACITY, self.max_bytes), min(_INITIAL_EVENTS, self.max_events)
            )
            self._rings[channel] = ring
            self._total_bytes += len(ring.buffer)
            self._enforce_total(keep=channel)
        return ring

    def position(self, channel: str) -> tuple[str, int]:
        """(epoch, last offset) of a channel's stream, starting the stream if needed."""
        ring = self._ring(channel)
        return ring.epoch, ring.last_offset

    def next_offset(self, channel: str) -> int:
        return self._ring(channel).next_offset

    # -- writing --------------------------------------------------------------------

    def sequence(
        self, channel: str, payload: bytes, event_type: str, source: str, priority: int, publisher: str, target: str | None
    ) -> tuple[int, bytes]:
        """Number an event of ``channel`` and keep it; (offset, frame). The Broker seam (fastws.broker)."""
        offset = self._ring(channel).next_offset
        frame = frame_event(payload, offset)
        self.append(channel, offset, frame, event_type, source, priority, publisher, target)
        return offset, frame

    def append(
        self,
        channel: str,
        offset: int,
        frame: bytes,
        event_type: str,
        source: str,
        priority: int,
        publisher: str,
        target: str | None,
    ) -> None:
        """Store event ``offset`` (the channel's next offset) of ``channel``."""
        rings = self._rings
        ring = rings.pop(channel, None)
        if ring is None:
            ring = self._ring(channel)
        else:
            rings[channel] = ring  # most recently appended last
        size = _RECORD_OVERHEAD + len(event_type) + len(source) + len(publisher) + len(target or "") + len(frame)
        if (len(ring) >= ring.max_events and ring.max_events < self.max_events) or (
            ring.nbytes + size > ring.capacity and ring.capacity < self.max_bytes
        ):
            ring = self._grow(channel, ring, size)
        ring.append(offset, frame, event_type, source, priority, publisher, target)

    def _grow(self, channel: str, ring: RingBuffer, size: int) -> RingBuffer:
        capacity, events = ring.capacity, ring.max_events
        if len(ring) >= events:
            events = min(events * 2, self.max_events)
        # Grow by a quarter (at least what this event needs): a full stream
        # holds at most 1.25x its events' bytes; copying while it fills costs
        # a few times its size, once.
        if ring.nbytes + size > capacity:
            capacity = min(max(capacity + capacity // 4, ring.nbytes + size), self.max_bytes)
        grown = RingBuffer.create(capacity, events, epoch=ring.epoch, next_offset=ring.first_offset)
        for record in ring.read(0, len(ring)):
            offset, event_type, source, priority, publisher, target, frame = record
            grown.append(offset, frame, event_type, source, priority, publisher, target)
        self._rings[channel] = grown
        self._total_bytes += len(grown.buffer) - len(ring.buffer)
        self._enforce_total(keep=channel)
        return grown

    def _enforce_total(self, keep: str) -> None:
        """Drop whole streams, least recently appended first, until under the total bound."""
        rings = self._rings
        if self._total_bytes <= self.max_total_bytes:
            return
        for name in list(rings):
            if name != keep:
                self._total_bytes -= len(rings.pop(name).buffer)
                if self._total_bytes <= self.max_total_bytes:
                    return

    # -- reading --------------------------------------------------------------------

    def read(self, channel: str, since: int, limit: int) -> tuple[str, int, list[Record]]:
        """(epoch, last offset, up to ``limit`` records after ``since``) of a channel."""
        ring = self._ring(channel)
        return ring.epoch, ring.last_offset, ring.read(since, limit)

    def recover(self, channel: str, epoch: str | None, since: int) -> tuple[bool, str, int, list[Record]]:
        """Everything after ``since`` if the stream still has it all: (recovered, epoch, last offset, records)."""
        ring = self._ring(channel)
        if epoch != ring.epoch or not ring.covers(since):
            return False, ring.epoch, ring.last_offset, []
        return True, ring.epoch, ring.last_offset, ring.read(since, ring.last_offset - since)

