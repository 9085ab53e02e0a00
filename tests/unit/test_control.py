"""The control plane layout round-trips, and the flag rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastws.control import ControlPlane, Flags, WorkerStats, v2_enabled_for
from fastws.control.flags import tenant_bucket
from fastws.control.layout import (
    CLOSE_SLOTS, COMMAND_SLOTS, DROP_REASONS, LATENCY_BUCKETS, RATE_LIMITS, TENANT_SLOTS, TenantRow, close_slot,
    pack_worker, unpack_worker,
)
from fastws.exceptions import ProtocolError

u64 = st.integers(0, 2**64 - 1)
workers = st.builds(
    WorkerStats,
    pid=st.integers(0, 2**32 - 1),
    state=st.sampled_from(["empty", "starting", "running", "draining"]),
    restarts=st.integers(0, 2**16 - 1),
    started_at=st.floats(0, 2e9),
    heartbeat=st.floats(0, 2e9),
    connections=u64, total_connections=u64, messages_in=u64, events_published=u64,
    events_sent=u64, bytes_in=u64, bytes_out=u64, errors=u64, published_ws=u64, published_rest=u64,
    history_events=u64, history_bytes=u64, log_lag=u64, broker_errors=u64, broker_reconnects=u64,
    loop_lag=st.floats(0, 1e6), redis_lag=st.floats(0, 1e6), latency_sum=st.floats(0, 1e12),
    rate_limited=st.lists(u64, min_size=len(RATE_LIMITS), max_size=len(RATE_LIMITS)),
    drop_reasons=st.lists(u64, min_size=4 * len(DROP_REASONS), max_size=4 * len(DROP_REASONS)),
    disconnects=st.lists(u64, min_size=2 * len(CLOSE_SLOTS) + 2, max_size=2 * len(CLOSE_SLOTS) + 2),
    latency=st.lists(u64, min_size=LATENCY_BUCKETS, max_size=LATENCY_BUCKETS),
    bus_position=u64,
    commands=st.lists(st.tuples(st.integers(1, 2**64 - 1), u64), max_size=COMMAND_SLOTS),
)
tenants = st.from_regex(r"[A-Za-z0-9_.\-]{1,64}", fullmatch=True)
flag_sets = st.builds(
    Flags,
    websocket_v2=st.booleans(),
    rollout_percent=st.integers(0, 100),
    existing=st.sampled_from(["keep", "close"]),
    overrides=st.dictionaries(tenants, st.booleans(), max_size=20),
    source=st.sampled_from(["default", "config", "api"]),
)


@given(workers)
def test_worker_rows_round_trip(stats):
    """pack_worker/unpack_worker are inverse."""
    assert unpack_worker(pack_worker(stats)) == stats


@given(flag_sets)
def test_flags_round_trip_through_the_plane(flags):
    """Flags written to a plane read back equal, with a new generation each write."""
    plane = ControlPlane.create(bytearray(ControlPlane.layout_size(4, 32)), 4, 32)
    before = plane.read_flags().generation
    written = plane.write_flags(flags)
    read = plane.read_flags()
    assert read == written and read.generation == before + 1
    assert (read.websocket_v2, read.rollout_percent, read.existing, read.overrides, read.source) == (
        flags.websocket_v2, flags.rollout_percent, flags.existing, flags.overrides, flags.source)


@given(workers, st.integers(0, 2**16 - 1))
def test_a_continued_row_keeps_every_counter_and_no_gauge(stats, restarts):
    """The row a worker is started again in keeps its predecessor's counters (so totals never go
    back) and none of its gauges or identity."""
    continued = stats.continued(restarts)
    for name in ("total_connections", "messages_in", "events_published", "events_sent", "bytes_in", "bytes_out",
                 "errors", "published_ws", "published_rest", "broker_errors", "broker_reconnects",
                 "rate_limited", "drop_reasons", "disconnects", "latency", "latency_sum"):
        assert getattr(continued, name) == getattr(stats, name), name
    assert (continued.state, continued.restarts, continued.pid, continued.connections, continued.loop_lag,
            continued.history_events, continued.commands) == ("starting", restarts, 0, 0, 0.0, 0, [])


def test_drops_by_priority_sum_the_reasons():
    stats = WorkerStats(drop_reasons=[1, 2, 3, 4, 10, 20, 30, 40, 0, 0, 0, 5])
    assert stats.drops == [11, 22, 33, 49]
    assert stats.to_json()["drops"] == [11, 22, 33, 49]


def test_close_slots():
    """Every close code fastws sends, and the RFC's, have a slot; any other code shares the last."""
    assert close_slot(1000) == 0 and CLOSE_SLOTS[close_slot(4008)] == 4008
    assert close_slot(4321) == close_slot(3000) == len(CLOSE_SLOTS)
    assert 1006 in CLOSE_SLOTS and 1005 in CLOSE_SLOTS


