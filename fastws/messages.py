"""The wire format: decode and validate client commands, encode server messages.

Pure functions and dataclasses (frozen, but for :class:`Publish`, made on every
publish: with 9 fields, a frozen dataclass's ``__init__`` costs about 1 µs
here, a plain one 0.2 µs, by ``timeit``); no I/O. Every outgoing message is
encoded once with orjson; :func:`fastws.core.frame_text` wraps the JSON in a
WebSocket frame that can be written to any number of connections.

Client -> server (each with an optional scalar ``ref``, echoed in the reply)::

    {"type":"filters","filters":{"eventTypes":[..],"sources":[..],"priority":[..],"users":[..]}}
    {"type":"subscribe","channel":"ideas:T","eventTypes":[..]}
    {"type":"unsubscribe","channel":"ideas:T"}
    {"type":"publish","channel":"tenant:T","event":"idea_created","payload":{..},
     "source":"idea_service","priority":"normal","targetUserId":"U2"}
    {"type":"ping"}
    {"type":"<event name>","data":..}      a custom event, published to tenant:T

Server -> client: events (see :func:`encode_event`), and the replies
``{"type":"ack"}``, ``{"type":"pong"}``, ``{"type":"error"}``.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Final, Iterable, Union

import orjson

from . import codes
from .channels import is_valid_name
from .exceptions import ConnectionClosedError, ProtocolError

__all__ = [
    "PRIORITIES",
    "PRIORITY_NAMES",
    "RESERVED_TYPES",
    "Filters",
    "SetFilters",
    "Subscribe",
    "Unsubscribe",
    "Publish",
    "Ping",
    "Refresh",
    "Command",
    "decode_command",
    "decode_publish",
    "decode_filters",
    "decode_position",
    "decimal",
    "publish_fields",
    "decode_query_filters",
    "encode_event",
    "encode_ack",
    "encode_pong",
    "encode_error",
    "new_event_id",
    "iso_timestamp",
    "utc_timestamp",
]

#: priority name -> rank; a higher rank is more important
PRIORITIES: Final[dict[str, int]] = {"low": 0, "normal": 1, "high": 2, "critical": 3}
PRIORITY_NAMES: Final[tuple[str, ...]] = ("low", "normal", "high", "critical")
DEFAULT_PRIORITY: Final = "normal"

COMMANDS: Final = frozenset({"filters", "subscribe", "unsubscribe", "publish", "ping", "refresh"})
#: names a client can never use as a custom type or an event name: the
#: commands, the server's own event and reply types, and names kept for
#: commands to come
RESERVED_TYPES: Final = COMMANDS | frozenset(
    {"connection", "ack", "error", "pong", "missed", "refresh", "auth", "history", "presence", "system", "disconnect"}
)

_MAX_FILTER_ITEMS: Final = 64
_SCALARS: Final = (str, int, float, bool)

JSON = Any


@dataclass(frozen=True, slots=True)
class Filters:
    """A connection's filters; an empty set means "any". An event passes when it matches every non-empty set."""

    event_types: frozenset[str] = frozenset()
    sources: frozenset[str] = frozenset()
    priorities: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()

    def to_json(self) -> dict[str, list[str]]:
        return {
            "eventTypes": sorted(self.event_types),
            "sources": sorted(self.sources),
            "priority": sorted(self.priorities, key=PRIORITIES.__getitem__),
            "users": sorted(self.users),
        }


@dataclass(frozen=True, slots=True)
class SetFilters:
    ref: JSON
    filters: Filters


@dataclass(frozen=True, slots=True)
class Subscribe:
    ref: JSON
    channel: str
    #: per-subscription event types; None means any
    event_types: frozenset[str] | None
    #: recovery: replay what came after this offset of this epoch (since None: no recovery)
    since: int | None = None
    epoch: str | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    ref: JSON
    channel: str


@dataclass(slots=True)  # not frozen: made on every publish (see the module's docstring)
class Publish:
    ref: JSON
    #: as the client sent it; None means the tenant channel
    channel: str | None
    event: str
    payload: JSON
    source: str
    priority: str
    target_user_id: str | None


@dataclass(frozen=True, slots=True)
class Ping:
    ref: JSON


@dataclass(frozen=True, slots=True)
class Refresh:
    """A new token for the connection (same tenant and user), before the current one expires."""

    ref: JSON
    token: str


