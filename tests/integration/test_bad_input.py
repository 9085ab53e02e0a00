"""Bad input gets a clear error or close code, and hurts no one else.

The hostile side is the raw-socket WebSocket client of ``tests.rawws`` (no
WebSocket library between the test and the wire), so frames can carry any FIN,
RSV, opcode, length and payload. Well-behaved clients are ``tests.helpers.Client``.

Fatal cases send their frames with a control-PING barrier after each frame but
the last, so a test knows exactly which frame made the server close.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from fastws.config import Limits, Settings
from tests.helpers import Client
from tests.rawws import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    RawClient,
    close_payload,
    wait_until,
    ws_frame,
)

MAX_MESSAGE = 4096


@pytest.fixture
def settings():
    return Settings(host="127.0.0.1", port=0, drain_timeout=2.0, limits=Limits(max_message_size=MAX_MESSAGE))


@pytest.fixture
async def connect_raw(server):
    """A factory of raw clients, all closed at teardown."""
    clients: list[RawClient] = []

    async def connect(user_id: str = "evil", tenant_id: str = "t1") -> RawClient:
        client = await RawClient.connect(server.ws_url, tenant_id, user_id)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await client.close()


# --- the cases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FatalCase:
    id: str
    frames: list[bytes]
    close_code: int
    #: the frames (0-based, inclusive) after which the close may come; default: the last one
    close_after: tuple[int, int] | None = None

    def window(self) -> tuple[int, int]:
        last = len(self.frames) - 1
        return self.close_after or (last, last)


async def run_fatal(raw: RawClient, case: FatalCase) -> tuple[int | None, int]:
    """Send the case's frames, a PING barrier after each but the last; (close code, frame that drew it)."""
    for index, data in enumerate(case.frames[:-1]):
        if not await raw.control_barrier(data):
            return raw.close_code, index
    raw.send_raw(case.frames[-1])
    return await raw.expect_close(), len(case.frames) - 1


PING_MSG = b'{"type":"ping"}'
# 4 fragments of 1 KiB make exactly MAX_MESSAGE (allowed); the 5th crosses it; 10 KiB in all.
_KIB_FRAGMENTS = (
    [ws_frame(TEXT, b"[" + b" " * 1023, fin=False)]
    + [ws_frame(CONTINUATION, b" " * 1024, fin=False) for _ in range(8)]
    + [ws_frame(CONTINUATION, b" " * 1023 + b"]")]
)

