"""Pure-Python twin of :mod:`fastws._core`: the same API and behaviour.

It is the reference the compiled module is tested against, and the fallback
when the extension is not built (or ``FASTWS_NO_EXTENSIONS=1``). The algorithm
is the same as the compiled one: dict and set indexes, no linear scans over
all connections.
"""

from __future__ import annotations

import os
import struct
from typing import Iterable

__all__ = ["IMPLEMENTATION", "frame_text", "frame_event", "CloseScanner", "Matcher", "RingBuffer", "new_epoch"]

IMPLEMENTATION = "python"

_ANY = None


def frame_text(payload: bytes) -> bytes:
    """A complete, unmasked server->client WebSocket text frame (FIN set) carrying ``payload``."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return bytes((0x81, 126, size >> 8, size & 0xFF)) + payload
    return b"\x81\x7f" + size.to_bytes(8, "big") + payload


def frame_event(payload: bytes, offset: int) -> bytes:
    """The frame of an event: ``payload`` (a JSON object) with ``"offset":N`` added as its last key."""
    if not payload.endswith(b"}") or offset < 0:
        raise ValueError("payload must be a JSON object and offset non-negative")
    body = payload[:-1] + (b',"offset":%d}' % offset if len(payload) > 2 else b'"offset":%d}' % offset)
    return frame_text(body)


class CloseScanner:
    """Follows frame boundaries in a client's byte stream to find where its first CLOSE frame ends.

    ``scan(data)`` is given each chunk as it arrives and answers how many of
    its bytes to pass on: all of them, or those up to the end of the first
    CLOSE frame, after which ``done`` is set and nothing more is to be
    processed (RFC 6455 5.5.1). Only the headers are read: payloads are
    skipped by their length, so the cost is per frame, not per byte.
    """

    __slots__ = ("_header", "_remaining", "_close", "done")

    def __init__(self) -> None:
        self._header = b""  # an unfinished frame header (at most 14 bytes)
        self._remaining = 0  # payload bytes of the current frame still to come
        self._close = False  # the current frame is a CLOSE
        self.done = False  # a whole CLOSE frame has been passed on

    def scan(self, data: bytes | bytearray | memoryview) -> int:
        if self.done:
            return 0
        size = len(data)
        at = 0
        while at < size:
            if self._remaining:
                step = min(self._remaining, size - at)
                at += step
                self._remaining -= step
            else:
                header = self._header
                need = 2
                if len(header) >= 2:
                    length = header[1] & 0x7F
                    need += (2 if length == 126 else 8 if length == 127 else 0) + (4 if header[1] & 0x80 else 0)
                if len(header) < need:
                    take = min(need - len(header), size - at)
                    header = self._header = header + bytes(data[at:at + take])
                    at += take
                    if len(header) < need or need == 2:
                        continue  # more header to come (or its length bytes now known: loop again)
                length = header[1] & 0x7F
                if length == 126:
                    length = int.from_bytes(header[2:4], "big")
                elif length == 127:
                    length = int.from_bytes(header[2:10], "big")
                self._close = header[0] & 0x0F == 0x8
                self._remaining = length
                self._header = b""
            if not self._remaining and not self._header and self._close:
                self.done = True
                return at
        return size


class Matcher:
    """Who receives an event: channel subscriptions and per-connection filters.

    Connections are small integers chosen by the caller. A connection receives
    an event published on channel C when it is subscribed to C, the event type
    is in the subscription's event types (if it has any), the event passes the
    connection's filters (event types, sources, priorities, publisher users:
    each non-empty set must contain the event's value), and, for an event
    targeted at one user, the connection belongs to that user.
    """

    __slots__ = ("_channels", "_filters", "_users", "_subscriptions", "_by_user")

    def __init__(self) -> None:
        # channel -> {connection: subscription event types or None}
        self._channels: dict[str, dict[int, frozenset[str] | None]] = {}
        # connection -> (event_types, sources, priorities, users); absent: no filters
        self._filters: dict[int, tuple[frozenset[str], frozenset[str], frozenset[int], frozenset[str]]] = {}
        self._users: dict[int, str] = {}
        self._subscriptions: dict[int, set[str]] = {}
        # user -> connections, for targeted events
        self._by_user: dict[str, set[int]] = {}

    # -- connections -----------------------------------------------------------

    def add(self, connection: int, user_id: str) -> None:
        if connection in self._users:
            raise KeyError(f"connection {connection} already added")
        self._users[connection] = user_id
        self._subscriptions[connection] = set()
        self._by_user.setdefault(user_id, set()).add(connection)

    def remove(self, connection: int) -> None:
        user_id = self._users.pop(connection)
        for channel in self._subscriptions.pop(connection):
            subscribers = self._channels[channel]
            del subscribers[connection]
            if not subscribers:
                del self._channels[channel]
        self._filters.pop(connection, None)
        same_user = self._by_user[user_id]
        same_user.discard(connection)
        if not same_user:
            del self._by_user[user_id]

    def __contains__(self, connection: int) -> bool:
        return connection in self._users

    def __len__(self) -> int:
        return len(self._users)

    def set_filters(
        self,
        connection: int,
        event_types: Iterable[str] = (),
        sources: Iterable[str] = (),
        priorities: Iterable[int] = (),
        users: Iterable[str] = (),
    ) -> None:
        if connection not in self._users:
            raise KeyError(connection)
        priorities = frozenset(priorities)
        if any(not 0 <= p <= 7 for p in priorities):
            raise ValueError("priorities are ranks 0-7")
        compiled = (frozenset(event_types), frozenset(sources), priorities, frozenset(users))
        if any(compiled):
            self._filters[connection] = compiled
        else:
            self._filters.pop(connection, None)

    # -- subscriptions ---------------------------------------------------------

    def subscribe(self, connection: int, channel: str, event_types: Iterable[str] | None = None) -> bool:
        """Subscribe (or replace the subscription's event types). True if it is new."""
        channels = self._subscriptions[connection]
        types = frozenset(event_types) if event_types else _ANY
        self._channels.setdefault(channel, {})[connection] = types
        if channel in channels:
            return False
        channels.add(channel)
        return True

    def unsubscribe(self, connection: int, channel: str) -> bool:
        """Unsubscribe. True if the connection was subscribed."""
        channels = self._subscriptions[connection]
        if channel not in channels:
            return False
        channels.remove(channel)
        subscribers = self._channels[channel]
        del subscribers[connection]
        if not subscribers:
            del self._channels[channel]
        return True

    def subscriptions(self, connection: int) -> list[str]:
        return sorted(self._subscriptions[connection])

    def subscription_count(self, connection: int) -> int:
        return len(self._subscriptions[connection])

    def channels(self) -> list[str]:
        return list(self._channels)

    def subscriber_count(self, channel: str) -> int:
        subscribers = self._channels.get(channel)
        return 0 if subscribers is None else len(subscribers)

    # -- matching --------------------------------------------------------------

    def match(
        self,
        channel: str,
        event_type: str,
        source: str,
        priority: int,
        publisher: str,
        target_user: str | None = None,
    ) -> list[int]:
        """The connections that receive this event, in no particular order."""
        subscribers = self._channels.get(channel)
        if not subscribers:
            return []
        filters = self._filters
        if target_user is not None:
            candidates = self._by_user.get(target_user)
            if not candidates:
                return []
            if len(candidates) < len(subscribers):
                pairs = [(c, subscribers[c]) for c in candidates if c in subscribers]
            else:
                users = self._users
                pairs = [(c, t) for c, t in subscribers.items() if users[c] == target_user]
        else:
            pairs = subscribers.items()  # type: ignore[assignment]
        matched = []
        for connection, types in pairs:
            if types is not None and event_type not in types:
                continue
            compiled = filters.get(connection)
            if compiled is not None:
                event_types, sources, priorities, users = compiled
                if (
                    (event_types and event_type not in event_types)
                    or (sources and source not in sources)
                    or (priorities and priority not in priorities)
                    or (users and publisher not in users)
                ):
                    continue
            matched.append(connection)
        return matched


# -- history -------------------------------------------------------------------------

# A RingBuffer is one flat buffer, so it can live in shared memory:
#
#   header  80 bytes   magic "FWRB", version, capacity, max_events, first_offset,
#                      next_offset, head, tail, count (all u64 but version), epoch (16 ASCII bytes)
#   index   16 bytes a slot, max_events slots: (position u64, length u32, 0 u32) of
#           offset o at slot (o - 1) % max_events
#   data    capacity bytes, records placed contiguously; a record that would
#           cross the end starts again at 0 (the gap counts as used)
#
# Positions are virtual (they only grow); a position p lives at byte p % capacity.
# A record: priority u8, the lengths (u8) of event type, source, publisher and
# target user (0: none), those four strings, then the event's frame.

_HEADER = struct.Struct("<4sHHQQQQQQQ16s")
_SLOT = struct.Struct("<QII")
_META = struct.Struct("<BBBBB")
_MAGIC = b"FWRB"
_VERSION = 1
HEADER_SIZE = _HEADER.size  # 80


def new_epoch() -> str:
    """A random stream epoch: 16 hex characters, never a counter that repeats after a restart."""
    return os.urandom(8).hex()


class RingBuffer:
    """One channel's recent events, bounded by count and by bytes, numbered by offset.

    Offsets start at 1 and grow by one per event; ``since`` is exclusive. The
    epoch names the stream: a reader whose epoch differs has lost continuity.
    """

    __slots__ = ("_buffer", "_view", "_capacity", "_max_events", "_index", "_data")

    def __init__(self, buffer, capacity: int | None = None, max_events: int | None = None,
                 epoch: str | None = None, next_offset: int = 1) -> None:
        view = memoryview(buffer).cast("B")
        if view.readonly:
            raise ValueError("the buffer must be writable")
        if capacity is not None:
            if max_events is None or capacity <= 0 or max_events <= 0 or next_offset < 1:
                raise ValueError("capacity and max_events must be positive, next_offset at least 1")
            if len(view) < self.layout_size(capacity, max_events):
                raise ValueError("the buffer is smaller than the layout")
            epoch_bytes = (epoch or new_epoch()).encode("ascii")
            if len(epoch_bytes) != 16:
                raise ValueError("an epoch is 16 ASCII characters")
            _HEADER.pack_into(view, 0, _MAGIC, _VERSION, 0, capacity, max_events,
                              next_offset, next_offset, 0, 0, 0, epoch_bytes)
        magic, version, _, capacity, max_events = _HEADER.unpack_from(view, 0)[:5]
        if magic != _MAGIC or version != _VERSION:
            raise ValueError("not a fastws ring buffer (or another layout version)")
        if len(view) < self.layout_size(capacity, max_events):
            raise ValueError("the buffer is smaller than its layout")
        self._buffer = buffer
        self._view = view
        self._capacity = capacity
        self._max_events = max_events
        self._index = HEADER_SIZE
        self._data = HEADER_SIZE + _SLOT.size * max_events

    @staticmethod
    def layout_size(capacity: int, max_events: int) -> int:
        return HEADER_SIZE + _SLOT.size * max_events + capacity

    @classmethod
    def create(cls, capacity: int, max_events: int, epoch: str | None = None, next_offset: int = 1) -> "RingBuffer":
        return cls(bytearray(cls.layout_size(capacity, max_events)), capacity, max_events, epoch, next_offset)

    # -- header fields ------------------------------------------------------------------

    def _get(self, offset: int) -> int:
        return int.from_bytes(self._view[offset:offset + 8], "little")

    def _set(self, offset: int, value: int) -> None:
        self._view[offset:offset + 8] = value.to_bytes(8, "little")

    @property
    def buffer(self):
        return self._buffer

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def max_events(self) -> int:
        return self._max_events

    @property
    def epoch(self) -> str:
        return bytes(self._view[64:80]).decode("ascii")

    @property
    def first_offset(self) -> int:
        """The oldest offset held (equal to next_offset when empty)."""
        return self._get(24)

    @property
    def next_offset(self) -> int:
        return self._get(32)

    @property
    def last_offset(self) -> int:
        """The newest offset given out (0 before the first event)."""
        return self._get(32) - 1

    def __len__(self) -> int:
        return self._get(56)

    @property
    def nbytes(self) -> int:
        """Data bytes in use, gaps at the wrap included."""
        return self._get(48) - self._get(40)

    def covers(self, since: int) -> bool:
        """True when every event after ``since`` is still here (nothing missed, nothing from the future)."""
        return self._get(24) - 1 <= since <= self._get(32) - 1

    # -- writing ------------------------------------------------------------------------

    def _slot(self, offset: int) -> int:
        return self._index + _SLOT.size * ((offset - 1) % self._max_events)

    def _evict_oldest(self) -> None:
        first = self._get(24)
        count = self._get(56) - 1
        self._set(24, first + 1)
        self._set(56, count)
        if count:
            self._set(40, _SLOT.unpack_from(self._view, self._slot(first + 1))[0])
        else:
            self._set(40, self._get(48))

    def append(self, offset: int, frame: bytes, event_type: str, source: str, priority: int,
               publisher: str, target: str | None = None) -> bool:
        """Store event ``offset`` (which must be next_offset); False if it is larger than the whole ring."""
        if offset != self._get(32):
            raise ValueError(f"offset {offset} is not the next offset {self._get(32)}")
        strings = [s.encode() for s in (event_type, source, publisher, target or "")]
        if any(len(b) > 255 for b in strings) or not 0 <= priority <= 255:
            raise ValueError("names are at most 255 bytes, priority a byte")
        length = _META.size + sum(map(len, strings)) + len(frame)
        capacity = self._capacity
        if length > capacity:
            # It can never be held: the history now starts after it.
            tail = self._get(48)
            self._set(24, offset + 1)
            self._set(40, tail)
            self._set(56, 0)
            self._set(32, offset + 1)
            return False
        if self._get(56) == self._max_events:
            self._evict_oldest()
        start = self._get(48)
        if start % capacity + length > capacity:
            start += capacity - start % capacity
        while self._get(56) and start + length - self._get(40) > capacity:
            self._evict_oldest()
        if not self._get(56):
            self._set(24, offset)
            self._set(40, start)
        # Readers take no lock (read): what they may be copying is evicted (first offset moved
        # past it) before a byte of it is overwritten, and the record is published (next) last.
        at = self._data + start % capacity
        view = self._view
        _META.pack_into(view, at, priority, *map(len, strings))
        at += _META.size
        for part in strings:
            view[at:at + len(part)] = part
            at += len(part)
        view[at:at + len(frame)] = frame
        _SLOT.pack_into(view, self._slot(offset), start, length, 0)
        self._set(48, start + length)
        self._set(56, self._get(56) + 1)
        self._set(32, offset + 1)
        return True

    # -- reading ------------------------------------------------------------------------

    def read(self, since: int, limit: int) -> list[tuple[int, str, str, int, str, str | None, bytes]]:
        """Up to ``limit`` events after ``since``, oldest first, as
        (offset, event_type, source, priority, publisher, target, frame), without a lock.

        A writer may be appending meanwhile, in this or another process: the records
        are copied first, then the first offset is read again, and any record it has
        moved past (so perhaps overwritten while being copied) is left out. So the
        events returned start later than ``since + 1`` when some were lost to the reader.
        """
        stop = self._get(32)
        first = max(since + 1, self._get(24))
        stop = min(stop, first + max(limit, 0))
        view = self._view
        capacity = self._capacity
        raw = []
        for offset in range(first, stop):
            position, length, _ = _SLOT.unpack_from(view, self._slot(offset))
            if length < _META.size or position % capacity + length > capacity:
                break  # being overwritten: the check below leaves it out
            at = self._data + position % capacity
            raw.append(bytes(view[at:at + length]))
        valid = self._get(24)
        events = []
        for offset, record in enumerate(raw, first):
            if offset < valid:
                continue
            priority, *lengths = _META.unpack_from(record, 0)
            if _META.size + sum(lengths) > len(record):
                raise ValueError(f"record {offset} of the ring is corrupt")
            at = _META.size
            names = []
            for size in lengths:
                names.append(record[at:at + size].decode())
                at += size
            events.append((offset, names[0], names[1], priority, names[2], names[3] or None, record[at:]))
        return events
