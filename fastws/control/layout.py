"""The control plane's shared-memory layout (version 4) and pure pack/unpack functions.

One writable buffer (an mmap of a file in /dev/shm, shared by the supervisor
and every worker), little-endian::

    header     64 bytes   magic "FWCP", version, max_workers, max_overrides,
                          flags generation (a seqlock: odd while being written),
                          websocket_v2, existing policy, rollout percent,
                          flags source, number of tenant overrides
    overrides  66 bytes each, max_overrides of them: tenant length, state
                          (1 on, 2 off), tenant id (64 bytes)
    workers    ROW.size bytes each, max_workers rows: one writer each (its
                          worker; the supervisor between its lives); see
                          WorkerStats. Counters never go back: a worker
                          started again in a row continues its predecessor's
                          counts, so a host's totals (and /metrics) stay
                          monotonic across crashes and restarts
    tenants    per worker, a seqlock generation and count (16 bytes), then
                          TENANT_SLOTS entries: the worker's busiest tenants
                          (name, open connections, events published, frames
                          delivered), for the
                          per-tenant series of /metrics
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

from .. import codes
from .flags import EXISTING_POLICIES, Flags

__all__ = [
    "ControlPlane",
    "WorkerStats",
    "LATENCY_BUCKETS",
    "COMMAND_SLOTS",
    "CLOSE_SLOTS",
    "CLOSE_INITIATORS",
    "DROP_REASONS",
    "RATE_LIMITS",
    "TENANT_SLOTS",
    "TenantRow",
    "close_slot",
    "pack_flags",
    "unpack_flags",
    "pack_worker",
    "unpack_worker",
]

VERSION = 4
_MAGIC = b"FWCP"
_HEADER = struct.Struct("<4sHHHHQBBBBH")
HEADER_SIZE = 64
_OVERRIDE = struct.Struct("<BB64s")
#: latency histogram: bucket i counts deliveries that took < 2**i microseconds (the last: all slower)
LATENCY_BUCKETS = 24
#: recent command results kept per worker: (bus position, count)
COMMAND_SLOTS = 8
#: close codes counted one by one (disconnects by close code); any other code counts in a last slot
CLOSE_SLOTS: tuple[int, ...] = tuple(sorted(set(codes.CLOSE_CODES) | {1005, 1006, 1010, 1012, 1014}))
#: who sent the first close frame (with none, the peer dropped the connection: code 1006, "client")
CLOSE_INITIATORS = ("server", "client")
#: why events were dropped: the connection's send buffer was full, the host's budget for all
#: slow connections was, or the connection was closed (4008) holding them
DROP_REASONS = ("buffer", "budget", "closed")
#: refusals by the rate limits: a connection's publishes, a tenant's publishes, new connections
RATE_LIMITS = ("publish", "tenant_publish", "connect")
_COUNTERS = 15
_ROW = struct.Struct(
    "<IBBHddddd" + "Q" * _COUNTERS + f"{len(RATE_LIMITS)}Q" + f"{len(DROP_REASONS) * 4}Q"
    + f"{(len(CLOSE_SLOTS) + 1) * len(CLOSE_INITIATORS)}Q" + f"{LATENCY_BUCKETS}Q" + "Q" + f"{2 * COMMAND_SLOTS}Q"
)
_SOURCES = ("default", "config", "api")
#: hash slots of the per-address and per-tenant connection counters
COUNTER_SLOTS = 16384
COUNTER_KINDS = ("address", "tenant")
_STATES = ("empty", "starting", "running", "draining")
#: tenants each worker lists (its busiest by open connections, then by events published)
TENANT_SLOTS = 32
_TENANTS_HEAD = struct.Struct("<QI4x")
_TENANT = struct.Struct("<B64s3xIQQ")
_TENANTS_SIZE = _TENANTS_HEAD.size + TENANT_SLOTS * _TENANT.size


def close_slot(code: int) -> int:
    """The index of a close code among CLOSE_SLOTS (len(CLOSE_SLOTS): any other code)."""
    try:
        return CLOSE_SLOTS.index(code)
    except ValueError:
        return len(CLOSE_SLOTS)


@dataclass(slots=True, frozen=True)
class TenantRow:
    """One tenant of a worker's tenant table."""

    tenant: str
    connections: int
    #: events the worker's clients published (WebSocket and REST)
    events_published: int
    #: frames of the tenant's events the worker delivered
    events_sent: int


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
    #: events published by WebSocket clients and over the REST API (events_published: both)
    published_ws: int = 0
    published_rest: int = 0
    #: events and bytes this worker's history holds (gauges)
    history_events: int = 0
    history_bytes: int = 0
    #: records of the host's shared log this worker has not applied yet (a gauge)
    log_lag: int = 0
    #: the cluster's Redis: failed calls and timeouts, pub/sub reconnects
    broker_errors: int = 0
    broker_reconnects: int = 0
    #: the longest event-loop delay seen over the last second, seconds (a gauge)
    loop_lag: float = 0.0
    #: the cluster's Redis: the last pub/sub round trip (publish to receipt), seconds (a gauge)
    redis_lag: float = 0.0
    #: the sum of the latencies the histogram counts, seconds
    latency_sum: float = 0.0
    #: refusals by rate limit (see RATE_LIMITS)
    rate_limited: list[int] = field(default_factory=lambda: [0] * len(RATE_LIMITS))
    #: events dropped for slow consumers, by reason (DROP_REASONS) then priority rank (low,
    #: normal, high, critical): reason * 4 + rank
    drop_reasons: list[int] = field(default_factory=lambda: [0] * (4 * len(DROP_REASONS)))
    #: connections ended, by close code slot (close_slot) and initiator: slot * 2 + initiator
    disconnects: list[int] = field(default_factory=lambda: [0] * (2 * (len(CLOSE_SLOTS) + 1)))
    #: cross-worker delivery latency histogram (see LATENCY_BUCKETS)
    latency: list[int] = field(default_factory=lambda: [0] * LATENCY_BUCKETS)
    #: the last bus position this worker has applied
    bus_position: int = 0
    #: (bus position of a command, connections it affected here), most recent last
    commands: list[tuple[int, int]] = field(default_factory=list)

    @property
    def drops(self) -> list[int]:
        """Events dropped by priority rank, whatever the reason."""
        reasons = self.drop_reasons
        return [sum(reasons[rank::4]) for rank in range(4)]

    def to_json(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("commands", "drop_reasons", "disconnects", "rate_limited")}
        data["drops"] = self.drops
        return data

    def continued(self, restarts: int) -> "WorkerStats":
        """The row a worker started again in this one begins with: this row's counters (they never
        go back), no connections, no gauges."""
        return replace(
            self, pid=0, state="starting", restarts=restarts, started_at=0.0, heartbeat=0.0, connections=0,
            history_events=0, history_bytes=0, log_lag=0, loop_lag=0.0, redis_lag=0.0, bus_position=0, commands=[],
        )