FATAL_CASES = [
    FatalCase("text-rsv1", [ws_frame(TEXT, PING_MSG, rsv1=True)], 1002),
    FatalCase("text-rsv2", [ws_frame(TEXT, PING_MSG, rsv2=True)], 1002),
    FatalCase("text-rsv3", [ws_frame(TEXT, PING_MSG, rsv3=True)], 1002),
    *(
        FatalCase(f"opcode-{opcode:#x}", [ws_frame(opcode, PING_MSG)], 1002)
        for opcode in (0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF)
    ),
    FatalCase("continuation-without-start", [ws_frame(CONTINUATION, PING_MSG)], 1002),
    FatalCase("unfinished-continuation-without-start", [ws_frame(CONTINUATION, b"{", fin=False)], 1002),
    FatalCase(
        "text-while-fragmented-message-unfinished",
        [ws_frame(TEXT, b'{"type":', fin=False), ws_frame(TEXT, PING_MSG)],
        1002,
    ),
    FatalCase("fragmented-ping", [ws_frame(PING, b"x", fin=False)], 1002),
    FatalCase("ping-126-bytes", [ws_frame(PING, b"x" * 126)], 1002),
    FatalCase("close-1-byte-payload", [ws_frame(CLOSE, b"\x03")], 1002),
    *(
        FatalCase(f"close-code-{code}", [ws_frame(CLOSE, close_payload(code))], 1002)
        for code in (0, 999, 1004, 1005, 1006, 1015, 2000, 5000)
    ),
    FatalCase("close-1000", [ws_frame(CLOSE, close_payload(1000, b"bye"))], 1000),
    FatalCase("close-reason-invalid-utf8", [ws_frame(CLOSE, close_payload(1000, b"\xff\xfe"))], 1007),
    FatalCase("binary", [ws_frame(BINARY, PING_MSG)], 1003),
    FatalCase(
        "fragmented-binary",
        [ws_frame(BINARY, b"ab", fin=False), ws_frame(CONTINUATION, b"cd", fin=False), ws_frame(CONTINUATION, b"ef")],
        1003,
    ),
    FatalCase("invalid-utf8-in-json", [ws_frame(TEXT, b'{"type":"ping","x":"\xff"}')], 1007),
    FatalCase("invalid-utf8-bare", [ws_frame(TEXT, b"\xff\xfe")], 1007),
    FatalCase(
        # E2 82 is a valid start of a 3-byte sequence; "(" after it is not: invalid only once the
        # second fragment is in, reported at the latest at the end of the message.
        "invalid-utf8-split-across-fragments",
        [
            ws_frame(TEXT, b'{"type":"ping","x":"\xe2\x82', fin=False),
            ws_frame(CONTINUATION, b"(", fin=False),
            ws_frame(CONTINUATION, b'"}'),
        ],
        1007,
        close_after=(1, 2),
    ),
    FatalCase("frame-over-max-message-size", [ws_frame(TEXT, PING_MSG.ljust(MAX_MESSAGE + 1))], 1009),
    FatalCase("frame-header-claims-1-tib", [ws_frame(TEXT, b"", length=1 << 40)], 1009),
    # The server must close on the fragment that crosses the cap (the 5th), not buffer 10 KiB.
    FatalCase("fragments-over-max-message-size", _KIB_FRAGMENTS, 1009, close_after=(4, 4)),
]

#: beyond the brief's list: RSV bits and masking on other frame types
EXTRA_FATAL_CASES = [
    FatalCase("ping-rsv1", [ws_frame(PING, b"x", rsv1=True)], 1002),
    FatalCase("pong-rsv1", [ws_frame(PONG, b"x", rsv1=True)], 1002),
    FatalCase("close-rsv1", [ws_frame(CLOSE, close_payload(1000), rsv1=True)], 1002),
    FatalCase(
        "continuation-rsv1",
        [ws_frame(TEXT, b'{"type":', fin=False), ws_frame(CONTINUATION, b'"ping"}', rsv1=True)],
        1002,
    ),
    FatalCase("binary-rsv1", [ws_frame(BINARY, b"x", rsv1=True)], 1002),
    FatalCase("unmasked-text", [ws_frame(TEXT, PING_MSG, masked=False)], 1002),
]

NO_REF = object()


@dataclass(frozen=True)
class ErrorCase:
    id: str
    message: bytes | dict[str, Any]
    code: str
    #: the ref the reply must echo, or NO_REF: the reply has no ref
    ref: Any = NO_REF


def _publish(**fields: Any) -> dict[str, Any]:
    return {"type": "publish", "event": "idea_created", **fields}


def _filters(ref: Any, **filters: Any) -> dict[str, Any]:
    return {"type": "filters", "filters": filters, "ref": ref}


_BAD_CHANNELS = [
    ("space", "my ideas", "invalid_channel"),
    ("two-colons", "ideas:t1:x", "invalid_channel"),
    ("name-65-chars", "a" * 65, "invalid_channel"),
    ("qualified-name-65-chars", "a" * 65 + ":t1", "invalid_channel"),
    ("empty", "", "invalid_channel"),
    ("empty-tenant", "ideas:", "invalid_channel"),
    ("number", 5, "invalid_channel"),
    ("list", ["ideas"], "invalid_channel"),
    ("other-tenant", "ideas:t2", "forbidden_channel"),
    ("tenant-prefix", "ideas:t1x", "forbidden_channel"),
    ("other-tenant-wide", "tenant:t2", "forbidden_channel"),
]

