"""Property tests (hypothesis, no sockets) for what a hostile client controls.

(a) ``decode_command`` on any bytes and any JSON value: a command of the
    documented types, or ProtocolError with a documented code, or
    ConnectionClosedError(1007) for text that is not UTF-8; nothing else.
(b) ``resolve_channel`` never hands a connection another tenant's channel,
    whatever the name: other tenants' prefixes and suffixes, percent-encoding,
    NUL, Unicode look-alikes, whitespace, names up to 10,000 characters.
(c) Tenant isolation of the sans-I/O Hub: random connects, subscribes, filter
    changes, publishes and disconnects across tenants that are prefixes of one
    another, with the same user ids: no event frame ever reaches a session of
    another tenant, and no subscription to another tenant's channel is granted.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fastws import codes
from fastws.channels import parse_channel, resolve_channel
from fastws.config import Limits
from fastws.exceptions import ChannelError, ConnectionClosedError, ProtocolError
from fastws.hub import Hub
from fastws.messages import (
    PRIORITIES,
    RESERVED_TYPES,
    Filters,
    Ping,
    Publish,
    Refresh,
    SetFilters,
    Subscribe,
    Unsubscribe,
    decode_command,
    encode_ack,
    encode_error,
    encode_pong,
)
from tests.unit.test_hub import ListSink, unframe

ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def name_ok(value: object) -> bool:
    """The rule for user ids, event names and sources (docs/protocol.md, Names), written out again."""
    if type(value) is not str or not value:
        return False
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return len(encoded) <= 128 and not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value)
SCALARS = (str, int, float, bool)

# --- (a) decode_command ---------------------------------------------------------------------

KEYS = [
    "type", "ref", "channel", "event", "payload", "data", "filters", "eventTypes", "sources", "priority",
    "users", "since", "epoch", "source", "targetUserId",
]
TYPES = sorted(RESERVED_TYPES) + ["custom_event", "bad name", "", "a" * 65, "\u00e9v\u00e9nement"]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)  # past 64 bits too: orjson rejects or widens them
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["ideas", "ideas:t1", "tenant:t2", "high", "low", "critical", "x" * 65, "\x00"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), children, max_size=5),
    max_leaves=25,
)
def valid_or_any(valid: st.SearchStrategy) -> st.SearchStrategy:
    """A field as the grammar wants it, or any JSON value in its place."""
    return valid | json_values


def list_of(item: st.SearchStrategy) -> st.SearchStrategy:
    """A list whose items are each valid or any JSON value (a list or an object among them)."""
    return st.lists(valid_or_any(item), max_size=4)


names = st.sampled_from(["e1", "idea_created", "svc", "alice", "a" * 64]) | st.from_regex(r"[A-Za-z0-9_.\-]{1,8}", fullmatch=True)
channel_names = st.sampled_from(["ideas", "ideas:t1", "tenant:t1", "ideas:t2", "ideas:", ":t1", "a:b:c", "x" * 200])
refs = st.none() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8) | st.booleans() | st.floats(allow_nan=False, allow_infinity=False)


def command(kind: st.SearchStrategy, **fields: st.SearchStrategy) -> st.SearchStrategy:
    optional = {"ref": valid_or_any(refs), **{name: valid_or_any(value) for name, value in fields.items()}}
    return st.fixed_dictionaries({"type": kind}, optional=optional)


filters_objects = st.fixed_dictionaries(
    {},
    optional={
        "eventTypes": valid_or_any(list_of(names)),
        "sources": valid_or_any(list_of(names)),
        "priority": valid_or_any(list_of(st.sampled_from(list(PRIORITIES)))),
        "users": valid_or_any(list_of(names)),
    },
)
#: objects shaped like each command, each field valid or not, so decoding gets past the first checks
commands = st.one_of(
    command(st.just("ping")),
    command(st.just("filters"), filters=filters_objects),
    command(
        st.just("subscribe"),
        channel=channel_names,
        eventTypes=list_of(names),
        since=st.integers(0, 2**63),
        epoch=st.text(min_size=1, max_size=64),
    ),
    command(st.just("unsubscribe"), channel=channel_names),
    command(st.just("refresh"), token=st.text(min_size=1, max_size=16)),
    command(
        st.just("publish"),
        channel=channel_names,
        event=names | st.sampled_from(sorted(RESERVED_TYPES)),
        payload=json_values,
        source=names,
        priority=st.sampled_from(list(PRIORITIES)),
        targetUserId=names,
    ),
    command(st.sampled_from(TYPES) | names, data=json_values),
    command(json_values, **{key: json_values for key in KEYS[1:]}),
)


def to_bytes(value: Any) -> bytes:
    """JSON text as a client could send it: the standard library's encoder (any int, any nesting)."""
    return json.dumps(value).encode()


