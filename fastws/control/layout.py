"""The control plane's shared-memory layout (version 3) and pure pack/unpack functions.

One writable buffer (an mmap of a file in /dev/shm, shared by the supervisor
and every worker), little-endian::

    header     64 bytes   magic "FWCP", version, max_workers, max_overrides,
                          flags generation (a seqlock: odd while being written),
                          websocket_v2, existing policy, rollout percent,
                          flags source, number of tenant overrides
    overrides  66 bytes each, max_overrides of them: tenant length, state
                          (1 on, 2 off), tenant id (64 bytes)
    workers    ROW.size bytes each, max_workers rows: one writer each (its
                          worker); see WorkerStats
    counters   2 x COUNTER_SLOTS x max_workers u32: open connections per
                          client address and per tenant, by hash slot, then
                          by worker (each worker the only writer of its
                          column); a total is the sum over one slot's
                          workers, which sit side by side (reading a total
                          touches one page, not one per worker), and a
                          worker that dies has its column cleared by the
                          supervisor. Keys that share a slot share a count,
                          which can only make a limit stricter, never looser.

Flags are written by whichever worker serves a change, under the shared
lock (fastws.broker), as a seqlock so readers never see half a change.
Worker rows have a single writer, so they need no lock; readers may see a
row mid-update, which for counters only means a figure a moment old.
"""

from __future__ import annotations

import struct
import zlib
from array import array
from dataclasses import dataclass, field, fields, replace

from .flags import EXISTING_POLICIES, Flags

__all__ = [
    "ControlPlane",
    "WorkerStats",
    "LATENCY_BUCKETS",
    "COMMAND_SLOTS",
    "pack_flags",
    "unpack_flags",
    "pack_worker",
    "unpack_worker",
]

VERSION = 3
_MAGIC = b"FWCP"
_HEADER = struct.Struct("<4sHHHHQBBBBH")
HEADER_SIZE = 64
_OVERRIDE = struct.Struct("<BB64s")
#: latency histogram: bucket i counts deliveries that took < 2**i microseconds (the last: all slower)
LATENCY_BUCKETS = 16
#: recent command results kept per worker: (bus position, count)
COMMAND_SLOTS = 8
_ROW = struct.Struct("<IBBHdd" + "Q" * 8 + "4Q" + f"{LATENCY_BUCKETS}Q" + "Q" + f"{2 * COMMAND_SLOTS}Q")
_SOURCES = ("default", "config", "api")
#: hash slots of the per-address and per-tenant connection counters
COUNTER_SLOTS = 16384
COUNTER_KINDS = ("address", "tenant")
_STATES = ("empty", "starting", "running", "draining")


@dataclass(slots=True)
class WorkerStats:
    """One worker's row."""

    pid: int = 0
    state: str = "empty"
    restarts: int = 0
    started_at: float = 0.0
    heartbeat: float = 0.0
    connections: int = 0
    total_connections: int = 0
    messages_in: int = 0
    events_published: int = 0
    events_sent: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    #: error replies sent to WebSocket clients (their commands refused)
    errors: int = 0
    #: events dropped for slow consumers, by priority rank (low, normal, high, critical)
    drops: list[int] = field(default_factory=lambda: [0] * 4)
    #: cross-worker delivery latency histogram (see LATENCY_BUCKETS)
    latency: list[int] = field(default_factory=lambda: [0] * LATENCY_BUCKETS)
    #: the last bus position this worker has applied
    bus_position: int = 0
    #: (bus position of a command, connections it affected here), most recent last
    commands: list[tuple[int, int]] = field(default_factory=list)

    def to_json(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "commands"}
        return data


def pack_worker(stats: WorkerStats) -> bytes:
    commands = list(stats.commands[-COMMAND_SLOTS:])
    commands = [(0, 0)] * (COMMAND_SLOTS - len(commands)) + commands
    return _ROW.pack(
        stats.pid, _STATES.index(stats.state), 0, stats.restarts, stats.started_at, stats.heartbeat,
        stats.connections, stats.total_connections, stats.messages_in, stats.events_published,
        stats.events_sent, stats.bytes_in, stats.bytes_out, stats.errors,
        *stats.drops, *stats.latency, stats.bus_position,
        *[value for pair in commands for value in pair],
    )


def unpack_worker(data: bytes | memoryview) -> WorkerStats:
    values = _ROW.unpack(data)
    pid, state, _, restarts, started_at, heartbeat = values[:6]
    counters = values[6:14]
    drops = list(values[14:18])
    latency = list(values[18:18 + LATENCY_BUCKETS])
    bus_position = values[18 + LATENCY_BUCKETS]
    flat = values[19 + LATENCY_BUCKETS:]
    commands = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2) if flat[i]]
    return WorkerStats(pid, _STATES[state], restarts, started_at, heartbeat, *counters, drops, latency, bus_position, commands)


def pack_flags(flags: Flags, max_overrides: int) -> tuple[bytes, bytes]:
    """(the flags fields of the header, the overrides region) for ``flags``."""
    if len(flags.overrides) > max_overrides:
        raise ValueError("too many tenant overrides")
    head = struct.pack(
        "<BBBBH", int(flags.websocket_v2), EXISTING_POLICIES.index(flags.existing), flags.rollout_percent,
        _SOURCES.index(flags.source), len(flags.overrides),
    )
    overrides = b"".join(
        _OVERRIDE.pack(len(tenant), 1 if on else 2, tenant.encode()) for tenant, on in sorted(flags.overrides.items())
    )
    return head, overrides


