"""Micro benchmarks of the core, on both implementations (pytest-benchmark).

Run all of them and print the comparison table with one command:

    python -m benchmarks.core

Each benchmark checks its result (``extra_info["correct"]``) against an
independent computation, so a fast wrong answer is reported as wrong.
"""

from __future__ import annotations

import random
import tracemalloc

import pytest

from fastws import _core_py

CHANNELS = 100
CONNECTIONS = 10_000
EVENT_TYPES = [f"type{i}" for i in range(20)]
SOURCES = [f"source{i}" for i in range(5)]
USERS = [f"user{i}" for i in range(2000)]


def _reference(subscriptions, filters, users, channel, event_type, source, priority, publisher, target):
    """The obvious linear answer, to check the indexed ones."""
    result = []
    for connection, channels in subscriptions.items():
        if channel not in channels:
            continue
        types = channels[channel]
        if types and event_type not in types:
            continue
        f = filters.get(connection)
        if f and ((f[0] and event_type not in f[0]) or (f[1] and source not in f[1])
                  or (f[2] and priority not in f[2]) or (f[3] and publisher not in f[3])):
            continue
        if target is not None and users[connection] != target:
            continue
        result.append(connection)
    return sorted(result)


def build_mixed(core, seed=7):
    """10,000 connections over 100 channels; a third with filters, some with per-subscription types."""
    rng = random.Random(seed)
    matcher = core.Matcher()
    subscriptions, filters, users = {}, {}, {}
    for connection in range(CONNECTIONS):
        user = rng.choice(USERS)
        users[connection] = user
        matcher.add(connection, user)
        subscriptions[connection] = {}
        for channel in rng.sample(range(CHANNELS), 3):
            types = rng.sample(EVENT_TYPES, 2) if rng.random() < 0.2 else None
            matcher.subscribe(connection, f"c{channel}:t", types)
            subscriptions[connection][f"c{channel}:t"] = set(types or ())
        if rng.random() < 0.33:
            f = (
                set(rng.sample(EVENT_TYPES, 3)) if rng.random() < 0.5 else set(),
                set(rng.sample(SOURCES, 2)) if rng.random() < 0.5 else set(),
                {2, 3} if rng.random() < 0.3 else set(),
                set(rng.sample(USERS, 2)) if rng.random() < 0.1 else set(),
            )
            matcher.set_filters(connection, *f)
            filters[connection] = f
    events = [
        (f"c{rng.randrange(CHANNELS)}:t", rng.choice(EVENT_TYPES), rng.choice(SOURCES), rng.randrange(4),
         rng.choice(USERS), rng.choice(USERS) if rng.random() < 0.1 else None)
        for _ in range(200)
    ]
    return matcher, events, (subscriptions, filters, users)


def test_match_mixed(benchmark, core):
    """200 publishes, each to a channel of ~300 subscribers among 10,000 connections with mixed filters."""
    matcher, events, model = build_mixed(core)
    correct = all(sorted(matcher.match(*event)) == _reference(*model, *event) for event in events)
    match = matcher.match

    def run():
        # one round publishes all 200 events: the figure is per round, divide by 200 for one publish
        for event in events:
            match(*event)

    benchmark.extra_info.update(correct=correct, connections=CONNECTIONS, channels=CHANNELS, publishes_per_round=len(events))
    benchmark(run)
    assert correct


def test_match_1000_subscribers_10_match(benchmark, core):
    """A publish to a channel with 1,000 subscribers of which 10 match (event-type filters)."""
    matcher = core.Matcher()
    for connection in range(1000):
        matcher.add(connection, f"u{connection}")
        matcher.subscribe(connection, "busy:t")
        matcher.set_filters(connection, event_types=["wanted"] if connection % 100 == 0 else ["other", f"x{connection % 7}"])
    correct = sorted(matcher.match("busy:t", "wanted", "s", 1, "p")) == list(range(0, 1000, 100))
    benchmark.extra_info.update(correct=correct, subscribers=1000, matching=10)
    benchmark(matcher.match, "busy:t", "wanted", "s", 1, "p")
    assert correct


def test_match_fanout_1000_unfiltered(benchmark, core):
    """A publish to a channel with 1,000 unfiltered subscribers: all match."""
    matcher = core.Matcher()
    for connection in range(1000):
        matcher.add(connection, f"u{connection}")
        matcher.subscribe(connection, "all:t")
    correct = len(matcher.match("all:t", "e", "s", 1, "p")) == 1000
    benchmark.extra_info.update(correct=correct)
    benchmark(matcher.match, "all:t", "e", "s", 1, "p")
    assert correct


