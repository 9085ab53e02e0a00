"""The control plane layout round-trips, and the flag rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastws.control import ControlPlane, Flags, WorkerStats, v2_enabled_for
from fastws.control.flags import tenant_bucket
from fastws.control.layout import COMMAND_SLOTS, LATENCY_BUCKETS, pack_worker, unpack_worker
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
    events_sent=u64, bytes_in=u64, bytes_out=u64,
    drops=st.lists(u64, min_size=4, max_size=4),
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