def check_decoded(data: bytes | bytearray | memoryview) -> None:
    """The documented outcomes of decode_command, and nothing else."""
    raw = bytes(data)
    try:
        command = decode_command(data)
    except ProtocolError as exc:  # ChannelError included
        assert exc.code in codes.ERRORS, exc.code
        assert exc.ref is None or type(exc.ref) in SCALARS, exc.ref
        raw.decode("utf-8")  # 1007, not an error reply, for text that is not UTF-8
        orjson.loads(encode_error(exc.code, exc.message, exc.ref))  # the reply can be sent
        return
    except ConnectionClosedError as exc:
        assert exc.close_code == codes.INVALID_PAYLOAD == 1007
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return
        raise AssertionError("1007 for valid UTF-8") from None
    assert type(command) in (SetFilters, Subscribe, Unsubscribe, Publish, Ping, Refresh), command
    assert command.ref is None or type(command.ref) in SCALARS, command
    orjson.loads(encode_pong(command.ref) if type(command) is Ping else encode_ack(command.ref))
    if type(command) is Publish:
        assert name_ok(command.event) and command.event not in RESERVED_TYPES, command
        assert name_ok(command.source), command
        assert command.priority in PRIORITIES, command
        assert command.target_user_id is None or name_ok(command.target_user_id), command
        assert command.channel is None or type(command.channel) is str, command
    elif type(command) is SetFilters:
        filters = command.filters
        assert type(filters) is Filters
        for names in (filters.event_types, filters.sources, filters.users):
            assert all(name_ok(n) for n in names), filters
        assert filters.priorities <= set(PRIORITIES), filters
    elif type(command) in (Subscribe, Unsubscribe):
        assert command.channel is not None, command
        if type(command) is Subscribe and command.event_types is not None:
            assert all(name_ok(n) for n in command.event_types), command
        if type(command) is Subscribe and command.since is not None:
            assert type(command.since) is int and command.since >= 0, command
    elif type(command) is Refresh:
        assert type(command.token) is str and 0 < len(command.token) <= 8192, command


@given(st.binary(max_size=512))
@example(b"\xff\xfe")
@example(b'{"type":"ping","x":"\xed\xa0\x80"}')  # a UTF-8-encoded surrogate
@example(b"\xef\xbb\xbf{}")  # a BOM
@settings(max_examples=400, deadline=None)
def test_decode_command_on_arbitrary_bytes(data):
    """Any bytes: a command, a documented error, or 1007 when (and only when) they are not UTF-8."""
    check_decoded(data)


@given(json_values)
@settings(max_examples=300, deadline=None)
def test_decode_command_on_arbitrary_json(value):
    """Any JSON value: a command or a documented error."""
    check_decoded(to_bytes(value))


@given(commands, st.sampled_from([bytes, bytearray, memoryview]))
# A filters command whose priority list holds a list (or an object): found by this test.
@example({"type": "filters", "filters": {"priority": [[]]}}, bytes)
@example({"type": "filters", "filters": {"priority": [{}]}, "ref": 1}, bytes)
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_decode_command_on_command_shaped_json(obj, kind):
    """Objects with a command type and any values in the known fields (as the server passes them:
    bytes, a reassembly bytearray or a memoryview): a command or a documented error."""
    check_decoded(kind(to_bytes(obj)))


# --- (b) resolve_channel ----------------------------------------------------------------------

ids = st.from_regex(r"[A-Za-z0-9_.\-]{1,64}", fullmatch=True)
small_ids = st.from_regex(r"[A-Za-z0-9_.\-]{1,6}", fullmatch=True)
#: pieces that look like (or hide) a tenant separator or change the tenant
TRICKS = [
    ":", "%3A", "%3a", "%253A", "\x00", "\uff1a", "\ufe55", "\u2236", "\u02d0", " ", "\t", "\n", "\r\n", "\u00a0",
    "\u200b", "\u3000", "/", "\\", "..", ".", "-", "_", "*", "#", "?", "&", "\ufeff",
]
#: Unicode look-alikes of ASCII id characters
LOOKALIKES = {"a": "\uff41", "e": "\u0435", "o": "\u043e", "1": "\uff11", "t": "\uff54", "i": "\u0456", "-": "\u2010", ".": "\u2024", "c": "\u0441"}