ERROR_CASES = [
    ErrorCase("invalid-json-brace", b"{", "invalid_json"),
    ErrorCase("invalid-json-text", b"not json", "invalid_json"),
    ErrorCase("invalid-json-trailing-comma", b'{"type":"ping","ref":1,}', "invalid_json"),
    ErrorCase("invalid-json-empty", b"", "invalid_json"),
    ErrorCase("json-array", b'[{"type":"ping"}]', "invalid_message"),
    ErrorCase("json-number", b"42", "invalid_message"),
    ErrorCase("json-string", b'"ping"', "invalid_message"),
    ErrorCase("json-null", b"null", "invalid_message"),
    ErrorCase("json-true", b"true", "invalid_message"),
    ErrorCase("missing-type", {"ref": 1}, "invalid_message", 1),
    ErrorCase("type-number", {"type": 5, "ref": "r"}, "invalid_message", "r"),
    ErrorCase("type-null", {"type": None}, "invalid_message"),
    ErrorCase("type-object", {"type": {"name": "ping"}, "ref": 2}, "invalid_message", 2),
    ErrorCase("unknown-type-without-data", {"type": "whatever", "ref": 3}, "unknown_type", 3),
    ErrorCase("reserved-type-connection", {"type": "connection", "data": {}, "ref": 4}, "reserved_type", 4),
    ErrorCase("reserved-type-ack", {"type": "ack", "data": 1, "ref": 5}, "reserved_type", 5),
    ErrorCase("custom-type-invalid-name", {"type": "bad\u0001name", "data": 1, "ref": 6}, "invalid_event", 6),
    ErrorCase("publish-reserved-event", _publish(event="connection", ref=7), "reserved_type", 7),
    ErrorCase("publish-missing-event", {"type": "publish", "ref": 8}, "missing_field", 8),
    ErrorCase("publish-invalid-event", _publish(event="a\u0000b", ref=9), "invalid_event", 9),
    ErrorCase("publish-bad-priority", _publish(priority="urgent", ref=10), "invalid_priority", 10),
    ErrorCase("publish-priority-number", _publish(priority=1, ref=11), "invalid_priority", 11),
    ErrorCase("publish-bad-source", _publish(source="a\tb", ref=12), "invalid_source", 12),
    ErrorCase("publish-bad-target-user", _publish(targetUserId=7, ref=13), "invalid_user_id", 13),
    *(
        ErrorCase(f"publish-channel-{name}", _publish(channel=channel, ref=f"p-{name}"), code, f"p-{name}")
        for name, channel, code in _BAD_CHANNELS
    ),
    *(
        ErrorCase(f"subscribe-channel-{name}", {"type": "subscribe", "channel": channel, "ref": name}, code, name)
        for name, channel, code in _BAD_CHANNELS
    ),
    ErrorCase(
        "unsubscribe-other-tenant", {"type": "unsubscribe", "channel": "ideas:t2", "ref": 14}, "forbidden_channel", 14
    ),
    ErrorCase("subscribe-missing-channel", {"type": "subscribe", "ref": 15}, "missing_field", 15),
    ErrorCase("subscribe-null-channel", {"type": "subscribe", "channel": None, "ref": 16}, "missing_field", 16),
    ErrorCase("unsubscribe-missing-channel", {"type": "unsubscribe", "ref": 17}, "missing_field", 17),
    ErrorCase(
        "subscribe-event-types-not-a-list",
        {"type": "subscribe", "channel": "ideas", "eventTypes": "x", "ref": 18},
        "invalid_field",
        18,
    ),
    ErrorCase("filters-list", {"type": "filters", "filters": ["high"], "ref": 19}, "invalid_filters", 19),
    ErrorCase("filters-string", {"type": "filters", "filters": "high", "ref": 20}, "invalid_filters", 20),
    ErrorCase("filters-bad-priority", _filters(priority=["urgent"], ref=21), "invalid_priority", 21),
    ErrorCase("filters-priority-number", _filters(priority=[2], ref=22), "invalid_priority", 22),
    ErrorCase("filters-event-types-bad-item", _filters(eventTypes=["a\u007fb"], ref=23), "invalid_filters", 23),
    ErrorCase("ref-object", {"type": "ping", "ref": {"id": 1}}, "invalid_field"),
    ErrorCase("ref-list", {"type": "ping", "ref": [1]}, "invalid_field"),
    ErrorCase("ref-object-on-a-bad-command", {"type": "publish", "ref": {"id": 1}}, "invalid_field"),
    ErrorCase("ref-string-echoed", {"type": "nope", "ref": "abc"}, "unknown_type", "abc"),
    ErrorCase("ref-int-echoed", {"type": "nope", "ref": 42}, "unknown_type", 42),
    ErrorCase("ref-zero-echoed", {"type": "nope", "ref": 0}, "unknown_type", 0),
    ErrorCase("ref-float-echoed", {"type": "nope", "ref": 1.5}, "unknown_type", 1.5),
    ErrorCase("ref-true-echoed", {"type": "nope", "ref": True}, "unknown_type", True),
    ErrorCase("ref-false-echoed", {"type": "nope", "ref": False}, "unknown_type", False),
    ErrorCase("ref-empty-string-echoed", {"type": "nope", "ref": ""}, "unknown_type", ""),
    ErrorCase("ref-null-not-echoed", {"type": "nope", "ref": None}, "unknown_type"),
    ErrorCase("no-ref-unknown-type", {"type": "nope"}, "unknown_type"),
    ErrorCase("no-ref-publish-missing-event", {"type": "publish"}, "missing_field"),
    ErrorCase("no-ref-subscribe-forbidden", {"type": "subscribe", "channel": "ideas:t2"}, "forbidden_channel"),
]