Command = Union[SetFilters, Subscribe, Unsubscribe, Publish, Ping, Refresh]


def _string_list(value: object, code: str, ref: JSON) -> frozenset[str]:
    if value is None:
        return frozenset()
    if type(value) is not list or len(value) > _MAX_FILTER_ITEMS:
        raise ProtocolError(code, f"expected a list of at most {_MAX_FILTER_ITEMS} strings", ref)
    for item in value:
        if not is_valid_name(item):
            raise ProtocolError(code, "list items must be text of 1-128 bytes without control characters", ref)
    return frozenset(value)


def _priority_list(value: object, ref: JSON) -> frozenset[str]:
    if value is None:
        return frozenset()
    if type(value) is not list or len(value) > len(PRIORITIES):
        raise ProtocolError(codes.INVALID_FILTERS, "priority must be a list of priority names", ref)
    for item in value:
        if type(item) is not str or item not in PRIORITIES:
            raise ProtocolError(codes.INVALID_PRIORITY, f"unknown priority {item!r:.40}", ref)
    return frozenset(value)


#: the keys a filters object may have
FILTER_KEYS = ("eventTypes", "sources", "priority", "users")
#: the keys a subscribe command may have
SUBSCRIBE_KEYS = frozenset(("type", "ref", "channel", "eventTypes", "since", "epoch"))


def _unknown_key(obj: dict[str, Any], known: Iterable[str]) -> str | None:
    for key in obj:
        if key not in known:
            return key
    return None


def decode_filters(value: object, ref: JSON = None) -> Filters:
    """Validate a filters object. An unknown key is an error naming it: a misspelt filter
    (``events`` for ``eventTypes``) would otherwise filter nothing, silently."""
    if value is None:
        return Filters()
    if type(value) is not dict:
        raise ProtocolError(codes.INVALID_FILTERS, "filters must be an object", ref)
    unknown = _unknown_key(value, FILTER_KEYS)
    if unknown is not None:
        raise ProtocolError(
            codes.INVALID_FILTERS, f"unknown filter {unknown!r:.40} (known: {', '.join(FILTER_KEYS)})", ref
        )
    return Filters(
        event_types=_string_list(value.get("eventTypes"), codes.INVALID_FILTERS, ref),
        sources=_string_list(value.get("sources"), codes.INVALID_FILTERS, ref),
        priorities=_priority_list(value.get("priority"), ref),
        users=_string_list(value.get("users"), codes.INVALID_FILTERS, ref),
    )


def decode_position(since: object, epoch: object, ref: JSON = None) -> tuple[int | None, str | None]:
    """Validate a recovery position: ``since`` a non-negative integer offset, ``epoch`` a string."""
    if since is None:
        if epoch is not None:
            raise ProtocolError(codes.INVALID_FIELD, "'epoch' goes with 'since'", ref)
        return None, None
    if type(since) is not int or not 0 <= since < 2**63:
        raise ProtocolError(codes.INVALID_FIELD, "'since' must be a non-negative integer offset", ref)
    if epoch is not None and (type(epoch) is not str or not 0 < len(epoch) <= 64):
        raise ProtocolError(codes.INVALID_FIELD, "'epoch' must be the epoch string a server gave", ref)
    return since, epoch


#: digits of the largest offset (2**63 - 1)
_MAX_DECIMAL_DIGITS: Final = 19


def decimal(text: str) -> int | None:
    """A non-negative integer written in ASCII digits (a query parameter), or None.

    ``str.isdigit()`` alone also takes ``²`` (which ``int()`` refuses) and ``٣``, and ``int()``
    refuses more than 4,300 digits: both would be an unexpected exception, not a 400.
    """
    if not (0 < len(text) <= _MAX_DECIMAL_DIGITS and text.isascii() and text.isdigit()):
        return None
    return int(text)


def decode_query_filters(query: dict[str, str]) -> Filters | None:
    """Filters given on a connect URL as comma lists: eventTypes, sources, priority, users."""
    lists = {}
    for key in ("eventTypes", "sources", "priority", "users"):
        value = query.get(key)
        if value:
            lists[key] = [item for item in value.split(",") if item]
    return decode_filters(lists) if lists else None