@st.composite
def hostile_channels(draw: st.DrawFn, tenant: str, other: str) -> object:
    """A channel name a client of ``tenant`` might send to reach ``other``'s channels (or break parsing)."""
    name = draw(small_ids)
    trick = draw(st.sampled_from(TRICKS))
    kind = draw(st.integers(0, 13))
    if kind == 0:
        return f"{name}:{other}"
    if kind == 1:  # own tenant as a prefix or a suffix of the tenant part
        return draw(st.sampled_from([f"{name}:{tenant}{other}", f"{name}:{other}{tenant}", f"{name}:{tenant}-{other}"]))
    if kind == 2:  # a prefix or a suffix of the own tenant
        cut = draw(st.integers(0, len(tenant)))
        return draw(st.sampled_from([f"{name}:{tenant[:cut]}", f"{name}:{tenant[cut:]}"]))
    if kind == 3:  # a separator in disguise
        return draw(st.sampled_from([f"{name}{trick}{other}", f"{name}:{tenant}{trick}{other}", f"{name}{trick}{tenant}:{other}"]))
    if kind == 4:  # whitespace, NUL and friends around or inside
        return draw(st.sampled_from([f"{trick}{name}:{tenant}", f"{name}:{tenant}{trick}", f"{name}{trick}:{tenant}", f"{name}:{trick}{tenant}"]))
    if kind == 5:  # look-alikes of the own tenant's characters
        swapped = "".join(LOOKALIKES.get(c, c) if draw(st.booleans()) else c for c in tenant)
        return f"{name}:{swapped}"
    if kind == 6:  # several separators
        return draw(st.sampled_from([f"{name}:{tenant}:{other}", f"{name}:{other}:{tenant}", f":{tenant}", f"{name}:", ":", "::"]))
    if kind == 7:  # long
        size = draw(st.integers(60, 10_000))
        return draw(st.sampled_from([name * (size // len(name)) + f":{tenant}", f"{name}:" + tenant * (size // len(tenant) + 1), "a" * size]))
    if kind == 8:
        return draw(st.text(max_size=200))
    if kind == 9:
        return draw(st.text(alphabet=st.sampled_from(list(f"{tenant}{other}:%3A\x00 \uff1a")), max_size=80))
    if kind == 10:  # the tenant channel of someone else, or of oneself spelled otherwise
        return draw(st.sampled_from([f"tenant:{other}", f"tenant:{tenant.upper()}", f"tenant:{tenant.lower()}", f"TENANT:{other}"]))
    if kind == 11:  # not a string
        return draw(st.sampled_from([None, 5, 1.5, True, [f"{name}:{tenant}"], {"channel": name}, f"{name}:{other}".encode(), b""]))
    if kind == 12:  # a str subclass that lies about itself
        return _LyingStr(f"{name}:{other}")
    return name


class _LyingStr(str):
    def partition(self, sep: str) -> tuple[str, str, str]:  # type: ignore[override]
        return ("ideas", ":", "anyone")

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = str.__hash__


def expected_channel(channel: object, tenant: str) -> str | None | ChannelError:
    """A reference for resolve_channel: the channel, or the error code it must raise."""
    if type(channel) is not str:
        return codes.INVALID_CHANNEL
    name, sep, rest = channel.partition(":")
    if not ID.fullmatch(name) or (sep and not ID.fullmatch(rest)):
        return codes.INVALID_CHANNEL
    if not sep:
        return f"{name}:{tenant}"
    return channel if rest == tenant else codes.FORBIDDEN_CHANNEL


def check_resolved(channel: object, tenant: str) -> None:
    expected = expected_channel(channel, tenant)
    try:
        resolved = resolve_channel(channel, tenant)
    except ChannelError as exc:
        assert exc.code in (codes.INVALID_CHANNEL, codes.FORBIDDEN_CHANNEL), exc.code
        assert exc.code == expected, (channel, exc.code, expected)
        return
    assert type(resolved) is str
    name, owner = parse_channel(resolved)
    assert owner == tenant and type(owner) is str, (channel, resolved)
    assert ID.fullmatch(name) and resolved == f"{name}:{tenant}", (channel, resolved)
    assert resolved == expected, (channel, resolved, expected)
    # A channel that names a tenant names this one; a bare name gets this tenant.
    assert resolved == channel or (type(channel) is str and ":" not in channel and resolved == f"{channel}:{tenant}")


@given(st.data(), ids, ids)
@settings(max_examples=1500, deadline=None)
def test_resolve_channel_never_crosses_tenants(data, tenant, other):
    """A resolved channel parses back to (name, tenant) with exactly the connection's tenant;
    anything else raises ChannelError invalid_channel or forbidden_channel, as the grammar says."""
    check_resolved(data.draw(hostile_channels(tenant, other)), tenant)


@pytest.mark.parametrize(
    "channel",
    [
        "ideas:acme-evil", "ideas:acm", "ideas:acmeacme", "ideas:ACME", "ideas%3Aevil", "ideas\uff1aevil",
        "ideas:\uff41cme", "ideas:acme\x00", "ideas\x00:acme", " ideas:acme", "ideas:acme\n", "ideas:acme\r\n",
        "ideas:acme:evil", "ideas::acme", ":acme", "tenant:evil", "a" * 10_000 + ":acme", "ideas:" + "acme" * 2500,
        b"ideas:acme", ["ideas:acme"], None, _LyingStr("ideas:evil"),
    ],
    ids=repr,
)
def test_resolve_channel_named_tricks(channel):
    """The tricks named in the brief, each checked against the reference."""
    check_resolved(channel, "acme")


# --- (c) tenant isolation in the Hub --------------------------------------------------------

#: tenants that are prefixes and suffixes of one another; users with the same ids in each
TENANTS = ["acme", "acme-evil", "acm", "evil.acme", "t1", "t1x"]
USERS = ["alice", "bob", "mallory"]
NAMES = ["ideas", "tenant", "secret", "ideas.acme"]


@st.composite
def channel_refs(draw: st.DrawFn) -> tuple:
    """How a command names a channel: bare, of a tenant (by index: resolved against the session's
    own tenant or another), or mangled."""
    name = draw(st.sampled_from(NAMES))
    kind = draw(st.sampled_from(["bare", "tenant", "tenant", "mangled"]))
    if kind == "bare":
        return ("bare", name)
    if kind == "tenant":
        return ("tenant", name, draw(st.integers(0, len(TENANTS) - 1)))
    return ("mangled", name, draw(st.integers(0, len(TENANTS) - 1)), draw(st.sampled_from(["%3A", "\uff1a", "\x00", " ", "::"])))


def channel_text(ref: tuple) -> str:
    if ref[0] == "bare":
        return ref[1]
    if ref[0] == "tenant":
        return f"{ref[1]}:{TENANTS[ref[2]]}"
    return f"{ref[1]}{ref[3]}{TENANTS[ref[2]]}"


sessions_idx = st.integers(0, 30)
string_lists = st.lists(st.sampled_from(["e1", "e2", "steady", "alice", "bob", "s1", "client"]), max_size=3)
operations = st.one_of(
    st.tuples(st.just("connect"), st.integers(0, len(TENANTS) - 1), st.sampled_from(USERS)),
    st.tuples(st.just("disconnect"), sessions_idx),
    st.tuples(st.just("subscribe"), sessions_idx, channel_refs(), st.none() | string_lists, st.booleans()),
    st.tuples(st.just("unsubscribe"), sessions_idx, channel_refs()),
    st.tuples(
        st.just("filters"),
        sessions_idx,
        st.fixed_dictionaries(
            {},
            optional={
                "eventTypes": string_lists,
                "sources": string_lists,
                "users": string_lists,
                "priority": st.lists(st.sampled_from(list(PRIORITIES)), max_size=2),
            },
        ),
    ),
    st.tuples(
        st.just("publish"),
        sessions_idx,
        st.none() | channel_refs(),
        st.sampled_from(["e1", "e2"]),
        st.none() | st.sampled_from(USERS),
        st.sampled_from(list(PRIORITIES)),
    ),
    st.tuples(st.just("custom"), sessions_idx),
    st.tuples(st.just("server_publish"), st.integers(0, len(TENANTS) - 1), st.none() | channel_refs(), st.none() | st.sampled_from(USERS)),
)


class IsolationRun:
    """Runs operations against a Hub and checks every frame and every subscription as it goes."""

    def __init__(self) -> None:
        self.hub = Hub(Limits(max_subscriptions=6, history_size=8))
        #: (session, sink); disconnected sessions stay (they must get nothing more)
        self.sessions: list[tuple[Any, ListSink]] = []
        self.refs = 0
        self.delivered = 0

    def session(self, index: int) -> tuple[Any, ListSink] | None:
        live = [pair for pair in self.sessions if not pair[0].closed]
        return live[index % len(live)] if live else None

    def send(self, session: Any, message: dict[str, Any]) -> None:
        self.refs += 1
        session.receive(orjson.dumps({**message, "ref": self.refs}))

    def apply(self, op: tuple) -> None:
        kind = op[0]
        if kind == "connect":
            sink = ListSink()
            session = self.hub.connect(sink, TENANTS[op[1]], op[2])
            self.sessions.append((session, sink))
            return
        if kind == "server_publish":  # as the REST API publishes: straight into the hub
            tenant = TENANTS[op[1]]
            channel = None if op[2] is None else channel_text(op[2])
            try:
                self.hub.publish(tenant, "svc", Publish(None, channel, "e1", {"by": "rest"}, "api", "normal", op[3]))
            except ChannelError as exc:
                assert exc.code in (codes.INVALID_CHANNEL, codes.FORBIDDEN_CHANNEL)
            return
        pair = self.session(op[1])
        if pair is None:
            return
        session, sink = pair
        before = set(self.hub.channels_of(session))
        if kind == "disconnect":
            self.hub.disconnect(session)
        elif kind == "subscribe":
            message: dict[str, Any] = {"type": "subscribe", "channel": channel_text(op[2])}
            if op[3] is not None:
                message["eventTypes"] = op[3]
            if op[4]:
                message["since"] = 0
            self.send(session, message)
            self.check_subscribe(session, sink, op[2], before)
        elif kind == "unsubscribe":
            self.send(session, {"type": "unsubscribe", "channel": channel_text(op[2])})
        elif kind == "filters":
            self.send(session, {"type": "filters", "filters": op[2]})
        elif kind == "publish":
            message = {"type": "publish", "event": op[3], "priority": op[5], "payload": {"from": session.tenant_id}}
            if op[2] is not None:
                message["channel"] = channel_text(op[2])
            if op[4] is not None:
                message["targetUserId"] = op[4]
            self.send(session, message)
        elif kind == "custom":
            self.send(session, {"type": "e2", "data": {"from": session.tenant_id}})

    def check_subscribe(self, session: Any, sink: ListSink, ref: tuple, before: set[str]) -> None:
        """A subscribe to another tenant's channel (or a mangled one) is refused and changes nothing."""
        own = ref[0] == "bare" or (ref[0] == "tenant" and TENANTS[ref[2]] == session.tenant_id)
        if own:
            return
        reply = unframe(sink.frames[-1])
        assert reply.get("type") == "error" and reply.get("ref") == self.refs, reply
        assert reply["code"] in (codes.FORBIDDEN_CHANNEL, codes.INVALID_CHANNEL), reply
        assert set(self.hub.channels_of(session)) == before, "a refused subscribe changed the subscriptions"

    def check(self) -> None:
        for session, sink in self.sessions:
            tenant = session.tenant_id
            if not session.closed:
                for channel in self.hub.channels_of(session):
                    assert parse_channel(channel)[1] == tenant, f"{session!r} was granted {channel}"
            for frame in sink.frames:
                message = unframe(frame)
                if "eventType" not in message:
                    continue
                self.delivered += 1
                assert message["tenantId"] == tenant, (session, message)
                assert parse_channel(message["channel"])[1] == tenant, (session, message)
                data = message["data"]
                if isinstance(data, dict) and "from" in data:
                    assert data["from"] == tenant, (session, message)
            if session.closed:
                assert not sink.frames, "a disconnected session was sent frames"
            sink.frames.clear()


@given(st.lists(operations, min_size=1, max_size=60))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_hub_tenant_isolation(ops):
    """No event frame reaches a session of another tenant; no subscribe to another tenant's channel is granted."""
    run = IsolationRun()
    # Every tenant has a connection from the start, so there is always someone to leak to.
    for index in range(len(TENANTS)):
        run.apply(("connect", index, USERS[index % len(USERS)]))
    run.check()
    for op in ops:
        run.apply(op)
        run.check()
