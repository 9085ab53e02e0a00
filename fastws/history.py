"""Per-channel message history for recovery, sans I/O.

Each channel has a stream: a RingBuffer (compiled or twin, see core.py)
holding its recent events as encoded frames, numbered by offset, named by an
epoch. Streams start small and double up to the per-channel bounds; the sum
of all streams is bounded too, and past it the least recently published
channels lose their whole stream (their next stream gets a new epoch, so a
client resuming from the old one is told it must resync).

A stream is counted as its ring's bytes plus ``STREAM_OVERHEAD``, what
keeping it costs beyond them: the objects, the dict entry and the name. With
names of about 22 characters, tracemalloc measures 261 bytes of such overhead
for a ring of the compiled core and 585 for one of the twin (rings start at
1,232 bytes, so a one-event stream costs 1,493 and 1,817 bytes in all; 4,949
and 5,305 when rings started at 4,688), and 252 bytes for a replica of the
shared log (fastws.broker; 1,097 when a replica held a deque). 384 covers the
compiled ring and the replica with names up to the longest (129 characters,
about 110 bytes more). So the total bound holds for many tiny streams as for
a few large ones: with the defaults, 256 MiB is at most about 166,000 streams
here, and about 420,000 replicas of streams of one small event.

Invariants:

1. Offsets of a stream are consecutive from 1; ``since`` is exclusive.
2. A stream's epoch never repeats: it is random, chosen when the stream starts.
3. ``position()`` creates the stream if needed, so the (epoch, offset) a client
   is given on subscribe is the one its later resume is checked against;
   except when the tenant already has ``max_channels_per_tenant`` streams:
   then the position given is not kept (a fresh epoch, offset 0), so a resume
   from it is refused, never silently wrong.
4. A tenant gets a new stream by publishing only while it has fewer than
   ``max_channels_per_tenant``: ``admit()`` refuses the rest
   (too_many_channels), for a whole batch at once.
"""

from __future__ import annotations

from typing import Collection, Iterable, Iterator

from . import codes
from .config import Limits
from .core import RingBuffer, frame_event, new_epoch
from .exceptions import ProtocolError

__all__ = ["History", "STREAM_OVERHEAD", "TenantStreams", "payload_of", "tenant_of"]

#: bytes a stream is counted for beyond its events (see the module docstring)
STREAM_OVERHEAD = 384
_INITIAL_CAPACITY = 1024
_INITIAL_EVENTS = 8
# record header: priority and four name lengths (see _core_py.RingBuffer)
_RECORD_OVERHEAD = 5

Record = tuple[int, str, str, int, str, "str | None", bytes]


def payload_of(frame: bytes) -> bytes:
    """The JSON inside a server text frame built by core.frame_text."""
    length = frame[1] & 0x7F
    return frame[2:] if length < 126 else frame[4:] if length == 126 else frame[10:]


def tenant_of(channel: str) -> str:
    """The tenant of a canonical channel name ``NAME:TENANT``."""
    return channel.rpartition(":")[2]


def low_water(total: int) -> int:
    """Where eviction stops once the total bound is passed: a sixteenth below it, so streams are
    dropped in batches (one pass over the oldest) rather than one per new stream."""
    return total - total // 16


class TenantStreams:
    """How many streams each tenant has, and the per-tenant cap on new ones."""

    __slots__ = ("counts", "limit")

    def __init__(self, limit: int) -> None:
        self.counts: dict[str, int] = {}
        self.limit = limit

    def add(self, channel: str) -> None:
        tenant_id = tenant_of(channel)
        self.counts[tenant_id] = self.counts.get(tenant_id, 0) + 1

    def remove(self, channel: str) -> None:
        tenant_id = tenant_of(channel)
        count = self.counts[tenant_id] - 1
        if count:
            self.counts[tenant_id] = count
        else:
            del self.counts[tenant_id]

    def full(self, channel: str) -> bool:
        """True when the channel's tenant may not start another stream."""
        return self.counts.get(tenant_of(channel), 0) >= self.limit

    def admit(self, tenant_id: str, streams: Collection[str], channels: Iterable[str]) -> None:
        """Raise too_many_channels unless the tenant may start a stream for each of ``channels``
        (distinct names) that is not in ``streams``."""
        new = 0
        for channel in channels:
            if channel not in streams:
                new += 1
        if new and self.counts.get(tenant_id, 0) + new > self.limit:
            raise ProtocolError(
                codes.TOO_MANY_CHANNELS,
                f"the tenant has {self.counts.get(tenant_id, 0)} channels with history, at most {self.limit}",
            )