async def check_error(raw: RawClient, case: ErrorCase) -> None:
    """The case draws exactly its error reply, and the connection still answers a ping."""
    reply = await raw.request(case.message)
    assert reply.get("type") == "error", reply
    assert reply.get("code") == case.code, reply
    assert isinstance(reply.get("message"), str) and reply["message"], reply
    assert set(reply) <= {"type", "code", "message", "ref"}, reply
    if case.ref is NO_REF:
        assert "ref" not in reply, reply
    else:
        assert "ref" in reply and reply["ref"] == case.ref and type(reply["ref"]) is type(case.ref), reply
    await raw.ping_ok()


# --- per case -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", FATAL_CASES, ids=lambda case: case.id)
async def test_fatal_frame_closes_with_its_code(server, connect_raw, case):
    """Each protocol violation closes the connection with its exact code, on the frame that broke the rule."""
    raw = await connect_raw()
    code, index = await run_fatal(raw, case)
    assert code == case.close_code
    first, last = case.window()
    assert first <= index <= last, f"closed after frame {index}, expected {case.window()}"
    assert await raw.after_close() == [], "frames after the close frame"
    assert await wait_until(lambda: not server.connections)
    assert server.hub.metrics.active_connections == 0


@pytest.mark.parametrize("case", EXTRA_FATAL_CASES, ids=lambda case: case.id)
async def test_other_frame_rule_violations_close_with_1002(server, connect_raw, case):
    """RSV bits on any frame type, and an unmasked client frame, close with 1002."""
    raw = await connect_raw()
    code, index = await run_fatal(raw, case)
    assert (code, index) == (case.close_code, len(case.frames) - 1)


async def test_close_without_payload_is_answered_with_1000(server, connect_raw):
    """A close frame without a code is answered with close 1000."""
    raw = await connect_raw()
    code, _ = await run_fatal(raw, FatalCase("close-empty", [ws_frame(CLOSE)], 1000))
    assert code == 1000


@pytest.mark.parametrize("case", ERROR_CASES, ids=lambda case: case.id)
async def test_bad_command_gets_its_error_and_the_connection_stays_open(server, connect_raw, case):
    """Each bad command gets exactly its error reply, changes nothing, and the connection keeps working."""
    observer = await Client.connect(server.ws_url, "t1", "observer")
    raw = await connect_raw()
    await check_error(raw, case)
    assert raw.events == []
    assert await observer.drain() == [], "a failed command delivered something"
    assert server.hub.metrics.active_connections == 2
    await observer.close()