def _event_name(value: object, ref: JSON) -> str:
    if value is None:
        raise ProtocolError(codes.MISSING_FIELD, "'event' is required", ref)
    if not is_valid_name(value):
        raise ProtocolError(codes.INVALID_EVENT, None, ref)
    if value in RESERVED_TYPES:
        raise ProtocolError(codes.RESERVED_TYPE, f"event name {value!r} is reserved", ref)
    return value  # type: ignore[return-value]


def decode_publish(obj: dict[str, Any], default_source: str, ref: JSON = None) -> Publish:
    """Validate the fields of a publish (WS command or REST body)."""
    channel = obj.get("channel")
    if channel is not None and type(channel) is not str:
        raise ProtocolError(codes.INVALID_CHANNEL, "'channel' must be a string", ref)
    event = _event_name(obj.get("event"), ref)
    source = obj.get("source")
    if source is None:
        source = default_source
    elif not is_valid_name(source):
        raise ProtocolError(codes.INVALID_SOURCE, None, ref)
    priority = obj.get("priority")
    if priority is None:
        priority = DEFAULT_PRIORITY
    elif type(priority) is not str or priority not in PRIORITIES:
        raise ProtocolError(codes.INVALID_PRIORITY, f"unknown priority {priority!r:.40}", ref)
    target = obj.get("targetUserId")
    if target is not None and not is_valid_name(target):
        raise ProtocolError(codes.INVALID_USER_ID, "'targetUserId' is not a valid user id", ref)
    payload = obj.get("payload")
    return Publish(ref, channel, event, {} if payload is None else payload, source, priority, target)


def _ref_of(obj: dict[str, Any]) -> JSON:
    ref = obj.get("ref")
    if ref is not None and type(ref) not in _SCALARS:
        raise ProtocolError(codes.INVALID_FIELD, "'ref' must be a JSON scalar")
    return ref