class History:
    """Every channel's stream, bounded per channel and in total."""

    def __init__(self, limits: Limits) -> None:
        self.max_events = limits.history_size
        self.max_bytes = limits.history_bytes
        self.max_total_bytes = limits.history_total_bytes
        # channel -> ring, least recently appended first
        self._rings: dict[str, RingBuffer] = {}
        self._total_bytes = 0
        #: events held, over all rings
        self._events = 0
        self.tenants = TenantStreams(limits.max_channels_per_tenant)

    def __len__(self) -> int:
        """Events held across all channels (kept as a count: the status API asks every second)."""
        return self._events

    def __contains__(self, channel: str) -> bool:
        return channel in self._rings

    def channels(self) -> Iterator[str]:
        return iter(self._rings)

    @property
    def nbytes(self) -> int:
        """Bytes counted against the total bound: every ring's layout, plus STREAM_OVERHEAD each."""
        return self._total_bytes

    def admit(self, tenant_id: str, channels: Iterable[str]) -> None:
        """Raise too_many_channels (before anything is published) unless the tenant may start the
        streams that publishing to ``channels`` (distinct names) would start."""
        self.tenants.admit(tenant_id, self._rings, channels)

    # -- positions ------------------------------------------------------------------

    def _ring(self, channel: str) -> RingBuffer:
        ring = self._rings.get(channel)
        if ring is None:
            ring = RingBuffer.create(
                min(_INITIAL_CAPACITY, self.max_bytes), min(_INITIAL_EVENTS, self.max_events)
            )
            self._rings[channel] = ring
            self.tenants.add(channel)
            self._total_bytes += len(ring.buffer) + STREAM_OVERHEAD
            self._enforce_total(keep=channel)
        return ring

    def _ring_to_read(self, channel: str) -> RingBuffer | None:
        """The channel's ring, started if needed; None if its tenant may not start another."""
        ring = self._rings.get(channel)
        if ring is None and not self.tenants.full(channel):
            ring = self._ring(channel)
        return ring

    def position(self, channel: str) -> tuple[str, int]:
        """(epoch, last offset) of a channel's stream, starting the stream if needed (invariant 3)."""
        ring = self._ring_to_read(channel)
        if ring is None:
            return new_epoch(), 0
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
        held = len(ring)
        ring.append(offset, frame, event_type, source, priority, publisher, target)
        self._events += len(ring) - held

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
        """Past the total bound, drop whole streams, least recently appended first (never ``keep``),
        down to the low-water mark."""
        if self._total_bytes <= self.max_total_bytes:
            return
        rings = self._rings
        target = low_water(self.max_total_bytes)
        total = self._total_bytes
        victims = []
        for name, ring in rings.items():
            if total <= target or name == keep:
                break
            victims.append(name)
            total -= len(ring.buffer) + STREAM_OVERHEAD
        for name in victims:
            self._events -= len(rings.pop(name))
            self.tenants.remove(name)
        self._total_bytes = total

    # -- reading --------------------------------------------------------------------

    def read(self, channel: str, since: int, limit: int) -> tuple[str, int, list[Record]]:
        """(epoch, last offset, up to ``limit`` records after ``since``) of a channel; reading never
        starts a stream (a channel without one answers a fresh epoch, offset 0 and no records)."""
        ring = self._rings.get(channel)
        if ring is None:
            return new_epoch(), 0, []
        return ring.epoch, ring.last_offset, ring.read(since, limit)

    def recover(self, channel: str, epoch: str | None, since: int) -> tuple[bool, str, int, list[Record]]:
        """Everything after ``since`` if the stream still has it all: (recovered, epoch, last offset, records)."""
        ring = self._ring_to_read(channel)
        if ring is None:
            return False, new_epoch(), 0, []
        if epoch != ring.epoch or not ring.covers(since):
            return False, ring.epoch, ring.last_offset, []
        return True, ring.epoch, ring.last_offset, ring.read(since, ring.last_offset - since)
