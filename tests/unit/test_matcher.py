"""The matcher, on both core implementations, and their parity."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastws import _core_py
from tests.conftest import IMPLEMENTATIONS


def test_frame_text_header_lengths(core):
    """Frames use 1, 3 or 9 length bytes at the RFC 6455 boundaries."""
    for size, header in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)]:
        frame = core.frame_text(b"x" * size)
        assert frame[0] == 0x81
        assert len(frame) == size + header
        assert frame == _core_py.frame_text(b"x" * size)


def test_channel_subscribers_match(core):
    """Only the channel's subscribers receive its events."""
    matcher = core.Matcher()
    for connection in (1, 2, 3):
        matcher.add(connection, f"u{connection}")
    matcher.subscribe(1, "a:t")
    matcher.subscribe(2, "a:t")
    matcher.subscribe(3, "b:t")
    assert sorted(matcher.match("a:t", "e", "s", 1, "u1")) == [1, 2]
    assert matcher.match("c:t", "e", "s", 1, "u1") == []


def test_subscription_event_types_and_replacement(core):
    """Per-subscription event types filter, and subscribing again replaces them."""
    matcher = core.Matcher()
    matcher.add(1, "u")
    assert matcher.subscribe(1, "a:t", ["x"]) is True
    assert matcher.match("a:t", "y", "s", 1, "u") == []
    assert matcher.subscribe(1, "a:t", None) is False
    assert matcher.match("a:t", "y", "s", 1, "u") == [1]


@pytest.mark.parametrize(
    ("filters", "event", "expected"),
    [
        ({"event_types": ["x"]}, ("x", "s", 1, "p"), True),
        ({"event_types": ["x"]}, ("y", "s", 1, "p"), False),
        ({"sources": ["s"]}, ("x", "s", 1, "p"), True),
        ({"sources": ["s"]}, ("x", "z", 1, "p"), False),
        ({"priorities": [2, 3]}, ("x", "s", 3, "p"), True),
        ({"priorities": [2, 3]}, ("x", "s", 1, "p"), False),
        ({"users": ["p"]}, ("x", "s", 1, "p"), True),
        ({"users": ["p"]}, ("x", "s", 1, "q"), False),
        ({"event_types": ["x"], "sources": ["s"]}, ("x", "z", 1, "p"), False),
        ({}, ("x", "s", 0, "p"), True),
    ],
)
def test_filters_are_anded(core, filters, event, expected):
    """Each non-empty filter list must contain the event's value."""
    matcher = core.Matcher()
    matcher.add(1, "me")
    matcher.subscribe(1, "a:t")
    matcher.set_filters(1, **filters)
    assert (matcher.match("a:t", *event) == [1]) is expected


def test_targeted_events_reach_only_the_target(core):
    """A targeted event goes to the target user's subscribed connections only."""
    matcher = core.Matcher()
    for connection, user in [(1, "a"), (2, "b"), (3, "b"), (4, "b")]:
        matcher.add(connection, user)
    for connection in (1, 2, 3):
        matcher.subscribe(connection, "c:t")
    assert sorted(matcher.match("c:t", "e", "s", 1, "a", "b")) == [2, 3]
    assert matcher.match("c:t", "e", "s", 1, "a", "nobody") == []


def test_remove_cleans_every_index(core):
    """A removed connection is in no channel, no user index, and can be added again."""
    matcher = core.Matcher()
    matcher.add(1, "u")
    matcher.subscribe(1, "a:t")
    matcher.subscribe(1, "b:t")
    matcher.remove(1)
    assert 1 not in matcher and len(matcher) == 0
    assert matcher.channels() == []
    assert matcher.match("a:t", "e", "s", 1, "x", "u") == []
    matcher.add(1, "u")
    assert matcher.subscriptions(1) == []


def test_unsubscribe_reports_whether_it_was_subscribed(core):
    """unsubscribe is idempotent and says whether anything changed."""
    matcher = core.Matcher()
    matcher.add(1, "u")
    matcher.subscribe(1, "a:t")
    assert matcher.unsubscribe(1, "a:t") is True
    assert matcher.unsubscribe(1, "a:t") is False
    assert matcher.subscriber_count("a:t") == 0


names = st.sampled_from(["a", "b", "c"])
operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 7), names),
        st.tuples(st.just("remove"), st.integers(0, 7)),
        st.tuples(st.just("subscribe"), st.integers(0, 7), names, st.one_of(st.none(), st.lists(names, max_size=2))),
        st.tuples(st.just("unsubscribe"), st.integers(0, 7), names),
        st.tuples(
            st.just("filters"),
            st.integers(0, 7),
            st.lists(names, max_size=2),
            st.lists(names, max_size=2),
            st.lists(st.integers(0, 3), max_size=2),
            st.lists(names, max_size=2),
        ),
        st.tuples(st.just("match"), names, names, names, st.integers(0, 3), names, st.one_of(st.none(), names)),
    ),
    max_size=60,
)


def _run(matcher, ops):
    results = []
    for op in ops:
        kind, args = op[0], op[1:]
        try:
            if kind == "add":
                matcher.add(*args)
            elif kind == "remove":
                matcher.remove(*args)
            elif kind == "subscribe":
                results.append(matcher.subscribe(*args))
            elif kind == "unsubscribe":
                results.append(matcher.unsubscribe(*args))
            elif kind == "filters":
                matcher.set_filters(*args)
            else:
                results.append(sorted(matcher.match(*args)))
        except KeyError:
            results.append("KeyError")
    return results


@pytest.mark.skipif(len(IMPLEMENTATIONS) < 2, reason="the compiled core is not built")
@settings(max_examples=300, deadline=None)
@given(operations)
def test_compiled_and_python_matchers_agree(ops):
    """For random connections, subscriptions, filters and events, both implementations give the same answers."""
    from fastws import _core

    assert _run(_core.Matcher(), ops) == _run(_core_py.Matcher(), ops)
