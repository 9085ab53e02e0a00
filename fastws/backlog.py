"""Backlogs: what a slow connection still owes, bounded per connection and per worker.

A connection whose transport pushes back (its peer reads slower than events
arrive) queues frames in a ``Backlog``: one FIFO per priority, each entry
numbered so that the frames go out in the order they were queued once the
transport drains. Past ``limit`` bytes the backlog sheds, lowest priority and
oldest first, down to a low-water mark (three quarters of the limit), so a
connection that stays slow sheds once per quarter of its limit, not once per
event: every event is queued once and dropped at most once, O(1) each. What
was dropped is remembered per channel (first offset, last offset, count) for
the ``missed`` notice. Replies and notices (``NEVER_DROP``) and critical
events are never dropped; when they alone overflow the limit, the connection
must be closed (4008).

A ``Budget`` bounds the bytes queued by all the backlogs of a worker. Past it,
the connections holding the most shed first, then, if that is not enough,
are closed (4008), down to the budget's low-water mark.

Sans-I/O: nothing here writes, closes or knows about asyncio; the WebSocket
adapter (fastws.server.websocket) does, from what these classes answer.
"""

from __future__ import annotations

from collections import deque
from heapq import merge
from typing import Iterable, Iterator

__all__ = ["Backlog", "Budget", "NEVER_DROP", "DROPPABLE"]

#: the priority rank of replies and notices: above critical, never dropped
NEVER_DROP = 4
#: priority ranks that may be dropped, in the order they are: low, normal, high
DROPPABLE = (0, 1, 2)


def low_water(limit: int) -> int:
    """Where shedding stops once it has started (hysteresis)."""
    return limit - limit // 4


class Backlog:
    """Frames waiting for one connection's transport, by priority (see the module docstring)."""

    __slots__ = ("_queues", "_seq", "nbytes", "missed", "critical")

    def __init__(self) -> None:
        # entries (sequence, frame, channel, offset); one deque per rank: low, normal, high, critical, never-drop
        self._queues: tuple[deque, ...] = (deque(), deque(), deque(), deque(), deque())
        self._seq = 0
        #: bytes queued
        self.nbytes = 0
        #: per channel [first, last, count] of events dropped since the client was last told
        self.missed: dict[str, list[int]] = {}
        #: critical events queued
        self.critical = 0

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues)

    def add(self, frame: bytes, priority: int, channel: str, offset: int) -> None:
        self._seq += 1
        self._queues[priority].append((self._seq, frame, channel, offset))
        self.nbytes += len(frame)
        if priority == 3:
            self.critical += 1

    def shed(self, target: int, drops: list[int]) -> int:
        """Drop droppable events, lowest priority and oldest first, until at most ``target`` bytes
        are queued (or none is left to drop); count them in ``drops`` by rank; the bytes freed."""
        before = self.nbytes
        missed = self.missed
        for rank in DROPPABLE:
            queue = self._queues[rank]
            while queue and self.nbytes > target:
                _, frame, channel, offset = queue.popleft()
                self.nbytes -= len(frame)
                drops[rank] += 1
                window = missed.get(channel)
                if window is None:
                    missed[channel] = [offset, offset, 1]
                else:
                    if offset < window[0]:
                        window[0] = offset
                    if offset > window[1]:
                        window[1] = offset
                    window[2] += 1
            if self.nbytes <= target:
                break
        return before - self.nbytes

    def droppable_bytes(self) -> int:
        return sum(len(entry[1]) for rank in DROPPABLE for entry in self._queues[rank])

    def missed_notice(self) -> dict | None:
        """The ``missed`` message for what was dropped (None if nothing was); forgets it."""
        if not self.missed:
            return None
        missed, self.missed = self.missed, {}
        return {"type": "missed", "count": sum(m[2] for m in missed.values()),
                "channels": {ch: {"first": m[0], "last": m[1], "count": m[2]} for ch, m in missed.items()}}

    def drain(self) -> Iterator[bytes]:
        """Every queued frame, in the order queued (by sequence, across priorities); empties the backlog."""
        queues = self._queues
        self._queues = (deque(), deque(), deque(), deque(), deque())
        self.nbytes = 0
        self.critical = 0
        nonempty: list[Iterable] = [q for q in queues if q]
        entries = nonempty[0] if len(nonempty) == 1 else merge(*nonempty)
        return (entry[1] for entry in entries)


class Budget:
    """Bytes queued by all the backlogs of a worker, against a limit (see the module docstring)."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    @property
    def over(self) -> bool:
        return self.used > self.limit

    def plan(self, holders: Iterable[tuple[int, int, object]]) -> tuple[list[tuple[object, int]], list[object]]:
        """Which holders to shed (holder, target bytes) and which to close, to bring ``used`` down to the
        low-water mark; ``holders`` are (bytes queued, droppable bytes, holder). Largest first: each
        sheds all it can before any is closed."""
        excess = self.used - low_water(self.limit)
        ranked = sorted(holders, key=lambda h: h[0], reverse=True)
        shed: list[tuple[object, int]] = []
        remaining: list[tuple[int, object]] = []
        for nbytes, droppable, holder in ranked:
            take = min(droppable, max(excess, 0))
            if take:
                shed.append((holder, nbytes - take))
                excess -= take
            remaining.append((nbytes - take, holder))
        close: list[object] = []
        for nbytes, holder in remaining:
            if excess <= 0:
                break
            close.append(holder)
            excess -= nbytes
        return shed, close