async def test_messages_at_the_size_limit_are_accepted(server, connect_raw):
    """A message of exactly max_message_size passes, in one frame and in fragments, with pings in between."""
    raw = await connect_raw()
    message = b'{"type":"ping","ref":"whole"}'
    raw.send_text(message + b" " * (MAX_MESSAGE - len(message)))
    assert await raw.recv_reply() == {"type": "pong", "ref": "whole"}
    head, tail = b'{"type":"ping","ref":"pieces","x":"', b'\xe2\x82\xac"}'  # ends with a euro sign
    padded = head + b" " * (MAX_MESSAGE - len(head) - len(tail)) + tail
    cuts = [0, 1000, 2000, 3000, MAX_MESSAGE - 4, MAX_MESSAGE]  # the last cut splits the euro sign
    pieces = [padded[a:b] for a, b in zip(cuts, cuts[1:])]
    assert len(padded) == MAX_MESSAGE and pieces[-1] == b'\x82\xac"}'
    frames = [ws_frame(TEXT if i == 0 else CONTINUATION, p, fin=i == len(pieces) - 1) for i, p in enumerate(pieces)]
    for frame in frames[:-1]:
        assert await raw.control_barrier(frame)
    raw.send_raw(frames[-1])
    assert await raw.recv_reply() == {"type": "pong", "ref": "pieces"}


async def test_fragments_may_split_a_utf8_character(server, connect_raw):
    """A multi-byte character split across fragments is valid UTF-8, not a 1007."""
    raw = await connect_raw()
    raw.send_raw(ws_frame(TEXT, b'{"type":"ping","ref":"\xe2', fin=False) + ws_frame(CONTINUATION, b'\x82', fin=False))
    raw.send_raw(ws_frame(CONTINUATION, b'\xac"}'))
    assert await raw.recv_reply() == {"type": "pong", "ref": "\u20ac"}


# --- hurting no one else --------------------------------------------------------------------


async def test_barrage_of_bad_input_hurts_no_one(server, connect_raw):
    """Hostile connections throwing every bad case change nothing for well-behaved clients."""
    events = 200
    normal = [await Client.connect(server.ws_url, "t1", f"u{i}") for i in range(5)]
    publisher = await Client.connect(server.ws_url, "t1", "publisher")
    hostiles = await asyncio.gather(*(connect_raw(f"evil{j}") for j in range(len(FATAL_CASES))))
    assert len(server.connections) == 6 + len(hostiles)

    published = 0
    progress = asyncio.Condition()
    acked_ids: list[str] = []

    async def publish_all() -> None:
        nonlocal published
        for seq in range(events):
            ack = await publisher.publish("idea_created", {"seq": seq})
            assert ack["type"] == "ack", ack
            acked_ids.append(ack["id"])
            async with progress:
                published += 1
                progress.notify_all()

    async def at_least(count: int) -> None:
        async with progress:
            await progress.wait_for(lambda: published >= count)

    per_connection = 4
    outcomes: dict[str, tuple[int | None, int]] = {}

    async def attack(j: int, raw: RawClient) -> None:
        # Thresholds spread each connection's cases over the publisher's run.
        thresholds = sorted(random.Random(j).randrange(events) for _ in range(per_connection + 1))
        for k in range(per_connection):
            await at_least(thresholds[k])
            await check_error(raw, ERROR_CASES[(j * per_connection + k) % len(ERROR_CASES)])
        await at_least(thresholds[-1])
        case = FATAL_CASES[j]
        outcomes[case.id] = await run_fatal(raw, case)
        await raw.close()

    await asyncio.gather(publish_all(), *(attack(j, raw) for j, raw in enumerate(hostiles)))

    wrong = {
        case.id: outcomes[case.id]
        for case in FATAL_CASES
        if outcomes[case.id][0] != case.close_code or not case.window()[0] <= outcomes[case.id][1] <= case.window()[1]
    }
    assert wrong == {}, "fatal cases that closed with the wrong code or on the wrong frame"
    # Proof of interleaving: every hostile connection was sent events while it misbehaved.
    assert all(raw.events for raw in hostiles)

    still_open = len(normal) + 1
    assert await wait_until(lambda: len(server.connections) == still_open), len(server.connections)
    assert server.hub.metrics.active_connections == still_open
    assert len(server.hub) == still_open
    assert server.hub.tenant("t1").connections == still_open

    assert len(acked_ids) == events and len(set(acked_ids)) == events
    for client in normal:
        received = await client.drain()
        strays = [m for m in received if m.get("eventType") != "idea_created"]
        assert strays == [], "a normal client received something other than the published events"
        assert [m["id"] for m in received] == acked_ids
        assert [m["data"]["seq"] for m in received] == list(range(events))

    async with await Client.connect(server.ws_url, "t1", "newcomer") as newcomer:
        assert newcomer.welcome["eventType"] == "connection"
        assert (await newcomer.request({"type": "ping"}))["type"] == "pong"
        assert server.hub.metrics.active_connections == still_open + 1
    for client in [*normal, publisher]:
        await client.close()