def _frames(count=1000, payload=200):
    return [core_frame(b'{"id":"%036d","eventType":"e","data":"%s","offset":%d}' % (i, b"x" * payload, i + 1))
            for i in range(count)]


def core_frame(payload: bytes) -> bytes:
    return _core_py.frame_text(payload)


def test_history_append(benchmark, core):
    """Appending 1,000 events of 200-byte payloads to a ring sized for them."""
    frames = _frames()

    def run():
        ring = core.RingBuffer.create(1 << 20, 1000)
        for offset, frame in enumerate(frames, start=1):
            ring.append(offset, frame, "e", "s", 1, "u", None)
        return ring

    ring = run()
    correct = [r[6] for r in ring.read(0, 1000)] == frames
    benchmark.extra_info.update(correct=correct, events=1000)
    benchmark(run)
    assert correct


def test_history_replay(benchmark, core):
    """Reading back 1,000 events (a full replay)."""
    frames = _frames()
    ring = core.RingBuffer.create(1 << 20, 1000)
    for offset, frame in enumerate(frames, start=1):
        ring.append(offset, frame, "e", "s", 1, "u", None)
    correct = [r[6] for r in ring.read(0, 1000)] == frames
    benchmark.extra_info.update(correct=correct, events=1000)
    benchmark(ring.read, 0, 1000)
    assert correct


def test_frame_event(benchmark, core):
    """Adding the offset to an event and framing it (once per publish)."""
    payload = b'{"id":"x","eventType":"e","data":{"k":"' + b"v" * 200 + b'"},"channel":"tenant:t"}'
    correct = core.frame_event(payload, 12345) == _core_py.frame_text(payload[:-1] + b',"offset":12345}')
    benchmark.extra_info.update(correct=correct)
    benchmark(core.frame_event, payload, 12345)
    assert correct


@pytest.mark.parametrize("implementation", ["cython", "python"])
def test_history_memory(benchmark, implementation, monkeypatch):
    """Memory of 1,000 events with 200-byte payloads in a channel's history (tracemalloc), against their encoded size."""
    import importlib

    from fastws.config import Limits
    from fastws.history import History

    module = importlib.import_module("fastws._core" if implementation == "cython" else "fastws._core_py")
    monkeypatch.setattr("fastws.history.RingBuffer", module.RingBuffer)
    frames = _frames()
    encoded = sum(len(f) for f in frames)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    history = History(Limits())
    for frame in frames:
        history.append("tenant:t", history.next_offset("tenant:t"), frame, "e", "s", 1, "u", None)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    used = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    budget = 1.5 * encoded + 64 * 1024
    correct = [r[6] for r in history.read("tenant:t", 0, 1000)[2]] == frames
    benchmark.extra_info.update(correct=correct, encoded_bytes=encoded, traced_bytes=used,
                                ratio=round(used / encoded, 3), budget_bytes=int(budget), within_budget=used < budget)
    benchmark.pedantic(lambda: None, rounds=1)
    assert correct and used < budget, (used, budget)


def test_command_decode(benchmark):
    """Decoding and validating one publish command (messages.decode_command; the same on both cores)."""
    from fastws.messages import Publish, decode_command

    raw = b'{"type":"publish","channel":"ideas:acme","event":"idea_created","payload":{"title":"New Idea","n":1},"source":"idea_service","priority":"high","ref":42}'
    result = decode_command(raw)
    correct = result == Publish(42, "ideas:acme", "idea_created", {"title": "New Idea", "n": 1}, "idea_service", "high", None)
    benchmark.extra_info.update(correct=correct)
    benchmark(decode_command, raw)
    assert correct


def test_event_encode(benchmark):
    """Encoding one event with orjson (messages.encode_event), once per publish."""
    import orjson

    from fastws.messages import encode_event

    args = ("3f1c0e6e-6a4e-4c1e-9a7d-1b2c3d4e5f60", "idea_created", {"title": "New Idea", "n": 1},
            "2026-11-29T10:30:00.123Z", "idea_service", "high", "acme", "alice", "ideas:acme")
    correct = orjson.loads(encode_event(*args))["data"] == {"title": "New Idea", "n": 1}
    benchmark.extra_info.update(correct=correct)
    benchmark(encode_event, *args)
    assert correct