def unpack_flags(head: bytes | memoryview, overrides: bytes | memoryview, generation: int) -> Flags:
    v2, existing, rollout, source, count = struct.unpack("<BBBBH", head)
    tenants = {}
    for index in range(count):
        length, state, name = _OVERRIDE.unpack_from(overrides, index * _OVERRIDE.size)
        tenants[name[:length].decode()] = state == 1
    return Flags(bool(v2), rollout, EXISTING_POLICIES[existing], tenants, _SOURCES[source], generation)


class ControlPlane:
    """Flags and per-worker rows over one shared, writable buffer."""

    def __init__(self, buffer) -> None:
        view = memoryview(buffer).cast("B")
        magic, version, max_workers, max_overrides = _HEADER.unpack_from(view, 0)[:4]
        if magic != _MAGIC or version != VERSION:
            raise ValueError("not a fastws control plane (or another layout version)")
        if len(view) < self.layout_size(max_workers, max_overrides):
            raise ValueError("the buffer is smaller than its layout")
        self._view = view
        self.max_workers = max_workers
        self.max_overrides = max_overrides
        self._overrides_at = HEADER_SIZE
        self._workers_at = HEADER_SIZE + _OVERRIDE.size * max_overrides
        counters_at = self._workers_at + _ROW.size * max_workers
        self._counters = view[counters_at:counters_at + 2 * 4 * COUNTER_SLOTS * max_workers].cast("I")

    @staticmethod
    def layout_size(max_workers: int, max_overrides: int) -> int:
        return HEADER_SIZE + _OVERRIDE.size * max_overrides + _ROW.size * max_workers + 2 * 4 * COUNTER_SLOTS * max_workers

    @classmethod
    def create(cls, buffer, max_workers: int = 64, max_overrides: int = 1024, flags: Flags | None = None) -> "ControlPlane":
        view = memoryview(buffer).cast("B")
        size = cls.layout_size(max_workers, max_overrides)
        if len(view) < size:
            raise ValueError("the buffer is smaller than the layout")
        view[:size] = bytes(size)
        _HEADER.pack_into(view, 0, _MAGIC, VERSION, max_workers, max_overrides, 0, 0, 1, 0, 100, 0, 0)
        plane = cls(buffer)
        plane.write_flags(flags or Flags())
        return plane

    # -- flags ----------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        return int.from_bytes(self._view[12:20], "little")

    def read_flags(self, locked: bool = False, tries: int = 10_000) -> Flags | None:
        """The flags, never half-written: a seqlock read, retried while a writer is mid-change.

        ``locked``: the caller holds the writers' lock, so no write is under way (an odd
        generation is one a writer killed mid-change left; the next write repairs it).
        Otherwise, after ``tries`` attempts that all met a writer mid-change (one stopped
        while writing), None: the caller keeps the flags it has, and never waits longer.
        """
        view = self._view
        for _ in range(1 if locked else tries):
            generation = self.generation
            if generation % 2 and not locked:
                continue  # a writer is mid-change
            head = bytes(view[20:26])
            count = int.from_bytes(head[4:6], "little")
            overrides = bytes(view[self._overrides_at:self._overrides_at + _OVERRIDE.size * count])
            if locked or self.generation == generation:
                return unpack_flags(head, overrides, generation // 2)
        return None

    def write_flags(self, flags: Flags) -> Flags:
        """Store ``flags`` (the caller holds the writers' lock); returns them with their new generation."""
        head, overrides = pack_flags(flags, self.max_overrides)
        view = self._view
        generation = self.generation
        generation += generation % 2  # a writer killed mid-change left it odd: this write repairs it
        view[12:20] = (generation + 1).to_bytes(8, "little")
        view[20:26] = head
        view[self._overrides_at:self._overrides_at + len(overrides)] = overrides
        view[12:20] = (generation + 2).to_bytes(8, "little")
        return replace(flags, generation=(generation + 2) // 2)

    # -- worker rows ----------------------------------------------------------------------

    def _row(self, worker: int) -> int:
        if not 0 <= worker < self.max_workers:
            raise IndexError(f"worker {worker} outside 0-{self.max_workers - 1}")
        return self._workers_at + _ROW.size * worker

    def read_worker(self, worker: int) -> WorkerStats:
        at = self._row(worker)
        return unpack_worker(self._view[at:at + _ROW.size])

    def write_worker(self, worker: int, stats: WorkerStats) -> None:
        at = self._row(worker)
        self._view[at:at + _ROW.size] = pack_worker(stats)

    # -- connection counters --------------------------------------------------------------

    def _counter(self, worker: int, kind: str, key: str) -> int:
        slot = zlib.crc32(key.encode()) % COUNTER_SLOTS
        return ((COUNTER_KINDS.index(kind) * COUNTER_SLOTS) + slot) * self.max_workers + worker

    def count(self, worker: int, kind: str, key: str, delta: int) -> None:
        """Add ``delta`` to this worker's count of open connections for an address or tenant."""
        index = self._counter(worker, kind, key)
        self._counters[index] = max(0, self._counters[index] + delta)

    def total(self, kind: str, key: str) -> int:
        """Open connections for an address or tenant, over every worker."""
        first = self._counter(0, kind, key)
        return sum(self._counters[first:first + self.max_workers])

    def clear_counts(self, worker: int) -> None:
        """Forget a worker's counts (it died with its connections)."""
        size = COUNTER_SLOTS * self.max_workers
        for kind in range(len(COUNTER_KINDS)):
            start = kind * size + worker
            self._counters[start:start + size:self.max_workers] = array("I", bytes(4 * COUNTER_SLOTS))

    def workers(self) -> dict[int, WorkerStats]:
        """Rows of workers that are not empty."""
        rows = {}
        for worker in range(self.max_workers):
            stats = self.read_worker(worker)
            if stats.state != "empty":
                rows[worker] = stats
        return rows
