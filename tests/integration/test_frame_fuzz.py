"""A seeded frame fuzzer over raw sockets.

Groups of mutated client frames are built from a seed corpus of valid frames
(commands, pings, pongs, close frames, fragmented messages): header bit flips,
RSV bits, bad opcodes, lengths at every boundary (declared longer or shorter
than what is sent, in minimal and non-minimal encodings), unmasked frames,
fragmented control frames, interleaved and stray continuations, endless
fragments, broken UTF-8 and structure-aware JSON mutations. Every group is
rebuilt from ``(SEED, index)`` alone, so a failure names what to replay.

Each group goes over a raw connection (``tests.rawws.FrameStream``), followed
by a PING barrier: the barrier's PONG means the server is still serving the
connection; otherwise the server must have closed it with a close frame. A
model of the server's frame parser (``tests.rawws.walk_frames``) completes an
unfinished last frame first (the server waits for its bytes, which is fine),
so neither outcome is a timeout. A connection carries groups until the server
closes it, or until it has carried ``FRAMES_PER_CONNECTION`` frames and is
closed with 1000.

Checked, over several identical rounds:

- every server frame is well formed; every event a fuzzing connection gets is
  of its own tenant;
- every close by the server comes with a close frame whose code is a protocol
  code, or the peer's own valid close code echoed (RFC 6455 5.5.1), and then
  the TCP stream ends with nothing after the close frame;
- nothing reaches the event loop's exception handler (the ``server``
  fixture), and nothing is logged with a traceback (picows turns an exception
  in a callback into close 1011 and a logged traceback, out of the loop's
  sight);
- a ``helpers.Client`` connected through the whole run receives exactly the
  events a well-behaved publisher published meanwhile, in order; a client of
  another tenant receives nothing;
- the server keeps accepting, and is back to its well-behaved connections
  after each round;
- traced memory (tracemalloc) after the last round exceeds that after round 2
  by less than ``MEMORY_GROWTH_BOUND``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import random
import struct
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import psutil
import pytest

from fastws.config import Limits, Settings
from tests.helpers import Client
from tests.rawws import (
    BINARY,
    CLOSE,
    CONTINUATION,
    CONTROL_OPCODES,
    PING,
    PONG,
    TEXT,
    FrameStream,
    StreamEnded,
    close_code_of,
    close_payload,
    server_frame_problem,
    wait_until,
    walk_frames,
    ws_frame,
)

SEED = int(os.environ.get("FASTWS_FUZZ_SEED", "6455"))
#: the server's max_message_size, which is also picows' max_frame_size: the default 64 KiB, so
#: the length boundaries 65535 / 65536 / 65537 fall on both sides of the limit
MAX_MESSAGE = 64 * 1024
TENANT = "t1"
WORKERS = 8
FRAMES_PER_CONNECTION = 8
ROUNDS = 5
#: codes the server may close a misbehaving (or closing) connection with
PROTOCOL_CODES = frozenset({1000, 1002, 1003, 1007, 1008, 1009})
READ_TIMEOUT = 10.0
#: stop fuzzing after this many failures (each is reported)
MAX_FAILURES = 25

# Bound on traced memory growth between the end of round 2 and the end of the last round.
#
# Rounds are identical (same seed, same bytes, same user ids and channels), the server is back to
# the same three well-behaved connections after each, and the settings above make every
# per-tenant and per-channel structure saturate during round 1: history keeps one event of at
# most 4 KiB per channel (rings never grow), tracked event names and sources are capped. So after
# round 2 nothing the server holds should grow; what is left is allocator and interpreter noise
# (free lists, dict and set resizes, caches), measured at 5-15 KiB on both loops. 256 KiB is over
# 15 times that noise, and below what a per-connection leak adds up to: rounds 3-5 open about 630
# connections, so leaking one Session (with its ids and matcher entries), one picows read buffer
# (2 KiB and up) or anything else over ~420 bytes per connection fails the bound (checked by
# injecting a 600-byte leak per disconnect: it grows traced memory by ~400 KiB).
MEMORY_GROWTH_BOUND = 256 * 1024


@pytest.fixture
def settings():
    limits = Limits(max_message_size=MAX_MESSAGE, history_size=1, history_bytes=4096, max_tracked_names=64)
    return Settings(host="127.0.0.1", port=0, drain_timeout=2.0, limits=limits)


# --- generating frames ------------------------------------------------------------------------


@dataclass
class Spec:
    """One frame to build: any header, any declared length, any masking."""

    opcode: int
    payload: bytes = b""
    fin: bool = True
    rsv: int = 0
    masked: bool = True
    length: int | None = None
    length_bits: int | None = None

    def build(self, rng: random.Random) -> bytes:
        return ws_frame(
            self.opcode,
            self.payload,
            fin=self.fin,
            rsv1=bool(self.rsv & 4),
            rsv2=bool(self.rsv & 2),
            rsv3=bool(self.rsv & 1),
            length=self.length,
            masked=self.masked,
            key=rng.randbytes(4),
            length_bits=self.length_bits,
        )


def _text(message: Any) -> bytes:
    return orjson.dumps(message)


COMMANDS: list[bytes] = [
    _text({"type": "ping", "ref": "p"}),
    _text({"type": "ping"}),
    _text({"type": "subscribe", "channel": "ideas", "ref": 1}),
    _text({"type": "subscribe", "channel": "ideas:t1", "eventTypes": ["fuzzed", "b"], "ref": 2}),
    _text({"type": "subscribe", "channel": "ideas", "since": 0, "epoch": "e", "ref": "s"}),
    _text({"type": "unsubscribe", "channel": "ideas", "ref": 3}),
    _text({"type": "filters", "filters": {"eventTypes": ["x"], "sources": ["s"], "priority": ["high", "low"], "users": ["u"]}, "ref": 4}),
    _text({"type": "filters", "filters": {}, "ref": 5}),
    _text({"type": "publish", "event": "fuzzed", "payload": {"n": 1, "s": "\u00e9\u20ac\U0001f600"}, "ref": 6}),
    _text({"type": "publish", "channel": "ideas", "event": "fuzzed", "priority": "critical", "source": "fz", "targetUserId": "fuzz0"}),
    _text({"type": "fuzz_custom", "data": [1, 2, 3], "ref": 7}),
    _text({"type": "subscribe", "channel": "tenant:t2", "ref": 8}),
    _text({"type": "publish", "channel": "ideas:t2", "event": "fuzzed", "ref": 9}),
]

CONTROLS: list[Spec] = [
    Spec(PING),
    Spec(PING, b"hello"),
    Spec(PING, b"\xff" * 125),
    Spec(PONG, b"unsolicited"),
    Spec(CLOSE, close_payload(1000, b"bye")),
    Spec(CLOSE),
    Spec(CLOSE, close_payload(1001)),
    Spec(CLOSE, close_payload(4000, "r\u00e9".encode())),
]

KNOWN_KEYS = [
    "type", "ref", "channel", "event", "payload", "filters", "eventTypes", "sources", "priority",
    "users", "since", "epoch", "source", "targetUserId", "data",
]
STRINGS = [
    "", "ping", "publish", "subscribe", "filters", "connection", "ideas", "ideas:t1", "ideas:t2", "tenant:t1",
    "tenant:t2", "t1", "high", "urgent", "a" * 64, "a" * 65, "ideas%3At2", "ideas\uff1at2", "\x00", " ", "\u2028",
    "\ud800", "\U0001f600", "ideas:t1:t2", "x" * 1000,
]
NUMBERS = [0, -1, 1, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, 1.5, -0.0, 1e308]


def random_json(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 3 or roll < 0.3:
        return rng.choice([None, True, False, *NUMBERS])
    if roll < 0.6:
        if rng.random() < 0.7:
            return rng.choice(STRINGS)
        return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x3000)])) for _ in range(rng.randrange(12)))
    if roll < 0.8:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(KNOWN_KEYS + STRINGS[:6]): random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def _nodes(value: Any, path: tuple = ()) -> list[tuple]:
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _nodes(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _nodes(item, path + (index,))
    return found


def mutate_json(rng: random.Random, payload: bytes) -> bytes:
    """Replace, delete or add one value of a JSON command; re-encoded (big ints and all) with json."""
    try:
        obj = json.loads(payload)
    except ValueError:
        return mutate_bytes(rng, payload)
    path = rng.choice(_nodes(obj))
    new = random_json(rng)
    if not path:
        obj = new if rng.random() < 0.3 else {**obj, rng.choice(KNOWN_KEYS): new}
    else:
        parent = obj
        for step in path[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and rng.random() < 0.25:
            del parent[path[-1]]
        else:
            parent[path[-1]] = new
    if rng.random() < 0.05:  # nesting around orjson's limit of 1024
        depth = rng.choice([254, 255, 1023, 1024, 1025, 5000])
        return b'{"type":"publish","event":"e","payload":' + b"[" * depth + b"]" * depth + b"}"
    text = json.dumps(obj, ensure_ascii=rng.random() < 0.5)
    return text.encode("utf-8", "surrogatepass")


BAD_UTF8 = [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80", b"\x80", b"\xf0\x9f\x98"]


def mutate_bytes(rng: random.Random, payload: bytes) -> bytes:
    data = bytearray(payload)
    for _ in range(rng.randrange(1, 4)):
        roll = rng.random()
        at = rng.randrange(len(data) + 1)
        if roll < 0.4:
            data[at:at] = rng.choice(BAD_UTF8)
        elif roll < 0.6 and data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif roll < 0.8:
            del data[at : at + rng.randrange(1, 8)]
        else:
            data[at:at] = rng.choice([b"\x00", b"\\u0000", b'"', b"{", b"]", "\uff1a".encode()])
    return bytes(data)


def fragment(rng: random.Random, opcode: int, payload: bytes) -> list[Spec]:
    """A message cut into 2-6 fragments (cuts anywhere, inside UTF-8 sequences too)."""
    cuts = sorted(rng.randrange(len(payload) + 1) for _ in range(rng.randrange(1, 6)))
    bounds = [0, *cuts, len(payload)]
    pieces = [payload[a:b] for a, b in zip(bounds, bounds[1:])]
    return [
        Spec(opcode if i == 0 else CONTINUATION, piece, fin=i == len(pieces) - 1) for i, piece in enumerate(pieces)
    ]


BOUNDARY_LENGTHS = [
    0, 1, 124, 125, 126, 127, 128, 255, 256, 65535, 65536, 65537,
    MAX_MESSAGE - 1, MAX_MESSAGE, MAX_MESSAGE + 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1,
]
BAD_OPCODES = [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF]
CLOSE_CODES = [0, 1, 999, 1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013,
               1014, 1015, 1016, 2999, 3000, 4999, 5000, 65535]


def seed_group(rng: random.Random) -> list[Spec]:
    roll = rng.random()
    if roll < 0.45:
        return [Spec(TEXT, rng.choice(COMMANDS))]
    if roll < 0.65:
        return [replace(rng.choice(CONTROLS))]
    if roll < 0.9:
        specs = fragment(rng, TEXT, rng.choice(COMMANDS))
        if rng.random() < 0.4:  # a control frame between fragments (allowed)
            specs.insert(rng.randrange(1, len(specs) + 1), Spec(PING, b"between"))
        return specs
    return [Spec(BINARY, b"\x00\x01\x02")] if rng.random() < 0.5 else fragment(rng, BINARY, b"binary-message")


#: rsv, opcode, fin, unmask, length, json, bytes, fragment, control, interleave, endless, close, dup, shuffle
MUTATION_WEIGHTS = [1, 1.5, 1, 0.7, 2, 2.5, 1.5, 1.5, 1, 1, 0.4, 1, 0.5, 0.5]


def mutate(rng: random.Random, specs: list[Spec]) -> list[Spec]:
    """One spec-level mutation of a group."""
    spec = rng.choice(specs)
    kind = rng.choices(range(14), MUTATION_WEIGHTS)[0]
    if kind == 0:
        spec.rsv = rng.randrange(1, 8)
    elif kind == 1:
        spec.opcode = rng.choice(BAD_OPCODES) if rng.random() < 0.6 else rng.choice([CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG])
    elif kind == 2:
        spec.fin = not spec.fin
    elif kind == 3:
        spec.masked = False
    elif kind == 4:
        length = rng.choice(BOUNDARY_LENGTHS + [len(spec.payload) + d for d in (-2, -1, 1, 2, 100)])
        length = max(length, 0)
        spec.length_bits = rng.choice([None, None, 7, 16, 64])
        if length <= MAX_MESSAGE + 1 and rng.random() < 0.5:
            spec.payload = (spec.payload + b" " * length)[:length]  # an honest frame of that size
        else:
            spec.length = length  # claims more, or less, than is sent
    elif kind == 5 and spec.opcode == TEXT and spec.payload.startswith(b"{"):
        spec.payload = mutate_json(rng, spec.payload)
    elif kind == 6:
        spec.payload = mutate_bytes(rng, spec.payload)
    elif kind == 7 and spec.opcode in (TEXT, BINARY) and spec.fin:
        at = specs.index(spec)
        specs[at : at + 1] = fragment(rng, spec.opcode, spec.payload)
    elif kind == 8:  # a control frame, fragmented or oversized
        specs.insert(rng.randrange(len(specs) + 1), Spec(rng.choice(CONTROL_OPCODES), b"c" * rng.choice([0, 3, 125, 126]), fin=rng.random() < 0.5))
    elif kind == 9:  # a stray continuation, or a new message inside a fragmented one
        extra = Spec(CONTINUATION, b"cont", fin=rng.random() < 0.5) if rng.random() < 0.5 else Spec(TEXT, b'{"type":"ping"}', fin=rng.random() < 0.5)
        specs.insert(rng.randrange(len(specs) + 1), extra)
    elif kind == 10:  # endless fragments, small or past the message limit, finished or not
        size = rng.choice([0, 1, 100, 4096])
        count = rng.randrange(5, 60) if size < 4096 else 17  # 17 x 4 KiB crosses the 64 KiB limit
        specs[:] = [Spec(TEXT, b'{"type":"ping","ref":"', fin=False)] + [
            Spec(CONTINUATION, b"x" * size, fin=False) for _ in range(count)
        ]
        if rng.random() < 0.5:
            specs.append(Spec(CONTINUATION, b'"}'))
    elif kind == 11:
        code = rng.choice(CLOSE_CODES)
        reason = rng.choice([b"", b"bye", b"\xff\xfe", "\u00e9".encode()[:1], b"r" * 123, b"r" * 124])
        specs.insert(rng.randrange(len(specs) + 1), Spec(CLOSE, struct.pack("!H", code) + reason if code else b"\x03"))
    elif kind == 12:
        specs.insert(rng.randrange(len(specs) + 1), replace(spec))
    else:
        rng.shuffle(specs)
    return specs


def byte_mutations(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    """Bit flips (mostly in headers), truncation and junk on the built frames."""
    for _ in range(rng.randrange(1, 3)):
        at = rng.randrange(len(frames))
        data = bytearray(frames[at])
        roll = rng.random()
        if roll < 0.5:
            for _ in range(rng.randrange(1, 4)):
                index = rng.randrange(min(len(data), 14))
                data[index] ^= 1 << rng.randrange(8)
        elif roll < 0.7:
            index = rng.randrange(len(data))
            data[index] ^= 1 << rng.randrange(8)
        elif roll < 0.85:
            del data[rng.randrange(1, len(data) + 1) :]
        else:
            data += rng.randbytes(rng.randrange(1, 20))
        frames[at] = bytes(data)
    return frames


@dataclass
class Group:
    index: int
    frames: list[bytes]

    @property
    def data(self) -> bytes:
        return b"".join(self.frames)


def make_group(seed: int, index: int) -> Group:
    """Group ``index`` of ``seed``: the same bytes on every call."""
    rng = random.Random(seed * 1_000_003 + index)
    specs = seed_group(rng)
    style = rng.random()
    if style < 0.1:
        pass  # a valid group: the server must keep serving the connection
    else:
        for _ in range(rng.randrange(1, 4)):
            specs = mutate(rng, specs)
    specs = specs[:200] or [Spec(PING)]
    frames = [spec.build(rng) for spec in specs]
    if 0.1 <= style < 0.45:
        frames = byte_mutations(rng, frames)
    return Group(index, frames)


def make_round(seed: int, frames: int) -> list[Group]:
    groups, total, index = [], 0, 0
    while total < frames:
        group = make_group(seed, index)
        groups.append(group)
        total += len(group.frames)
        index += 1
    return groups


# --- judging the server ------------------------------------------------------------------------


def peer_may_send(code: int) -> bool:
    """Close codes a client may send (RFC 6455 7.4 and the IANA registry)."""
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or 3000 <= code <= 4999


def echo_codes(sent: bytes) -> set[int]:
    """The codes of the well-formed close frames in what a client sent: a server may echo them."""
    codes = set()
    for frame in walk_frames(sent).frames:
        if frame.header_fault:
            break  # the server stops reading here
        if frame.opcode == CLOSE and frame.complete and frame.header_fault is None and len(frame.payload) >= 2:
            code = close_code_of(frame.payload)
            if code is not None and peer_may_send(code):
                codes.add(code)
    return codes


def completion(sent: bytes) -> tuple[bytes, bool]:
    """(bytes that finish the last frame of ``sent``, so the server is at a frame boundary; whether
    a frame breaks a rule the server checks from the header alone, so it must close).

    The padding is sent even then: the rule may be broken only once the padding completes a header.
    """
    pad = b""
    for _ in range(4):
        state = walk_frames(sent + pad)
        if any(f.header_fault or (f.opcode not in CONTROL_OPCODES and f.length > MAX_MESSAGE) for f in state.frames):
            return pad, True  # (a data frame over the limit: 1009 from the header alone)
        if state.in_header:
            # a partial header: finish it as a masked header of length 0 (or zeros for the rest)
            pad += b"\x80" if len(_tail_header(sent + pad)) == 1 else b"\x00" * _header_needed(sent + pad)
            continue
        if state.missing:
            pad += b"\x00" * state.missing
            continue
        return pad, False
    raise AssertionError(f"could not complete the stream: {(sent + pad)[-40:].hex()}")


def _frame_starts(data: bytes) -> int:
    """Offset of the last (unfinished) frame of ``data``."""
    pos = 0
    for frame in walk_frames(data).frames:
        header = 2 + {7: 0, 16: 2, 64: 8}[frame.length_bits] + (4 if frame.masked else 0)
        pos += header + frame.length
    return pos


def _tail_header(data: bytes) -> bytes:
    return data[_frame_starts(data) :]


def _header_needed(data: bytes) -> int:
    tail = _tail_header(data)
    length7 = tail[1] & 0x7F
    size = 2 + (2 if length7 == 126 else 8 if length7 == 127 else 0) + (4 if tail[1] & 0x80 else 0)
    return size - len(tail)


@dataclass
class Stats:
    frames: int = 0
    groups: int = 0
    connections: int = 0
    bytes_sent: int = 0
    survived: int = 0
    closes: Counter = field(default_factory=Counter)
    events_to_fuzzers: int = 0


@dataclass
class Failure:
    round: int
    group: int
    what: str
    #: bytes sent on the connection so far, and the last 300 of them (not all: a failure must not
    #: weigh on the memory measurement); ``make_group(SEED, group)`` rebuilds the group itself
    sent_size: int
    sent_tail: bytes

    def __str__(self) -> str:
        return (
            f"seed {SEED} round {self.round} group {self.group} (worker {self.group % WORKERS}): {self.what}\n"
            f"    connection bytes: {self.sent_size}, the last 300: {self.sent_tail.hex()}"
        )


class Fuzzer:
    def __init__(self, ws_url: str, stats: Stats, failures: list[Failure]) -> None:
        self.ws_url = ws_url
        self.stats = stats
        self.failures = failures
        self.round = 0

    def fail(self, group: int, what: str, sent: bytes) -> None:
        self.failures.append(Failure(self.round, group, what, len(sent), sent[-300:]))

    async def run_round(self, groups: list[Group]) -> None:
        await asyncio.gather(*(self.worker(w, groups[w::WORKERS]) for w in range(WORKERS)))

    async def worker(self, number: int, groups: list[Group]) -> None:
        stream: FrameStream | None = None
        sent = b""
        carried = 0
        try:
            for group in groups:
                if len(self.failures) >= MAX_FAILURES:
                    return
                if stream is None:
                    stream = await FrameStream.connect(self.ws_url, TENANT, f"fuzz{number}", READ_TIMEOUT)
                    assert stream.welcome["tenantId"] == TENANT
                    self.stats.connections += 1
                    sent, carried = b"", 0
                alive, tail = await self.send_group(stream, group, sent)
                sent += group.data
                self.stats.frames += len(group.frames)
                self.stats.groups += 1
                carried += len(group.frames)
                if not alive:
                    stream.abort()
                    stream = None
                elif carried >= FRAMES_PER_CONNECTION:
                    await self.close_cleanly(stream, group.index, sent)
                    stream = None
                else:
                    sent += tail
        finally:
            if stream is not None:
                stream.abort()

    async def send_group(self, stream: FrameStream, group: Group, before: bytes) -> tuple[bool, bytes]:
        """Send a group, what finishes its last frame, and a barrier.

        (True if the server still serves the connection, the bytes sent after the group)."""
        data = before + group.data
        pad, must_close = completion(data)
        token = b"barrier-%d" % group.index
        tail = pad + ws_frame(PING, token, key=b"\x00\x01\x02\x03")
        stream.write(group.data + tail)
        self.stats.bytes_sent += len(group.data) + len(tail)
        return await self.outcome(stream, group.index, data + tail, token, must_close), tail

    async def outcome(self, stream: FrameStream, index: int, sent: bytes, token: bytes | None, must_close: bool) -> bool:
        while True:
            try:
                frame = await stream.next_frame(READ_TIMEOUT)
            except StreamEnded as ended:
                self.fail(index, f"the TCP stream ended ({ended.how}) without a close frame", sent)
                return False
            except TimeoutError:
                self.fail(index, f"neither the barrier's PONG nor a close frame within {READ_TIMEOUT} s", sent)
                return False
            problem = server_frame_problem(frame)
            if problem:
                self.fail(index, f"malformed server frame: {problem}", sent)
                return False
            if frame.opcode == TEXT:
                try:
                    message = orjson.loads(frame.payload)
                except orjson.JSONDecodeError:
                    self.fail(index, f"server text frame is not JSON: {frame.payload[:200]!r}", sent)
                    return False
                if not isinstance(message, dict):
                    self.fail(index, f"server message is not an object: {frame.payload[:200]!r}", sent)
                elif "eventType" in message:
                    self.stats.events_to_fuzzers += 1
                    if message.get("tenantId") != TENANT or not str(message.get("channel", "")).endswith(f":{TENANT}"):
                        self.fail(index, f"event of another tenant delivered: {message}", sent)
                elif message.get("code") == "internal_error":
                    self.fail(index, f"internal error reply: {message}", sent)
            elif frame.opcode == PONG and token is not None and frame.payload == token:
                if must_close:
                    self.fail(index, "the server kept serving a connection after a frame that breaks a header rule", sent)
                self.stats.survived += 1
                return True
            elif frame.opcode == CLOSE:
                await self.check_close(stream, index, sent, frame.payload)
                return False

    async def check_close(self, stream: FrameStream, index: int, sent: bytes, payload: bytes) -> None:
        code = close_code_of(payload)
        self.stats.closes[code] += 1
        allowed = PROTOCOL_CODES | echo_codes(sent)
        if code not in allowed:
            self.fail(index, f"close code {code} (reason {payload[2:]!r}), expected one of {sorted(allowed)}", sent)
        try:
            payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            self.fail(index, f"close reason is not UTF-8: {payload!r}", sent)
        # After its close frame the server sends nothing more and ends the TCP stream.
        if not await stream.wait_ended(READ_TIMEOUT):
            self.fail(index, f"no end of the TCP stream within {READ_TIMEOUT} s after close frame {payload!r}", sent)
        if stream.unread():
            self.fail(index, f"bytes after close frame {payload!r}: {stream.unread()[:100].hex()}", sent)

    async def close_cleanly(self, stream: FrameStream, index: int, sent: bytes) -> None:
        """A connection that survived its frames is closed with 1000 and answered with 1000."""
        frame = ws_frame(CLOSE, close_payload(1000), key=b"\x00\x00\x00\x00")
        stream.write(frame)
        sent += frame
        while True:
            try:
                reply = await stream.next_frame(READ_TIMEOUT)
            except (StreamEnded, TimeoutError) as exc:
                self.fail(index, f"no close frame answering a close 1000 ({exc!r})", sent)
                break
            if reply.opcode == CLOSE:
                if close_code_of(reply.payload) != 1000:
                    self.fail(index, f"close 1000 answered with {reply.payload!r}", sent)
                await self.check_close(stream, index, sent, reply.payload)
                break
        stream.abort()


# --- the well-behaved side and the logs --------------------------------------------------------


class TracebackCatcher(logging.Handler):
    """Keeps log records that carry a traceback, counts the others (and keeps none of them)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.tracebacks: list[str] = []
        self.counts: Counter = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.tracebacks.append(self.format(record))
        else:
            self.counts[(record.levelname, str(record.msg)[:60])] += 1


