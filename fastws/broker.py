"""Brokers: where events are numbered, kept, and carried to other workers.

The Hub hands every event to its broker's ``sequence()``, which gives it its
channel offset and frame, keeps it in history, and makes sure every other
worker's hub will deliver it too. Two brokers share that seam (Redis will be
a third):

- ``History`` (fastws.history): one process. Sequencing and history are local.
- ``SharedBroker``: several workers on one host, sharing one memory segment.

SharedBroker: theory of operation
---------------------------------

The segment (a file in /dev/shm, created by the supervisor, mapped by every
worker) holds the control plane and one RingBuffer used as a **shared log**:
every event of every channel is a record in it, in one total order. The log
is at once the sequencer, the history and the bus.

1. Appending takes the writers' lock, an exclusive ``fcntl`` lock on the
   segment's file (``WriterLock``). A worker killed while holding it loses it
   with its process (the kernel releases record locks), so a ``kill -9`` never
   wedges the others. A writer waits only for another writer, and never for a
   stopped one: after ``LOCK_LEASE`` it looks the holder up (``F_GETLK``) and,
   if that process is stopped (SIGSTOP, a debugger), kills it; the supervisor
   replaces it like any crashed worker, and its clients reconnect and recover.
   A record is visible only once complete (the ring publishes its next offset
   after it).
2. Before appending, the writer applies every record it has not seen yet.
   Each worker keeps, per channel, a replica of the stream's state (epoch,
   last offset, where its recent events sit in the log) built only from the
   log, so the writer numbers the event ``last + 1`` with the state every
   worker will reach at that point of the log.
3. A channel's stream starts with a START record carrying a random epoch,
   written under the lock by the first worker that needs the stream's
   position; so every worker hands out the same epoch.
4. Workers apply records in log order, delivering other workers' events to
   their local connections; the writer delivers its own at once. So every
   subscriber of a channel, on any worker, sees its events in offset order.
5. Readers take no lock: a stopped or slow reader never delays a writer.
   They copy records, then check that the log's first offset has not moved
   past them (a writer moves it before overwriting a byte: RingBuffer.read);
   a record overwritten while being copied is left out. A worker that falls
   so far behind that the log has wrapped past it (it was stopped, say)
   counts the lost records, forgets its replicas (``_forget_all``) and
   closes its clients with 4009: they reconnect (to any worker) and recover
   from their last (offset, epoch) what history still holds, or are told
   ``recovered:false``. Nothing is lost silently; no other worker waits.
6. After appending, the writer wakes the other workers (an eventfd each,
   written once per loop iteration). A worker that starts (or restarts)
   rebuilds its replicas from the whole log before serving, so history and
   recovery work on any worker.
7. Replicas are bounded like a History: each is counted as the bytes of the
   records it keeps positions of plus ``STREAM_OVERHEAD`` (fastws.history),
   and past ``history_total_bytes`` the least recently published are
   forgotten, down to a sixteenth below it; their next event starts a new
   stream (new epoch), so a client resuming from the old one is answered
   ``recovered:false``, never a silent gap. A replica is an ``array('Q')``
   (``_new_stream``): no object per event and none per stream beyond it.
8. Every decision about replicas is a function of the records applied, in
   log order, and nothing else (not of when they are applied: a replica
   whose records have wrapped out of the log is kept until the bound drops
   it, and recovery then finds the records gone). So workers that applied
   the same records keep the same replicas, and the writer's numbering is the
   one every worker would choose. Where a worker's records differ (it
   restarted and rebuilt from what the log still holds, or it fell behind
   and lost records) its replicas may differ, and the log settles it: an
   EVENT record carries its epoch and offset, and a worker whose replica has
   another epoch, or does not end just before that offset, replaces it by
   one that starts at that event. Offsets and epochs stay the writer's, the
   same on every worker; recovery across the difference answers
   ``recovered:false``.
9. ``max_channels_per_tenant`` is checked (``admit()``) against this
   worker's replicas before publishing; publishes on other workers at the
   same moment may pass it by what they start meanwhile. Memory stays
   bounded by 7 whatever the count.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import signal
import struct
import time
from array import array
from typing import Callable, Iterable, Protocol

from .config import Limits
from .control import ControlPlane
from .core import RingBuffer, frame_event, new_epoch
from .history import STREAM_OVERHEAD, History, Record, TenantStreams, low_water

__all__ = ["Broker", "History", "SharedSegment", "SharedBroker"]

log = logging.getLogger("fastws.broker")


class Broker(Protocol):
    """The seam between a worker's hub and where events are numbered, kept and carried."""

    def sequence(
        self, channel: str, payload: bytes, event_type: str, source: str, priority: int, publisher: str, target: str | None
    ) -> tuple[int, bytes]:
        """Number an event of ``channel``, keep it, carry it to other workers; (offset, frame)."""

    def position(self, channel: str) -> tuple[str, int]:
        """(epoch, last offset) of a channel's stream, starting it if needed."""

    def recover(self, channel: str, epoch: str | None, since: int) -> tuple[bool, str, int, list[Record]]:
        """(recovered, epoch, last offset, records after since) if nothing after since was lost."""

    def read(self, channel: str, since: int, limit: int) -> tuple[str, int, list[Record]]:
        """(epoch, last offset, up to limit records after since); reading never starts a stream
        (a channel without one answers a fresh epoch, offset 0 and no records)."""

    def admit(self, tenant_id: str, channels: Iterable[str]) -> None:
        """Raise too_many_channels unless the tenant may start the streams that publishing to
        ``channels`` (distinct names) would start."""

    def __contains__(self, channel: str) -> bool:
        """True when the channel has a stream."""

    def __len__(self) -> int:
        """Events held in history."""