def test_tenant_tables():
    """Each worker's tenant table reads back what it wrote, at most TENANT_SLOTS rows, and is
    replaced whole by the next write."""
    plane = ControlPlane.create(bytearray(ControlPlane.layout_size(3, 8)), 3, 8)
    rows = [TenantRow(f"t{i}", i, 10 * i, 2**40 + i) for i in range(TENANT_SLOTS + 5)]
    plane.write_tenants(1, rows)
    assert plane.read_tenants(1) == rows[:TENANT_SLOTS]
    assert plane.read_tenants(0) == [] and plane.read_tenants(2) == []
    plane.write_tenants(1, [TenantRow("x" * 64, 1, 2, 3)])
    assert plane.read_tenants(1) == [TenantRow("x" * 64, 1, 2, 3)]
    with pytest.raises(IndexError):
        plane.read_tenants(3)


def test_rows_and_attach():
    """A plane attached to the same buffer sees the rows another wrote; empty rows are not listed."""
    buffer = bytearray(ControlPlane.layout_size(4, 8))
    plane = ControlPlane.create(buffer, 4, 8)
    plane.write_worker(2, WorkerStats(pid=42, state="running", connections=7))
    other = ControlPlane(buffer)
    assert list(other.workers()) == [2]
    assert other.read_worker(2).connections == 7
    with pytest.raises(IndexError):
        other.read_worker(4)
    with pytest.raises(ValueError):
        ControlPlane(bytearray(100))


def test_defaults_serve_everyone():
    """websocket_v2 on at 100 % rollout serves every tenant."""
    assert v2_enabled_for(Flags(), "anyone")


def test_rollback_and_overrides():
    """Off sends everyone to legacy except tenants overridden on; an override off wins over on."""
    off = Flags(websocket_v2=False, overrides={"beta": True})
    assert not v2_enabled_for(off, "acme") and v2_enabled_for(off, "beta")
    assert not v2_enabled_for(Flags(overrides={"acme": False}), "acme")


def test_rollout_is_stable_and_proportional():
    """A rollout percentage picks the same tenants every time, about that share of them."""
    flags = Flags(rollout_percent=30)
    chosen = [t for t in (f"tenant{i}" for i in range(2000)) if v2_enabled_for(flags, t)]
    assert 0.25 < len(chosen) / 2000 < 0.35
    assert chosen == [t for t in (f"tenant{i}" for i in range(2000)) if tenant_bucket(t) < 30]
    assert not v2_enabled_for(Flags(rollout_percent=0), "tenant1")


@pytest.mark.parametrize(
    "body",
    [{}, [], {"websocket_v2": "maybe"}, {"rollout_percent": 101}, {"existing": "drop"}, {"tenants": {"a b": "on"}},
     {"tenants": []}, {"colour": "blue"}],
)
def test_invalid_flag_changes(body):
    """Bad PUT flag bodies are invalid_field (or invalid_tenant_id)."""
    with pytest.raises(ProtocolError):
        Flags().updated(body, 10)


def test_flag_changes_apply():
    """A PUT body changes only what it names; null removes a tenant override."""
    flags = Flags().updated({"websocket_v2": False, "tenants": {"a": "on", "b": False}}, 10)
    assert (flags.websocket_v2, flags.overrides) == (False, {"a": True, "b": False})
    flags = flags.updated({"tenants": {"a": None}, "rollout_percent": 50}, 10)
    assert (flags.websocket_v2, flags.overrides, flags.rollout_percent) == (False, {"b": False}, 50)


def test_connection_counters_sum_over_workers_and_clear():
    """Per-address and per-tenant counts add up over workers; a dead worker's counts can be cleared."""
    plane = ControlPlane.create(bytearray(ControlPlane.layout_size(4, 8)), 4, 8)
    plane.count(0, "address", "10.0.0.1", +3)
    plane.count(2, "address", "10.0.0.1", +2)
    plane.count(2, "tenant", "acme", +5)
    assert plane.total("address", "10.0.0.1") == 5 and plane.total("tenant", "acme") == 5
    plane.count(0, "address", "10.0.0.1", -1)
    plane.clear_counts(2)
    assert plane.total("address", "10.0.0.1") == 2 and plane.total("tenant", "acme") == 0
    plane.count(1, "tenant", "x", -1)  # never below zero
    assert plane.total("tenant", "x") == 0


def test_a_writer_stopped_or_killed_mid_change_never_blocks_a_reader():
    """Flags are a seqlock: a reader retries while a write is under way, but gives up (None: keep the
    flags you have) instead of waiting for a writer that stopped mid-change; the next write repairs it."""
    buffer = bytearray(ControlPlane.layout_size(4, 8))
    plane = ControlPlane.create(buffer, 4, 8)
    written = plane.write_flags(Flags(websocket_v2=False))
    assert plane.read_flags() == written
    buffer[12:20] = (plane.generation + 1).to_bytes(8, "little")  # a writer stopped half way
    assert plane.read_flags(tries=100) is None
    assert plane.read_flags(locked=True).websocket_v2 is False  # the lock's holder reads what is there
    repaired = plane.write_flags(Flags(websocket_v2=True))
    assert plane.generation % 2 == 0 and plane.read_flags() == repaired and repaired.websocket_v2
    assert repaired.generation > written.generation
