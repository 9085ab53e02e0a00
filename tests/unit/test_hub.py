"""Session and Hub without sockets: commands in, frames out through a list sink."""

from __future__ import annotations

import orjson
import pytest

from fastws.config import Limits
from fastws.hub import Hub


def unframe(frame: bytes) -> dict:
    assert frame[0] == 0x81
    length = frame[1]
    offset = 2
    if length == 126:
        length, offset = int.from_bytes(frame[2:4], "big"), 4
    elif length == 127:
        length, offset = int.from_bytes(frame[2:10], "big"), 10
    assert len(frame) == offset + length
    return orjson.loads(frame[offset:])


class ListSink:
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.closed: tuple[int, str] | None = None

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)

    def send_event(self, frame: bytes, priority: int, channel: str, offset: int) -> None:
        self.frames.append(frame)

    def close(self, close_code: int, reason: str) -> None:
        self.closed = (close_code, reason)

    def take(self) -> list[dict]:
        messages = [unframe(f) for f in self.frames]
        self.frames.clear()
        return messages


@pytest.fixture
def hub():
    return Hub(Limits(max_subscriptions=3))


def connect(hub, tenant="t", user="u"):
    sink = ListSink()
    session = hub.connect(sink, tenant, user)
    return session, sink


def send(session, message):
    session.receive(orjson.dumps(message))


def test_welcome_event(hub):
    """connect() subscribes tenant:T and queues the welcome event with connectionId, channels and limits."""
    session, sink = connect(hub, "acme", "alice")
    (welcome,) = sink.take()
    assert welcome["eventType"] == "connection"
    assert welcome["channel"] == "tenant:acme"
    assert (welcome["tenantId"], welcome["userId"]) == ("acme", "alice")
    assert welcome["data"]["connectionId"] == session.connection_id
    assert welcome["data"]["channels"] == ["tenant:acme"]
    assert welcome["data"]["limits"]["maxSubscriptions"] == 3


def test_publish_fans_out_one_frame_object(hub):
    """One publish hands the very same frame bytes to every recipient, publisher included."""
    sessions = [connect(hub, user=f"u{i}") for i in range(3)]
    for _, sink in sessions:
        sink.take()
    send(sessions[0][0], {"type": "publish", "event": "e", "payload": {"n": 1}})
    frames = [sink.frames[0] for _, sink in sessions]
    assert all(frame is frames[0] for frame in frames)
    event = unframe(frames[0])
    assert (event["eventType"], event["data"], event["userId"]) == ("e", {"n": 1}, "u0")
    assert hub.metrics.events_sent == 3 and hub.metrics.events_published == 1


def test_ack_precedes_the_publishers_copy(hub):
    """A publish with a ref is acked (with the event id) before the publisher's own copy."""
    session, sink = connect(hub)
    sink.take()
    send(session, {"type": "publish", "event": "e", "ref": 7})
    ack, event = sink.take()
    assert ack == {"type": "ack", "ref": 7, "id": event["id"], "offset": event["offset"]}


def test_no_ref_no_ack(hub):
    """Commands without a ref get no ack."""
    session, sink = connect(hub)
    sink.take()
    send(session, {"type": "subscribe", "channel": "ideas"})
    send(session, {"type": "filters", "filters": {}})
    send(session, {"type": "unsubscribe", "channel": "ideas"})
    assert sink.take() == []


def test_subscribe_limit_and_failed_command_changes_nothing(hub):
    """Past max_subscriptions a subscribe fails with too_many_subscriptions and nothing changes."""
    session, sink = connect(hub)
    sink.take()
    send(session, {"type": "subscribe", "channel": "a", "ref": 1})
    send(session, {"type": "subscribe", "channel": "b", "ref": 2})
    send(session, {"type": "subscribe", "channel": "c", "ref": 3})
    replies = sink.take()
    assert [r["type"] for r in replies] == ["ack", "ack", "error"]
    assert replies[2]["code"] == "too_many_subscriptions" and replies[2]["ref"] == 3
    assert hub.channels_of(session) == ["a:t", "b:t", "tenant:t"]
    send(session, {"type": "subscribe", "channel": "a", "eventTypes": ["x"], "ref": 4})
    assert sink.take()[0]["type"] == "ack"  # replacing an existing subscription is not a new one


def test_tenants_are_isolated(hub):
    """Events of tenant A never reach tenant B, even on same-named channels."""
    a, a_sink = connect(hub, "A")
    b, b_sink = connect(hub, "B")
    send(b, {"type": "subscribe", "channel": "ideas"})
    a_sink.take(), b_sink.take()
    send(a, {"type": "publish", "event": "e"})
    send(a, {"type": "publish", "event": "e", "channel": "ideas"})
    send(a, {"type": "publish", "event": "e", "channel": "ideas:B", "ref": 1})
    assert b_sink.take() == []
    assert a_sink.take()[-1]["code"] == "forbidden_channel"


def test_disconnect_forgets_everything(hub):
    """After disconnect a session gets nothing and counts are back to zero."""
    session, sink = connect(hub)
    send(session, {"type": "subscribe", "channel": "x"})
    hub.disconnect(session)
    hub.disconnect(session)
    other, _ = connect(hub, user="v")
    sink.take()
    send(other, {"type": "publish", "event": "e", "channel": "x"})
    assert sink.take() == []
    assert hub.metrics.active_connections == 1
    assert hub.tenant("t").channels == {"tenant:t": 1}


def test_tracked_names_are_bounded():
    """GET /api/websocket's event_types and sources per tenant stop growing at the limit."""
    hub = Hub(Limits(max_tracked_names=5))
    session, _ = connect(hub)
    for i in range(20):
        send(session, {"type": "publish", "event": f"e{i}", "source": f"s{i}"})
    tenant = hub.tenant("t")
    assert len(tenant.event_types) == 5 and len(tenant.sources) == 5


def test_idle_tenants_are_bounded():
    """Tenants seen only through publishes are remembered up to max_idle_tenants, oldest forgotten first."""
    hub = Hub(Limits(max_idle_tenants=3))
    kept, _ = connect(hub, "active")
    from fastws.messages import Publish

    for i in range(10):
        hub.publish(f"t{i}", "u", Publish(None, None, "e", {}, "api", "normal", None))
    assert set(hub.tenants()) == {"active", "t7", "t8", "t9"}
    hub.disconnect(kept)
    hub.publish("t10", "u", Publish(None, None, "e", {}, "api", "normal", None))
    assert set(hub.tenants()) == {"t9", "active", "t10"}