# -- the segment -------------------------------------------------------------------------

_PAGE = mmap.PAGESIZE
# a log record's frame field starts with: kind, worker, channel offset, publish time
# (CLOCK_MONOTONIC, shared by all processes of a host), epoch, channel length; then the
# channel, then the body (an event's frame, or a command)
_RECORD = struct.Struct("<BBQd16sB")
EVENT, START, COMMAND = 1, 2, 3


def _align(size: int) -> int:
    return (size + _PAGE - 1) // _PAGE * _PAGE


class SharedSegment:
    """The file every worker of a host maps: control plane, then the shared log."""

    def __init__(self, path: str, fd: int, memory: mmap.mmap, plane: ControlPlane, ring: RingBuffer) -> None:
        self.path = path
        self.fd = fd
        self.memory = memory
        self.plane = plane
        self.ring = ring
        self._exclusive = WriterLock(fd)

    @classmethod
    def create(cls, path: str, limits: Limits, max_workers: int = 64, max_overrides: int = 1024) -> "SharedSegment":
        plane_size = _align(ControlPlane.layout_size(max_workers, max_overrides))
        capacity = limits.history_total_bytes
        max_events = max(1024, capacity // 128)
        size = plane_size + RingBuffer.layout_size(capacity, max_events)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.ftruncate(fd, size)
        memory = mmap.mmap(fd, size)
        plane = ControlPlane.create(memoryview(memory)[:plane_size], max_workers, max_overrides)
        ring = RingBuffer(memoryview(memory)[plane_size:], capacity, max_events, new_epoch())
        return cls(path, fd, memory, plane, ring)

    @classmethod
    def attach(cls, path: str) -> "SharedSegment":
        return cls.attach_fd(os.open(path, os.O_RDWR), path)

    @classmethod
    def attach_fd(cls, fd: int, path: str = "") -> "SharedSegment":
        """Map a segment from an open file descriptor (as a worker inherits it)."""
        memory = mmap.mmap(fd, os.fstat(fd).st_size)
        plane = ControlPlane(memory)
        plane_size = _align(ControlPlane.layout_size(plane.max_workers, plane.max_overrides))
        ring = RingBuffer(memoryview(memory)[plane_size:])
        return cls(path, fd, memory, plane, ring)

    def exclusive(self) -> "WriterLock":
        """The segment's lock for writers (a context manager; made once, reused: it is on the publish path)."""
        return self._exclusive


#: how long a writer waits for the writers' lock before it looks at the holder
LOCK_LEASE = 0.05
# struct flock on Linux (x86-64 and aarch64): l_type, l_whence, l_start, l_len, l_pid
_FLOCK = struct.Struct("hhxxxxqqixxxx")


class WriterLock:
    """The writers' exclusive ``fcntl`` lock on the segment's file, as a context manager.

    Released by the kernel if the holder dies. Taken without blocking, retried with
    short sleeps (a holder keeps it for microseconds); past ``LOCK_LEASE``, a holder
    that is stopped is killed (module docstring, rule 1), so no writer waits for one.
    A plain class, not a generator: entering and leaving cost two calls.
    """

    __slots__ = ("fd", "broken")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        #: stopped holders this process has killed
        self.broken = 0

    def __enter__(self) -> None:
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError:
            pass
        delay = 0.00002
        deadline = time.monotonic() + LOCK_LEASE
        while True:
            time.sleep(delay)
            delay = min(delay * 2, 0.001)
            try:
                fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self._break_stopped_holder()
                deadline = time.monotonic() + LOCK_LEASE

    def __exit__(self, *exc: object) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def holder(self) -> int:
        """The pid holding the lock (0 if none)."""
        answer = fcntl.fcntl(self.fd, fcntl.F_GETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
        kind, _, _, _, pid = _FLOCK.unpack(answer)
        return pid if kind != fcntl.F_UNLCK else 0

    def _break_stopped_holder(self) -> None:
        pid = self.holder()
        if not pid or process_state(pid) not in ("T", "t"):
            return  # a running holder: it will let go
        log.error("worker process %d is stopped holding the shared log's writers' lock: killing it "
                  "(the supervisor replaces it; its clients reconnect and recover)", pid)
        try:
            os.kill(pid, signal.SIGKILL)
            self.broken += 1
        except ProcessLookupError:
            pass


def process_state(pid: int) -> str:
    """A process's state letter from /proc (R, S, D, T stopped, t traced, Z...); '' if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return ""


# -- the broker --------------------------------------------------------------------------


# A replica of one stream is one array('Q'): four fields, then a (log offset, size) pair per
# event it keeps, oldest first, from index HEAD on (the pairs before HEAD were trimmed and are
# cut off in blocks). Its events' channel offsets are consecutive, ending at LAST.
_EPOCH, _LAST, _NBYTES, _HEAD = 0, 1, 2, 3
_FIELDS = 4
#: trimmed pairs are cut off the front of a replica once there are this many (amortised copy)
_CUT = 32


def _new_stream(epoch: int, last: int) -> array:
    """A replica with no event positions: ``epoch`` (the 16 hex characters as an int) and its last offset."""
    return array("Q", (epoch, last, 0, _FIELDS))


def _epoch_text(epoch: int) -> str:
    return "%016x" % epoch


OnEvent = Callable[[str, str, str, int, str, "str | None", bytes, int, float], None]


class SharedBroker:
    """Sequencing, history and cross-worker delivery over a SharedSegment (see the module docstring)."""

    def __init__(
        self,
        segment: SharedSegment,
        worker: int,
        limits: Limits,
        on_event: OnEvent,
        on_command: Callable[[bytes], int],
        notify: Callable[[], None],
        on_lost: Callable[[int], None] | None = None,
    ) -> None:
        self.segment = segment
        self.ring = segment.ring
        self.worker = worker
        self.max_events = limits.history_size
        self.max_bytes = limits.history_bytes
        self.max_total_bytes = limits.history_total_bytes
        self.on_event = on_event
        self.on_command = on_command
        self.notify = notify
        #: called with the count when this worker finds it lost records (it may hold the writers' lock)
        self.on_lost = on_lost
        self.position_applied = 0
        self.lost = 0
        #: channel -> replica (see _new_stream), least recently published first
        self._streams: dict[str, array] = {}
        #: bytes of the records the replicas keep positions of
        self._nbytes = 0
        self.tenants = TenantStreams(limits.max_channels_per_tenant)
        self._command_results: list[tuple[int, int]] = []
        #: the epoch last written, and its 16 ASCII hex digits
        self._epoch_cached, self._epoch_bytes = 0, b"0" * 16

    def __len__(self) -> int:
        """Records in the shared log (events, and the few stream starts and commands among them):
        what history holds for the whole host, read in O(1) (the status API asks every second)."""
        return len(self.ring)

    def __contains__(self, channel: str) -> bool:
        return channel in self._streams

    @property
    def nbytes(self) -> int:
        """Bytes counted against history_total_bytes: kept records, plus STREAM_OVERHEAD a replica."""
        return self._nbytes + len(self._streams) * STREAM_OVERHEAD

    @property
    def lag(self) -> int:
        """Records of the shared log this worker has not applied yet."""
        return max(0, self.ring.next_offset - 1 - self.position_applied)

    def start(self) -> None:
        """Rebuild the replicas from the whole log, delivering nothing (no one was connected)."""
        self.position_applied = self.ring.first_offset - 1
        self.catch_up(deliver=False)

    def admit(self, tenant_id: str, channels: Iterable[str]) -> None:
        self.tenants.admit(tenant_id, self._streams, channels)

    # -- applying the log ------------------------------------------------------------------

    def catch_up(self, deliver: bool = True) -> None:
        """Apply every record appended since the last call (no lock)."""
        while True:
            records = self._read_new(4096)
            if not records:
                return
            for record in records:
                self._apply(record, deliver)

    def _read_new(self, limit: int) -> list[Record]:
        ring = self.ring
        records = ring.read(self.position_applied, limit)
        # the first record read, or the log's first offset if none: past the next one expected,
        # the log wrapped past this worker (it was stopped, or slow), and those records are lost to it
        first = records[0][0] if records else min(ring.first_offset, ring.next_offset)
        if first > self.position_applied + 1:
            lost = first - self.position_applied - 1
            self.lost += lost
            log.error("worker %d fell %d records behind the shared log; they are lost to it", self.worker, lost)
            self.position_applied = first - 1
            self._forget_all()
            if self.on_lost is not None:
                self.on_lost(lost)
        return records

    def _apply(self, record: Record, deliver: bool) -> None:
        global_offset, event_type, source, priority, publisher, target, data = record
        kind, worker, offset, published_at, epoch_bytes, channel_length = _RECORD.unpack_from(data)
        start = _RECORD.size
        channel = data[start:start + channel_length].decode()
        body = data[start + channel_length:]
        if kind == COMMAND:
            self.position_applied = global_offset
            if deliver:
                count = self.on_command(body)
                self._command_results = (self._command_results + [(global_offset, count)])[-8:]
            return
        self._track(kind, channel, offset, int(epoch_bytes, 16), global_offset, len(data))
        if kind == EVENT and deliver and worker != self.worker:
            self.on_event(channel, event_type, source, priority, publisher, target, body, offset, published_at)

    def _track(self, kind: int, channel: str, offset: int, epoch: int, global_offset: int, size: int) -> None:
        """Update this worker's replicas with one EVENT or START record (the same whoever wrote it)."""
        self.position_applied = global_offset
        streams = self._streams
        stream = streams.pop(channel, None)
        if kind == EVENT:
            if stream is None or stream[_LAST] != offset - 1 or stream[_EPOCH] != epoch:
                # a new stream, or one this worker knew otherwise (see 8): it starts at this event
                if stream is None:
                    self.tenants.add(channel)
                else:
                    self._nbytes -= stream[_NBYTES]
                stream = _new_stream(epoch, offset - 1)
            stream[_LAST] = offset
            stream.append(global_offset)
            stream.append(size)
            before = stream[_NBYTES]
            nbytes = before + size
            if nbytes > self.max_bytes or len(stream) - stream[_HEAD] > 2 * self.max_events:
                nbytes = self._trim(stream, nbytes)
            stream[_NBYTES] = nbytes
            self._nbytes += nbytes - before
        elif stream is None or stream[_EPOCH] != epoch:
            if stream is None:
                self.tenants.add(channel)
            else:
                self._nbytes -= stream[_NBYTES]
            stream = _new_stream(epoch, offset)
        streams[channel] = stream  # most recently published last
        if self._nbytes + len(streams) * STREAM_OVERHEAD > self.max_total_bytes:
            self._forget_oldest(keep=channel)

    def _trim(self, stream: array, nbytes: int) -> int:
        """Drop a replica's oldest positions until it is within the per-channel bounds; its bytes then."""
        head = stream[_HEAD]
        count = (len(stream) - head) >> 1
        while count > self.max_events or nbytes > self.max_bytes:
            nbytes -= stream[head + 1]
            head += 2
            count -= 1
        if head - _FIELDS >= 2 * _CUT:
            del stream[_FIELDS:head]
            head = _FIELDS
        stream[_HEAD] = head
        return nbytes

    def _forget_all(self) -> None:
        """Forget every replica: after losing records, none can be trusted to end where its stream
        ends, and numbering from a stale one would give an offset twice in one epoch. This worker's
        next event of a channel starts a new stream (new epoch); what the others publish replaces its
        replicas (rule 8); clients resuming across the loss are answered ``recovered:false``."""
        for channel in self._streams:
            self.tenants.remove(channel)
        self._streams.clear()
        self._nbytes = 0

    def _forget_oldest(self, keep: str) -> None:
        """Forget the least recently published replicas (never ``keep``) down to the low-water mark (7)."""
        streams = self._streams
        target = low_water(self.max_total_bytes)
        nbytes, count = self._nbytes, len(streams)
        victims = []
        for channel, stream in streams.items():
            if nbytes + count * STREAM_OVERHEAD <= target or channel == keep:
                break
            victims.append(channel)
            nbytes -= stream[_NBYTES]
            count -= 1
        for channel in victims:
            del streams[channel]
            self.tenants.remove(channel)
        self._nbytes = nbytes

    @property
    def command_results(self) -> list[tuple[int, int]]:
        return self._command_results

    # -- appending -------------------------------------------------------------------------

    def _append(self, kind: int, channel: str, offset: int, epoch: int, body: bytes,
                event_type: str = "", source: str = "", priority: int = 0, publisher: str = "",
                target: str | None = None) -> int:
        """Append one record (the caller holds the exclusive lock and has caught up); its log offset."""
        ring = self.ring
        channel_bytes = channel.encode()
        if epoch != self._epoch_cached:  # formatting costs more than the rest of the record: once per run of a stream
            self._epoch_cached, self._epoch_bytes = epoch, b"%016x" % epoch
        data = _RECORD.pack(kind, self.worker, offset, time.monotonic(), self._epoch_bytes, len(channel_bytes)) + channel_bytes + body
        global_offset = ring.next_offset
        ring.append(global_offset, data, event_type, source, priority, publisher, target)
        if kind == COMMAND:
            self.position_applied = global_offset
        else:
            self._track(kind, channel, offset, epoch, global_offset, len(data))  # its own record: no parsing back
        return global_offset

    def _catch_up_locked(self) -> None:
        if self.ring.next_offset == self.position_applied + 1:
            return  # nothing appended since this worker's last record: no need to read the log
        while True:
            records = self._read_new(4096)
            if not records:
                return
            for record in records:
                self._apply(record, True)

    def sequence(
        self, channel: str, payload: bytes, event_type: str, source: str, priority: int, publisher: str, target: str | None
    ) -> tuple[int, bytes]:
        with self.segment.exclusive():
            self._catch_up_locked()
            stream = self._streams.get(channel)
            if stream is None:
                epoch, last = int(new_epoch(), 16), 0
            else:
                epoch, last = stream[_EPOCH], stream[_LAST]
            offset = last + 1
            frame = frame_event(payload, offset)
            self._append(EVENT, channel, offset, epoch, frame, event_type, source, priority, publisher, target)
        self.notify()
        return offset, frame

    def command(self, body: bytes) -> int:
        """Append a command every worker applies in log order (this one too); its log offset."""
        with self.segment.exclusive():
            self._catch_up_locked()
            global_offset = self._append(COMMAND, "", 0, 0, body)
        count = self.on_command(body)
        self._command_results = (self._command_results + [(global_offset, count)])[-8:]
        self.notify()
        return global_offset

    # -- positions and history -------------------------------------------------------------

    def _stream_to_read(self, channel: str) -> array | None:
        """The channel's replica, its stream started if needed; None if its tenant may not start another."""
        stream = self._streams.get(channel)
        if stream is None and not self.tenants.full(channel):
            with self.segment.exclusive():
                self._catch_up_locked()
                stream = self._streams.get(channel)
                if stream is None:
                    self._append(START, channel, 0, int(new_epoch(), 16), b"")
                    stream = self._streams[channel]
            self.notify()
        return stream

    def position(self, channel: str) -> tuple[str, int]:
        stream = self._stream_to_read(channel)
        if stream is None:
            return new_epoch(), 0  # not kept: a resume from it is refused (fastws.history, invariant 3)
        return _epoch_text(stream[_EPOCH]), stream[_LAST]

    def _records(self, stream: array, since: int, limit: int) -> list[Record] | None:
        """Up to ``limit`` records after ``since``; None if any of them has left the log."""
        head = stream[_HEAD]
        first = stream[_LAST] - ((len(stream) - head) >> 1) + 1  # channel offset of the oldest kept
        skip = max(since + 1 - first, 0)
        wanted = stream[head + 2 * skip:head + 2 * (skip + max(limit, 0)):2]
        if not wanted:
            return []
        records = []
        for global_offset in wanted:
            record = self.ring.read(global_offset - 1, 1)
            if not record or record[0][0] != global_offset:
                return None  # it has left the log
            records.extend(record)
        result = []
        for global_offset, event_type, source, priority, publisher, target, data in records:
            _, _, offset, _, _, channel_length = _RECORD.unpack_from(data)
            result.append((offset, event_type, source, priority, publisher, target, data[_RECORD.size + channel_length:]))
        return result

    def recover(self, channel: str, epoch: str | None, since: int) -> tuple[bool, str, int, list[Record]]:
        stream = self._stream_to_read(channel)
        if stream is None:
            return False, new_epoch(), 0, []
        current_epoch, last = _epoch_text(stream[_EPOCH]), stream[_LAST]
        if epoch != current_epoch or not 0 <= since <= last:
            return False, current_epoch, last, []
        kept = (len(stream) - stream[_HEAD]) >> 1
        if since < last - kept:
            return False, current_epoch, last, []
        records = self._records(stream, since, last - since)
        if records is None or len(records) != last - since:
            return False, current_epoch, last, []
        return True, current_epoch, last, records

    def read(self, channel: str, since: int, limit: int) -> tuple[str, int, list[Record]]:
        stream = self._streams.get(channel)  # not _stream_to_read: reading history keeps nothing
        if stream is None:
            return new_epoch(), 0, []
        return _epoch_text(stream[_EPOCH]), stream[_LAST], self._records(stream, since, limit) or []
