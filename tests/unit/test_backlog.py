"""Backlog and Budget: shedding by priority at O(1) per event, order kept, hysteresis, the worker budget."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from fastws.backlog import NEVER_DROP, Backlog, Budget, low_water


def frame(n: int, size: int = 10) -> bytes:
    return n.to_bytes(4, "big") + b"x" * (size - 4)


def test_drain_keeps_the_order_queued_across_priorities():
    backlog = Backlog()
    priorities = [0, 3, 1, NEVER_DROP, 2, 0, 3]
    for n, p in enumerate(priorities):
        backlog.add(frame(n), p, "c", n + 1)
    assert backlog.nbytes == 70 and len(backlog) == 7 and backlog.critical == 2
    assert [int.from_bytes(f[:4], "big") for f in backlog.drain()] == list(range(7))
    assert backlog.nbytes == 0 and len(backlog) == 0 and backlog.critical == 0


def test_shed_drops_lowest_priority_oldest_first_and_remembers_per_channel():
    backlog = Backlog()
    drops = [0, 0, 0, 0]
    for n in range(10):
        backlog.add(frame(n), n % 3, "a" if n % 2 else "b", n + 1)
    backlog.add(frame(10), 3, "a", 11)
    backlog.add(frame(11), NEVER_DROP, "", 0)
    freed = backlog.shed(60, drops)
    # 120 bytes, down to 60: the four low (0, 3, 6, 9), then the two oldest normal (1, 4)
    assert freed == 60 and backlog.nbytes == 60 and drops == [4, 2, 0, 0]
    kept = [int.from_bytes(f[:4], "big") for f in backlog.drain()]
    assert kept == [2, 5, 7, 8, 10, 11]
    notice = backlog.missed_notice()
    assert notice == {"type": "missed", "count": 6, "channels": {
        "b": {"first": 1, "last": 7, "count": 3},   # offsets 1, 5, 7 (n = 0, 4, 6)
        "a": {"first": 2, "last": 10, "count": 3},  # offsets 2, 4, 10 (n = 1, 3, 9)
    }}
    assert backlog.missed_notice() is None


def test_critical_and_replies_are_never_shed():
    backlog = Backlog()
    drops = [0, 0, 0, 0]
    for n in range(5):
        backlog.add(frame(n), 3, "c", n + 1)
        backlog.add(frame(n), NEVER_DROP, "", 0)
    assert backlog.shed(0, drops) == 0 and backlog.nbytes == 100 and drops == [0, 0, 0, 0]
    assert backlog.droppable_bytes() == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 1, 2, 3, NEVER_DROP]), st.integers(1, 300)), max_size=300),
       st.integers(100, 5000))
def test_shedding_as_the_adapter_does_keeps_the_bound_and_the_order(events, limit):
    """Shed to the low-water mark whenever over the limit: what survives is in order, never over the
    limit unless only undroppable frames are left, and every dropped event is in the missed notice."""
    backlog = Backlog()
    drops = [0, 0, 0, 0]
    offsets: dict[str, int] = {}
    for n, (priority, size) in enumerate(events):
        channel = f"c{n % 3}"
        offsets[channel] = offsets.get(channel, 0) + 1
        backlog.add(frame(n, max(size, 4)), priority, channel, offsets[channel])
        if backlog.nbytes > limit:
            backlog.shed(low_water(limit), drops)
            assert backlog.nbytes <= low_water(limit) or backlog.droppable_bytes() == 0
    kept = [int.from_bytes(f[:4], "big") for f in backlog.drain()]
    assert kept == sorted(kept)
    dropped = set(range(len(events))) - set(kept)
    assert all(events[n][0] in (0, 1, 2) for n in dropped)
    assert sum(drops) == len(dropped)
    notice = backlog.missed_notice()
    assert (notice or {"count": 0})["count"] == len(dropped)


def test_budget_sheds_the_largest_first_then_closes():
    budget = Budget(1000)
    budget.used = 1400  # low-water 750: 650 to free
    shed, close = budget.plan([(300, 300, "small"), (800, 500, "big"), (300, 0, "stuck")])
    assert shed == [("big", 300), ("small", 150)] and close == []
    budget.used = 2000  # 1250 to free: all 800 droppable bytes, then the largest remainders
    shed, close = budget.plan([(300, 300, "small"), (800, 500, "big"), (900, 0, "stuck")])
    assert shed == [("big", 300), ("small", 0)] and close == ["stuck"]
    budget.used = 500
    assert budget.plan([(500, 500, "a")]) == ([], []) and not budget.over
