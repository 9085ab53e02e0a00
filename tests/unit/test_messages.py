import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastws.exceptions import ConnectionClosedError, ProtocolError
from fastws.messages import (
    Filters,
    Ping,
    Publish,
    SetFilters,
    Subscribe,
    Unsubscribe,
    decimal,
    decode_command,
    encode_error,
    encode_event,
    iso_timestamp,
    utc_timestamp,
)


def decode(obj):
    return decode_command(orjson.dumps(obj))


def error_of(raw):
    with pytest.raises(ProtocolError) as info:
        decode_command(raw if isinstance(raw, bytes) else orjson.dumps(raw))
    return info.value


def test_publish_defaults():
    """A publish needs only an event: channel defaults to the tenant's, priority to normal, payload to {}."""
    command = decode({"type": "publish", "event": "idea_created"})
    assert command == Publish(None, None, "idea_created", {}, "client", "normal", None)


def test_publish_all_fields():
    """Every publish field is carried through."""
    command = decode(
        {
            "type": "publish",
            "channel": "ideas:t",
            "event": "e",
            "payload": [1],
            "source": "svc",
            "priority": "critical",
            "targetUserId": "u2",
            "ref": "r1",
        }
    )
    assert command == Publish("r1", "ideas:t", "e", [1], "svc", "critical", "u2")


def test_custom_event_is_a_publish_to_the_tenant():
    """{"type": X, "data": ..} publishes event X, as the seed's sendMessage does."""
    command = decode({"type": "custom_event", "data": {"m": 1}, "ref": 3})
    assert command == Publish(3, None, "custom_event", {"m": 1}, "client", "normal", None)


def test_other_commands():
    """subscribe, unsubscribe, ping and filters decode to their commands."""
    assert decode({"type": "subscribe", "channel": "ideas", "eventTypes": ["a"]}) == Subscribe(None, "ideas", frozenset({"a"}))
    assert decode({"type": "subscribe", "channel": "ideas", "eventTypes": []}) == Subscribe(None, "ideas", None)
    assert decode({"type": "unsubscribe", "channel": "ideas", "ref": 1.5}) == Unsubscribe(1.5, "ideas")
    assert decode({"type": "ping", "ref": True}) == Ping(True)
    assert decode({"type": "filters", "filters": {"priority": ["high"], "users": ["u"]}}) == SetFilters(
        None, Filters(priorities=frozenset({"high"}), users=frozenset({"u"}))
    )


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"not json", "invalid_json"),
        (b"", "invalid_json"),
        ([1], "invalid_message"),
        ("text", "invalid_message"),
        ({"type": 5}, "invalid_message"),
        ({"no": "type"}, "invalid_message"),
        ({"type": "frobnicate"}, "unknown_type"),
        ({"type": "ack", "data": 1}, "reserved_type"),
        ({"type": "connection", "data": {}}, "reserved_type"),
        ({"type": "bad\u0001name", "data": {}}, "invalid_event"),
        ({"type": "publish"}, "missing_field"),
        ({"type": "publish", "event": "connection"}, "reserved_type"),
        ({"type": "publish", "event": "e", "priority": "urgent"}, "invalid_priority"),
        ({"type": "publish", "event": "e", "source": ""}, "invalid_source"),
        ({"type": "publish", "event": "e", "channel": 3}, "invalid_channel"),
        ({"type": "publish", "event": "e", "targetUserId": "a\nb"}, "invalid_user_id"),
        ({"type": "subscribe"}, "missing_field"),
        ({"type": "subscribe", "channel": "c", "eventTypes": "e"}, "invalid_field"),
        ({"type": "unsubscribe"}, "missing_field"),
        ({"type": "filters", "filters": []}, "invalid_filters"),
        ({"type": "filters", "filters": {"priority": ["urgent"]}}, "invalid_priority"),
        ({"type": "filters", "filters": {"eventTypes": "e"}}, "invalid_filters"),
        ({"type": "filters", "filters": {"sources": [1]}}, "invalid_filters"),
        ({"type": "ping", "ref": {"a": 1}}, "invalid_field"),
    ],
)
def test_errors_have_documented_codes(raw, code):
    """Each malformed command is refused with its documented code."""
    assert error_of(raw).code == code


def test_errors_carry_the_ref():
    """An error about a command with a ref echoes the ref."""
    assert error_of({"type": "publish", "ref": "r9"}).ref == "r9"


@pytest.mark.parametrize("raw", [b"\xff", b'{"type":"ping","x":"\xed\xa0\x80"}', b'{"a":"\xc3"}'])
def test_invalid_utf8_closes_with_1007(raw):
    """Text that is not UTF-8 is a protocol violation (close 1007), not a JSON error."""
    with pytest.raises(ConnectionClosedError) as info:
        decode_command(raw)
    assert info.value.close_code == 1007


def test_event_shape_and_timestamp():
    """Events carry the seed's fields plus channel, with an ISO-8601 millisecond UTC timestamp."""
    stamp = utc_timestamp()
    assert len(stamp) == 24 and stamp.endswith("Z") and stamp[19] == "."
    event = orjson.loads(encode_event("i", "e", {"k": 1}, stamp, "s", "high", "t", "u", "tenant:t"))
    assert list(event) == ["id", "eventType", "data", "timestamp", "source", "priority", "tenantId", "userId", "channel"]


def test_error_reply_omits_null_ref():
    """An error for a command without ref has no ref key."""
    assert orjson.loads(encode_error("invalid_json", "m")) == {"type": "error", "code": "invalid_json", "message": "m"}


def test_event_ids_are_unique_uuid4_strings():
    """Event ids are valid UUID4 strings and never repeat."""
    import uuid

    from fastws.messages import new_event_id

    ids = [new_event_id() for _ in range(50_000)]
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i for i in ids[:100])


def test_timestamps_follow_the_clock(monkeypatch):
    """The cached timestamp changes with the millisecond."""
    import fastws.messages as messages

    monkeypatch.setattr(messages.time, "time", lambda: 1_700_000_000.123)
    assert messages.utc_timestamp() == "2023-11-14T22:13:20.123Z"
    monkeypatch.setattr(messages.time, "time", lambda: 1_700_000_000.124)
    assert messages.utc_timestamp() == "2023-11-14T22:13:20.124Z"


@given(st.floats(min_value=0, max_value=2**35, allow_nan=False) | st.integers(0, 2**35 * 1000).map(lambda ms: ms / 1000))
def test_iso_timestamp_matches_datetime(unix_time):
    """iso_timestamp writes what an aware datetime writes (Z for +00:00), rounding as it does."""
    from datetime import datetime, timezone

    expected = datetime.fromtimestamp(unix_time, timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z"
    assert iso_timestamp(unix_time) == expected


@pytest.mark.parametrize("text, number", [("0", 0), ("42", 42), ("007", 7), ("9223372036854775807", 2**63 - 1)])
def test_decimal_reads_ascii_digits(text, number):
    """decimal() reads a non-negative integer of ASCII digits."""
    assert decimal(text) == number


@pytest.mark.parametrize("text", ["", "-1", "+1", " 1", "1.0", "\u00b2", "\u0663", "1\u00b2", "0" * 20, "9" * 5000])
def test_decimal_refuses_anything_else(text):
    """Signs, spaces, Unicode digits (superscripts, Arabic-Indic) and more digits than an int64 has are None."""
    assert decimal(text) is None