def decode_command(data: bytes | memoryview) -> Command:
    """Decode one client message (a complete, UTF-8 text frame payload).

    Raises ProtocolError with the message's ref attached (when it had one), and
    ConnectionClosedError(1007) for text that is not UTF-8 (valid JSON always is).
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise ConnectionClosedError(codes.INVALID_PAYLOAD, "text message is not valid UTF-8") from None
        raise ProtocolError(codes.INVALID_JSON) from None
    if type(obj) is not dict:
        raise ProtocolError(codes.INVALID_MESSAGE, "a message must be a JSON object")
    ref = _ref_of(obj)
    kind = obj.get("type")
    if type(kind) is not str:
        raise ProtocolError(codes.INVALID_MESSAGE, "'type' must be a string", ref)
    if kind == "publish":
        return decode_publish(obj, "client", ref)
    if kind == "subscribe":
        unknown = _unknown_key(obj, SUBSCRIBE_KEYS)
        if unknown is not None:
            raise ProtocolError(codes.INVALID_FIELD, f"unknown field {unknown!r:.40} in subscribe "
                                f"(known: channel, eventTypes, since, epoch, ref)", ref)
        channel = obj.get("channel")
        if channel is None:
            raise ProtocolError(codes.MISSING_FIELD, "'channel' is required", ref)
        event_types = obj.get("eventTypes")
        since, epoch = decode_position(obj.get("since"), obj.get("epoch"), ref)
        return Subscribe(
            ref,
            channel,
            None if not event_types else _string_list(event_types, codes.INVALID_FIELD, ref),
            since,
            epoch,
        )
    if kind == "unsubscribe":
        channel = obj.get("channel")
        if channel is None:
            raise ProtocolError(codes.MISSING_FIELD, "'channel' is required", ref)
        return Unsubscribe(ref, channel)
    if kind == "ping":
        return Ping(ref)
    if kind == "refresh":
        token = obj.get("token")
        if type(token) is not str or not 0 < len(token) <= 8192:
            raise ProtocolError(codes.MISSING_FIELD, "'token' must be the new token", ref)
        return Refresh(ref, token)
    if kind == "filters":
        return SetFilters(ref, decode_filters(obj.get("filters"), ref))
    if "data" not in obj:
        raise ProtocolError(codes.UNKNOWN_TYPE, f"unknown type {kind!r:.64}", ref)
    # A custom event, as the seed's sendMessage({type, data}) sends it.
    if kind in RESERVED_TYPES:
        raise ProtocolError(codes.RESERVED_TYPE, f"type {kind!r} is reserved", ref)
    if not is_valid_name(kind):
        raise ProtocolError(codes.INVALID_EVENT, None, ref)
    return Publish(ref, None, kind, obj["data"], "client", DEFAULT_PRIORITY, None)


def publish_fields(
    event: str,
    payload: JSON = None,
    channel: str | None = None,
    source: str | None = None,
    priority: str | None = None,
    target_user_id: str | None = None,
) -> dict[str, JSON]:
    """The wire fields of a publish (WS command without its type, or a REST body), None ones left out."""
    fields: dict[str, JSON] = {"event": event}
    for key, value in (("payload", payload), ("channel", channel), ("source", source), ("priority", priority),
                       ("targetUserId", target_user_id)):
        if value is not None:
            fields[key] = value
    return fields


# --- encoding -----------------------------------------------------------------


# Event ids are UUID4s, as the seed's: 122 random bits each, drawn from a generator
# seeded from the system's once per process (no system call per event). Ids are not
# secrets (they grant nothing; connection ids come from os.urandom), but they must not
# count: a counter would tell one tenant how busy the others are.
_ID_BITS = random.Random(os.urandom(32)).getrandbits
_ID_VERSION = 0x4 << 76 | 0x2 << 62  # version 4, variant 10 (RFC 9562)
_ID_CLEAR = ~(0xF << 76 | 0x3 << 62) & (1 << 128) - 1
_last_millisecond = -1
_last_timestamp = ""
_last_second = -1
_last_second_text = ""


def new_event_id() -> str:
    """A random UUID4 (see above)."""
    h = "%032x" % (_ID_BITS(128) & _ID_CLEAR | _ID_VERSION)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def iso_timestamp(unix_time: float) -> str:
    """``unix_time`` as ISO-8601 UTC with milliseconds and Z: ``2024-01-15T10:30:00.123Z``.

    The same text as ``datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")``
    with ``Z`` for ``+00:00``, formatted from :func:`time.gmtime` (the date and
    time of the last second asked for are kept): on CPython 3.11 an aware
    datetime looks up its tzinfo's ``utcoffset`` by a name string it creates
    per call, and the interpreter's type-attribute cache keeps such strings
    alive (up to 4,096 of them), pinning allocator arenas that a wave of
    connections had filled (docs/design.md, "A connection's memory").
    """
    global _last_second, _last_second_text
    seconds = math.floor(unix_time)
    microseconds = round((unix_time - seconds) * 1_000_000)  # the fraction is exact; rounded as datetime does
    if microseconds == 1_000_000:
        seconds, microseconds = seconds + 1, 0
    if seconds != _last_second:
        t = time.gmtime(seconds)
        _last_second_text = (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
                             f"T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.")
        _last_second = seconds
    return f"{_last_second_text}{microseconds // 1000:03d}Z"


def utc_timestamp() -> str:
    """Now, as :func:`iso_timestamp` (formatted once per millisecond)."""
    global _last_millisecond, _last_timestamp
    millisecond = int(time.time() * 1000)
    if millisecond != _last_millisecond:
        _last_timestamp = iso_timestamp(millisecond / 1000)
        _last_millisecond = millisecond
    return _last_timestamp


def encode_event(
    event_id: str,
    event_type: str,
    data: JSON,
    timestamp: str,
    source: str,
    priority: str,
    tenant_id: str,
    user_id: str,
    channel: str,
) -> bytes:
    """The JSON of one server -> client event, in the seed's shape plus ``channel``."""
    return orjson.dumps(
        {
            "id": event_id,
            "eventType": event_type,
            "data": data,
            "timestamp": timestamp,
            "source": source,
            "priority": priority,
            "tenantId": tenant_id,
            "userId": user_id,
            "channel": channel,
        }
    )


def encode_ack(ref: JSON, **extra: JSON) -> bytes:
    return orjson.dumps({"type": "ack", "ref": ref, **extra})


def encode_pong(ref: JSON) -> bytes:
    if ref is None:
        return b'{"type":"pong"}'
    return orjson.dumps({"type": "pong", "ref": ref})


def encode_error(code: str, message: str, ref: JSON = None) -> bytes:
    reply: dict[str, JSON] = {"type": "error", "code": code, "message": message}
    if ref is not None:
        reply["ref"] = ref
    return orjson.dumps(reply)