async def test_stalled_hostile_blocks_no_one(server, connect_raw):
    """A client that opens a fragmented message (or half a frame) and stalls delays no one, itself included."""
    watcher = await Client.connect(server.ws_url, "t1", "watcher")
    publisher = await Client.connect(server.ws_url, "t1", "publisher")
    stalled = await connect_raw("staller")
    half = await connect_raw("half-frame")

    # An unfinished fragmented message, processed (the PING barrier is answered) and left open.
    assert await stalled.control_barrier(ws_frame(TEXT, b'{"type":"ping","ref":"la', fin=False))
    # Half of one frame: header and part of the payload.
    whole = ws_frame(TEXT, b'{"type":"ping","ref":"half"}' + b" " * 2000)
    half.send_raw(whole[:1000])
    await half.writer.drain()

    acked = [(await publisher.publish("idea_created", {"seq": seq}))["id"] for seq in range(50)]
    received = await watcher.drain()
    assert [m["id"] for m in received] == acked

    # The stalled connections got every event too, and can still finish what they started.
    stalled.send_frame(CONTINUATION, b'te"}')
    assert await stalled.recv_reply() == {"type": "pong", "ref": "late"}
    assert [m["id"] for m in stalled.events] == acked
    half.send_raw(whole[1000:])
    assert await half.recv_reply() == {"type": "pong", "ref": "half"}
    assert [m["id"] for m in half.events] == acked
    await watcher.close()
    await publisher.close()


async def test_no_frames_after_the_close_frame(server, connect_raw):
    """After its close frame the server sends no more frames on that connection, even while events flow."""
    publisher = await Client.connect(server.ws_url, "t1", "publisher")
    stop = asyncio.Event()

    async def publish_until_stopped() -> None:
        seq = 0
        while not stop.is_set():
            await publisher.publish("idea_created", {"seq": seq})
            seq += 1

    cases = [case for case in FATAL_CASES if len(case.frames) == 1]
    late: dict[str, str] = {}
    task = asyncio.create_task(publish_until_stopped())
    try:
        for case in cases:
            raw = await connect_raw(f"late-{case.id}")
            # Wait until events are flowing to this connection, then break the protocol.
            while not raw.events:
                opcode, payload = await raw.recv_frame()
                if opcode == TEXT:
                    raw.events.append(orjson.loads(payload))
            code, _ = await run_fatal(raw, case)
            assert code == case.close_code
            after = await raw.after_close()
            if after:
                opcodes = sorted({f"{opcode:#x}" for opcode, _ in after})
                late[case.id] = f"{len(after)} frames, opcodes {', '.join(opcodes)}"
            await raw.close()
    finally:
        stop.set()
        await task
        await publisher.close()
    assert not late, "frames sent after the close frame:\n" + "\n".join(f"  {k}: {v}" for k, v in late.items())