@pytest.fixture
def log_catcher():
    """Catch fastws' (and picows') log records; none reach pytest's capture, which keeps every
    record and would itself grow memory by a record per protocol error."""
    logger = logging.getLogger("fastws")
    catcher = TracebackCatcher()
    propagate, level = logger.propagate, logger.level
    logger.addHandler(catcher)
    logger.propagate = False
    logger.setLevel(logging.WARNING)
    yield catcher
    logger.removeHandler(catcher)
    logger.propagate, logger.level = propagate, level


async def publish_until(publisher: Client, stop: asyncio.Event, acked: list[str]) -> None:
    seq = 0
    while not stop.is_set():
        ack = await publisher.publish("steady", {"seq": seq})
        assert ack["type"] == "ack", ack
        acked.append(ack["id"])
        seq += 1
        await asyncio.sleep(0.003)  # pacing only: the fuzzers need the loop too


def traced_memory() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def fuzz_round(server, fuzzer: Fuzzer, groups: list[Group], observer: Client, bystander: Client, publisher: Client) -> int:
    """One round of fuzzing while a well-behaved publisher publishes; the number of events published."""
    number = fuzzer.round
    stop, acked = asyncio.Event(), []
    publishing = asyncio.create_task(publish_until(publisher, stop, acked))
    try:
        await fuzzer.run_round(groups)
    finally:
        stop.set()
        await publishing

    received = await observer.drain()
    from_publisher = [m for m in received if m.get("userId") == "publisher"]
    others = [m for m in received if m.get("userId") != "publisher"]
    assert [m["id"] for m in from_publisher] == acked, f"round {number}: the observer missed or reordered events"
    assert all(m["tenantId"] == TENANT and str(m["userId"]).startswith("fuzz") for m in others), others[:3]
    assert await bystander.drain() == [], f"round {number}: a client of another tenant received events"
    await publisher.drain()  # its own copies of its events, kept in its backlog

    # The server keeps accepting, and is back to the well-behaved connections.
    async with await Client.connect(server.ws_url, TENANT, "newcomer") as newcomer:
        assert (await newcomer.request({"type": "ping"}))["type"] == "pong"
    steady = 3
    assert await wait_until(lambda: len(server.connections) == steady, 10.0), len(server.connections)
    assert await wait_until(lambda: server.hub.metrics.active_connections == steady, 10.0)
    assert len(server.hub) == steady and server.hub.tenant(TENANT).connections == 2
    return len(acked)