def pack_worker(stats: WorkerStats) -> bytes:
    commands = list(stats.commands[-COMMAND_SLOTS:])
    commands = [(0, 0)] * (COMMAND_SLOTS - len(commands)) + commands
    return _ROW.pack(
        stats.pid, _STATES.index(stats.state), 0, stats.restarts, stats.started_at, stats.heartbeat,
        stats.loop_lag, stats.redis_lag, stats.latency_sum,
        stats.connections, stats.total_connections, stats.messages_in, stats.events_published,
        stats.events_sent, stats.bytes_in, stats.bytes_out, stats.errors,
        stats.published_ws, stats.published_rest, stats.history_events, stats.history_bytes, stats.log_lag,
        stats.broker_errors, stats.broker_reconnects,
        *stats.rate_limited, *stats.drop_reasons, *stats.disconnects, *stats.latency, stats.bus_position,
        *[value for pair in commands for value in pair],
    )


_LISTS = (len(RATE_LIMITS), 4 * len(DROP_REASONS), 2 * (len(CLOSE_SLOTS) + 1), LATENCY_BUCKETS)


def unpack_worker(data: bytes | memoryview) -> WorkerStats:
    values = _ROW.unpack(data)
    pid, state, _, restarts, started_at, heartbeat, loop_lag, redis_lag, latency_sum = values[:9]
    at = 9 + _COUNTERS
    counters = values[9:at]
    lists = []
    for size in _LISTS:
        lists.append(list(values[at:at + size]))
        at += size
    bus_position = values[at]
    flat = values[at + 1:]
    commands = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2) if flat[i]]
    return WorkerStats(
        pid, _STATES[state], restarts, started_at, heartbeat, *counters, loop_lag, redis_lag, latency_sum,
        *lists, bus_position, commands,
    )


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
        self._tenants_at = counters_at + 2 * 4 * COUNTER_SLOTS * max_workers

    @staticmethod
    def layout_size(max_workers: int, max_overrides: int) -> int:
        return (HEADER_SIZE + _OVERRIDE.size * max_overrides + _ROW.size * max_workers
                + 2 * 4 * COUNTER_SLOTS * max_workers + _TENANTS_SIZE * max_workers)

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

    # -- tenant tables ----------------------------------------------------------------------

    def write_tenants(self, worker: int, rows: list[TenantRow]) -> None:
        """Replace ``worker``'s tenant table (its single writer) with up to TENANT_SLOTS rows."""
        at = self._tenants_at + _TENANTS_SIZE * self._index(worker)
        view = self._view
        generation = _TENANTS_HEAD.unpack_from(view, at)[0]
        generation += generation % 2
        rows = rows[:TENANT_SLOTS]
        body = b"".join(
            _TENANT.pack(len(name), name, min(row.connections, 2**32 - 1), row.events_published, row.events_sent)
            for row in rows for name in (row.tenant.encode()[:64],)
        )
        _TENANTS_HEAD.pack_into(view, at, generation + 1, len(rows))
        view[at + _TENANTS_HEAD.size:at + _TENANTS_HEAD.size + len(body)] = body
        _TENANTS_HEAD.pack_into(view, at, generation + 2, len(rows))

    def read_tenants(self, worker: int, tries: int = 100) -> list[TenantRow]:
        """``worker``'s tenant table, never half-written ([] if a writer stayed mid-change)."""
        at = self._tenants_at + _TENANTS_SIZE * self._index(worker)
        view = self._view
        for _ in range(tries):
            generation, count = _TENANTS_HEAD.unpack_from(view, at)
            if generation % 2:
                continue
            body = bytes(view[at + _TENANTS_HEAD.size:at + _TENANTS_HEAD.size + _TENANT.size * min(count, TENANT_SLOTS)])
            if _TENANTS_HEAD.unpack_from(view, at)[0] != generation:
                continue
            rows = []
            for offset in range(0, len(body), _TENANT.size):
                length, name, connections, published, sent = _TENANT.unpack_from(body, offset)
                rows.append(TenantRow(name[:length].decode("utf-8", "replace"), connections, published, sent))
            return rows
        return []

    def _index(self, worker: int) -> int:
        if not 0 <= worker < self.max_workers:
            raise IndexError(f"worker {worker} outside 0-{self.max_workers - 1}")
        return worker

    def workers(self) -> dict[int, WorkerStats]:
        """Rows of workers that are not empty."""
        rows = {}
        for worker in range(self.max_workers):
            stats = self.read_worker(worker)
            if stats.state != "empty":
                rows[worker] = stats
        return rows