async def fuzz(server, log_catcher, record_property, frames: int, rounds: int) -> None:
    per_round = frames // rounds
    groups = make_round(SEED, per_round)
    stats = Stats()
    failures: list[Failure] = []
    fuzzer = Fuzzer(server.ws_url, stats, failures)

    observer = await Client.connect(server.ws_url, TENANT, "observer")
    bystander = await Client.connect(server.ws_url, "t2", "bystander")
    publisher = await Client.connect(server.ws_url, TENANT, "publisher")
    process = psutil.Process()
    memory: list[int] = []
    rss: list[int] = []
    published = 0
    started = time.monotonic()
    tracemalloc.start()
    try:
        for number in range(1, rounds + 1):
            fuzzer.round = number
            published += await fuzz_round(server, fuzzer, groups, observer, bystander, publisher)
            memory.append(traced_memory())
            rss.append(process.memory_info().rss)
    finally:
        tracemalloc.stop()
        elapsed = time.monotonic() - started
        summary = (
            f"seed {SEED}: {stats.frames} frames in {stats.groups} groups over {stats.connections} connections, "
            f"{stats.bytes_sent} bytes, {stats.survived} barriers answered, closes {dict(sorted(stats.closes.items(), key=str))}, "
            f"{published} steady events, {stats.events_to_fuzzers} events to fuzzers, {elapsed:.1f} s; "
            f"traced memory per round (KiB) {[m // 1024 for m in memory]}, RSS (MiB) {[r // 2**20 for r in rss]}"
        )
        print(summary)
        record_property("fuzz_summary", summary)
        record_property("frames_fuzzed", stats.frames)
        record_property("connections_used", stats.connections)
        for client in (observer, bystander, publisher):
            await client.close()

    assert not failures, f"{len(failures)} failures ({summary}):\n" + "\n".join(map(str, failures))
    assert not log_catcher.tracebacks, "tracebacks logged:\n" + "\n".join(log_catcher.tracebacks[:5])
    assert stats.frames >= frames  # every round ran in full
    growth = memory[-1] - memory[1]
    assert growth < MEMORY_GROWTH_BOUND, f"traced memory grew by {growth} bytes from round 2 to {rounds} ({summary})"
    record_property("memory_growth_bytes", growth)
    record_property("rss_growth_bytes", rss[-1] - rss[1])


@pytest.mark.parametrize("frames", [5_000])
async def test_frame_fuzz(server, log_catcher, record_property, frames):
    """~5,000 fuzzed frames (5 identical rounds): protocol closes only, no harm to others, bounded memory."""
    await fuzz(server, log_catcher, record_property, frames, ROUNDS)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("frames", [100_000])
async def test_frame_fuzz_long(server, log_catcher, record_property, frames):
    """100,000 fuzzed frames (10 identical rounds); opt-in with --run-slow."""
    await fuzz(server, log_catcher, record_property, frames, 10)
