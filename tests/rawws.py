"""A raw WebSocket client side, with no WebSocket library between a test and the wire.

- ``ws_frame`` builds client frames with any FIN, RSV, opcode, mask, key and
  length field (declared length independent of the bytes sent, and any length
  encoding, minimal or not);
- ``parse_frame`` / ``read_frame`` read server frames (and check what a server
  frame must be: final, no RSV bits, unmasked);
- ``upgrade_request`` / ``accept_for`` / ``read_upgrade_response`` do the
  opening handshake by hand;
- ``RawClient`` speaks the fastws protocol over an ``asyncio`` stream;
- ``FrameStream`` is a lower-level connection for fuzzing: it never loses bytes
  already received when the peer resets the connection (a StreamReader raises
  its exception before handing out buffered data), and tells a close frame, an
  EOF and a reset apart;
- ``walk_frames`` is a model of how a server splits a client byte stream into
  frames (RFC 6455 section 5.2), used to know whether a server still waits for
  bytes of an unfinished frame.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

import orjson

from tests.helpers import TIMEOUT, close_writer

READ_TIMEOUT = 5.0

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DATA_OPCODES = (CONTINUATION, TEXT, BINARY)
CONTROL_OPCODES = (CLOSE, PING, PONG)
VALID_OPCODES = DATA_OPCODES + CONTROL_OPCODES
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_GUID = WS_GUID
_tokens = itertools.count(1)


# --- building client frames -----------------------------------------------------------------


def mask_bytes(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte masking ``key`` (masking and unmasking are the same)."""
    if not payload:
        return b""
    size = len(payload)
    keystream = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(keystream, "big")).to_bytes(size, "big")


_mask = mask_bytes


def ws_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv1: bool = False,
    rsv2: bool = False,
    rsv3: bool = False,
    length: int | None = None,
    masked: bool = True,
    key: bytes | None = None,
    length_bits: int | None = None,
) -> bytes:
    """A client frame.

    ``length`` overrides the length field (to claim more or less than is sent);
    ``length_bits`` (7, 16 or 64) forces the length encoding, minimal or not; a
    7-bit field holds the low 7 bits of ``length``, a 16-bit one its low 16.
    ``key`` is the masking key (random by default); ``opcode`` may be any 4 bits.
    """
    length = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | (0x20 if rsv2 else 0) | (0x10 if rsv3 else 0) | (opcode & 0x0F)
    mask_bit = 0x80 if masked else 0
    if length_bits is None:
        length_bits = 7 if length < 126 else 16 if length < 1 << 16 else 64
    if length_bits == 7:
        header = bytes([first, mask_bit | (length & 0x7F)])
    elif length_bits == 16:
        header = bytes([first, mask_bit | 126]) + struct.pack("!H", length & 0xFFFF)
    else:
        header = bytes([first, mask_bit | 127]) + struct.pack("!Q", length & 0xFFFF_FFFF_FFFF_FFFF)
    if not masked:
        return header + payload
    key = os.urandom(4) if key is None else key
    return header + key + mask_bytes(payload, key)


def client_frame(payload: bytes, opcode: int = TEXT) -> bytes:
    """One final, masked client frame."""
    return ws_frame(opcode, payload)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


def close_code_of(payload: bytes) -> int | None:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


# --- the opening handshake ------------------------------------------------------------------


def upgrade_request(
    path: str = "/ws?tenant_id=acme&user_id=alice",
    key: str | None = None,
    host: str = "127.0.0.1",
) -> tuple[bytes, str]:
    """A WebSocket opening handshake; returns (bytes, Sec-WebSocket-Key)."""
    key = key or base64.b64encode(os.urandom(16)).decode()
    head = (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    return head.encode("latin-1"), key


def accept_for(key: str) -> str:
    """The Sec-WebSocket-Accept a server must answer to ``key``."""
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


def parse_upgrade_response(head: bytes) -> tuple[str, dict[str, str]]:
    """(status line, headers with lower-case names) of a response head ending in CRLF CRLF."""
    status, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines if h)}
    return status, headers


def check_switch(head: bytes, key: str) -> None:
    """Assert that ``head`` is a 101 answering ``key``."""
    status, headers = parse_upgrade_response(head)
    assert status.startswith("HTTP/1.1 101"), head
    assert headers["sec-websocket-accept"] == accept_for(key), head


async def read_upgrade_response(reader: asyncio.StreamReader, key: str, timeout: float = READ_TIMEOUT) -> None:
    """Read the server's response head and assert it is a 101 answering ``key``."""
    check_switch(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout), key)


# --- reading server frames ------------------------------------------------------------------


@dataclass(frozen=True)
class ServerFrame:
    fin: bool
    rsv: int
    opcode: int
    masked: bool
    payload: bytes


def parse_frame(data: bytes | bytearray, offset: int = 0) -> tuple[ServerFrame, int] | None:
    """The frame at ``offset`` of ``data`` and the offset after it; None if it is incomplete."""
    if len(data) - offset < 2:
        return None
    first, second = data[offset], data[offset + 1]
    length, pos = second & 0x7F, offset + 2
    if length == 126:
        if len(data) - pos < 2:
            return None
        (length,), pos = struct.unpack_from("!H", data, pos), pos + 2
    elif length == 127:
        if len(data) - pos < 8:
            return None
        (length,), pos = struct.unpack_from("!Q", data, pos), pos + 8
    key = b""
    if second & 0x80:
        if len(data) - pos < 4:
            return None
        key, pos = bytes(data[pos : pos + 4]), pos + 4
    if len(data) - pos < length:
        return None
    payload = bytes(data[pos : pos + length])
    if key:
        payload = mask_bytes(payload, key)
    frame = ServerFrame(bool(first & 0x80), (first >> 4) & 0x7, first & 0x0F, bool(second & 0x80), payload)
    return frame, pos + length


def server_frame_problem(frame: ServerFrame) -> str | None:
    """What is wrong with a frame a server sent, or None."""
    if not frame.fin:
        return "the server never fragments"
    if frame.rsv:
        return "the server sets no RSV bits"
    if frame.masked:
        return "server frames are not masked"
    if frame.opcode not in VALID_OPCODES:
        return f"invalid opcode {frame.opcode:#x}"
    if frame.opcode in CONTROL_OPCODES and len(frame.payload) > 125:
        return "control frame over 125 bytes"
    return None


async def read_frame(reader: asyncio.StreamReader, timeout: float = TIMEOUT) -> tuple[int, bytes]:
    """One server frame: (opcode, payload). Server frames are final, have no RSV bits and are never masked."""

    async def read() -> tuple[int, bytes]:
        head = await reader.readexactly(2)
        assert head[0] & 0x80, "the server never fragments"
        assert not head[0] & 0x70, "the server sets no RSV bits"
        assert not head[1] & 0x80, "server frames are not masked"
        length = head[1] & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await reader.readexactly(8))
        return head[0] & 0x0F, await reader.readexactly(length)

    return await asyncio.wait_for(read(), timeout)


async def read_json_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    opcode, payload = await read_frame(reader)
    assert opcode == TEXT, (opcode, payload)
    return orjson.loads(payload)


def split_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Complete frames in ``data`` as (opcode, payload); a trailing partial frame is dropped."""
    frames = []
    offset = 0
    while (parsed := parse_frame(data, offset)) is not None:
        frame, offset = parsed
        frames.append((frame.opcode, frame.payload))
    return frames


# --- a model of the server's frame parser ---------------------------------------------------


@dataclass
class ClientFrame:
    """One client frame as a server's parser splits it out of the byte stream."""

    fin: bool
    rsv: int
    opcode: int
    masked: bool
    #: the value of the length field, and the width it was encoded in (7, 16 or 64 bits)
    length: int
    length_bits: int
    #: unmasked payload; for an incomplete frame, what has arrived of it
    payload: bytes
    complete: bool

    @property
    def header_fault(self) -> str | None:
        """A rule any RFC 6455 server checks from the header alone, before the payload (None: none broken)."""
        if self.opcode not in VALID_OPCODES:
            return "opcode"
        if self.opcode in CONTROL_OPCODES and not self.fin:
            return "fragmented control frame"
        if not self.masked:
            return "unmasked"
        if self.opcode in CONTROL_OPCODES and self.length > 125:
            return "control frame over 125 bytes"
        if self.length_bits == 16 and self.length < 126 or self.length_bits == 64 and self.length < 1 << 16:
            return "length not minimally encoded"
        if self.length_bits == 64 and self.length >> 63:
            return "64-bit length with the top bit set"
        return None


@dataclass
class StreamState:
    """Where a byte stream leaves a server's frame parser."""

    frames: list[ClientFrame] = field(default_factory=list)
    #: bytes the last (incomplete) frame still needs before its payload is complete; 0 at a frame boundary
    missing: int = 0
    #: the stream ends inside a frame header (its length is not known yet)
    in_header: bool = False


def walk_frames(data: bytes) -> StreamState:
    """Split a client byte stream into frames the way a server's parser does (ignoring every rule
    but the framing itself: a server that enforces one stops reading there)."""
    state = StreamState()
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 2:
            state.in_header = True
            return state
        first, second = data[pos], data[pos + 1]
        length, bits, at = second & 0x7F, 7, pos + 2
        if length == 126:
            if end - at < 2:
                state.in_header = True
                return state
            (length,), bits, at = struct.unpack_from("!H", data, at), 16, at + 2
        elif length == 127:
            if end - at < 8:
                state.in_header = True
                return state
            (length,), bits, at = struct.unpack_from("!Q", data, at), 64, at + 8
        masked = bool(second & 0x80)
        key = b""
        if masked:
            if end - at < 4:
                state.in_header = True
                return state
            key, at = data[at : at + 4], at + 4
        body = data[at : at + length]
        complete = len(body) == length
        frame = ClientFrame(
            bool(first & 0x80), (first >> 4) & 0x7, first & 0x0F, masked, length, bits,
            mask_bytes(body, key) if masked else body, complete,
        )
        state.frames.append(frame)
        if not complete:
            state.missing = length - len(body)
            return state
        pos = at + length
    return state


# --- a protocol-level connection for fuzzing ------------------------------------------------


class _FrameProtocol(asyncio.Protocol):
    """Keeps every byte received; remembers how the stream ended."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        #: None while open; "eof" after a FIN, "reset" after an error (ECONNRESET and the like)
        self.ended: str | None = None
        self._waiter: asyncio.Future | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.ended = self.ended or "eof"
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = self.ended or ("eof" if exc is None else "reset")
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def waiter(self) -> asyncio.Future:
        """A future resolved by the next data, EOF or loss of the connection.

        Created synchronously, right after the caller checked the state: a coroutine that created
        it would run a loop iteration later, and miss a callback already queued before it.
        """
        if self._waiter is None or self._waiter.done():
            self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter


class StreamEnded(Exception):
    """The server ended the TCP stream (``how``: "eof" or "reset") with no complete frame left."""

    def __init__(self, how: str, leftover: bytes) -> None:
        super().__init__(f"stream ended ({how}) with {len(leftover)} bytes of an unfinished frame")
        self.how = how
        self.leftover = leftover


class FrameStream:
    """A raw upgraded connection: write any bytes, read server frames one by one."""

    def __init__(self, protocol: _FrameProtocol) -> None:
        self._protocol = protocol
        self._offset = 0
        self.welcome: dict[str, Any] = {}

    @classmethod
    async def connect(
        cls, ws_url: str, tenant_id: str = "t1", user_id: str = "fuzz", timeout: float = READ_TIMEOUT
    ) -> "FrameStream":
        """Open a TCP connection, upgrade it by hand and read the welcome event."""
        url = urlsplit(ws_url)
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(_FrameProtocol, url.hostname, url.port)
        stream = cls(protocol)
        request, key = upgrade_request(f"{url.path}?tenant_id={tenant_id}&user_id={user_id}", host=url.netloc)
        stream.write(request)
        deadline = loop.time() + timeout
        while (end := protocol.buffer.find(b"\r\n\r\n")) < 0:
            if protocol.ended:
                raise AssertionError(f"the server closed during the handshake: {bytes(protocol.buffer)!r}")
            await asyncio.wait_for(protocol.waiter(), max(deadline - loop.time(), 0))
        check_switch(bytes(protocol.buffer[: end + 4]), key)
        stream._offset = end + 4
        frame = await stream.next_frame(max(deadline - loop.time(), 0.001))
        assert frame.opcode == TEXT, frame
        stream.welcome = orjson.loads(frame.payload)
        assert stream.welcome["eventType"] == "connection", stream.welcome
        return stream

    @property
    def ended(self) -> str | None:
        return self._protocol.ended

    def write(self, data: bytes) -> bool:
        """Send bytes; False (and nothing sent) once the connection is going away."""
        transport = self._protocol.transport
        if transport is None or transport.is_closing() or self._protocol.ended:
            return False
        transport.write(data)
        return True

    async def next_frame(self, timeout: float = READ_TIMEOUT) -> ServerFrame:
        """The next server frame. Raises StreamEnded at the end of the stream, TimeoutError after ``timeout``."""
        protocol = self._protocol
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            parsed = parse_frame(protocol.buffer, self._offset)
            if parsed is not None:
                frame, self._offset = parsed
                if self._offset > 1 << 16:  # keep the buffer short
                    del protocol.buffer[: self._offset]
                    self._offset = 0
                return frame
            if protocol.ended:
                raise StreamEnded(protocol.ended, bytes(protocol.buffer[self._offset :]))
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no server frame within {timeout} s")
            await asyncio.wait_for(protocol.waiter(), remaining)

    async def wait_ended(self, timeout: float = READ_TIMEOUT) -> bool:
        """True once the server has ended the TCP stream, False after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._protocol.ended:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._protocol.waiter(), remaining)
            except TimeoutError:
                return False
        return True

    def unread(self) -> bytes:
        """Bytes received and not yet read as frames."""
        return bytes(self._protocol.buffer[self._offset :])

    def abort(self) -> None:
        if self._protocol.transport is not None:
            self._protocol.transport.abort()

    def close(self) -> None:
        if self._protocol.transport is not None:
            self._protocol.transport.close()


# --- a fastws client on an asyncio stream ---------------------------------------------------


class ServerClosed(AssertionError):
    """The server closed the connection where a reply was expected."""


class RawClient:
    """A WebSocket client on a bare asyncio stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.welcome: dict[str, Any] = {}
        #: events (messages with an eventType) skipped while waiting for replies
        self.events: list[dict[str, Any]] = []
        self.close_code: int | None = None

    @classmethod
    async def connect(cls, ws_url: str, tenant_id: str = "t1", user_id: str = "evil") -> "RawClient":
        url = urlsplit(ws_url)
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        client = cls(reader, writer)
        request, key = upgrade_request(
            f"{url.path}?tenant_id={tenant_id}&user_id={user_id}", host=f"{url.hostname}:{url.port}"
        )
        writer.write(request)
        await read_upgrade_response(reader, key)
        opcode, payload = await client.recv_frame()
        assert opcode == TEXT
        client.welcome = orjson.loads(payload)
        assert client.welcome["eventType"] == "connection", client.welcome
        return client

    # -- sending --

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def send_frame(self, opcode: int, payload: bytes = b"", **options: Any) -> None:
        self.writer.write(ws_frame(opcode, payload, **options))

    def send_text(self, message: bytes | dict[str, Any]) -> None:
        self.send_frame(TEXT, message if isinstance(message, bytes) else orjson.dumps(message))

    # -- receiving --

    async def recv_frame(self, timeout: float = READ_TIMEOUT) -> tuple[int, bytes]:
        """The next server frame as (opcode, payload)."""
        return await read_frame(self.reader, timeout)

    close_code_of = staticmethod(close_code_of)

    async def _next(self) -> tuple[int, bytes]:
        try:
            return await self.recv_frame()
        except (asyncio.IncompleteReadError, ConnectionResetError) as exc:
            raise AssertionError(f"the server dropped the connection without a close frame ({exc!r})") from None

    async def recv_reply(self) -> dict[str, Any]:
        """The next message that is not an event (events are kept in ``self.events``)."""
        while True:
            opcode, payload = await self._next()
            if opcode == TEXT:
                message = orjson.loads(payload)
                if "eventType" in message:
                    self.events.append(message)
                    continue
                return message
            if opcode == CLOSE:
                self.close_code = self.close_code_of(payload)
                raise ServerClosed(f"the server closed the connection with {self.close_code}: {payload[2:]!r}")
            assert opcode == PONG, f"unexpected opcode {opcode:#x}"

    async def request(self, message: bytes | dict[str, Any]) -> dict[str, Any]:
        self.send_text(message)
        return await self.recv_reply()

    async def ping_ok(self) -> None:
        """A ping command gets its pong, and is the next reply."""
        ref = f"ok-{next(_tokens)}"
        reply = await self.request({"type": "ping", "ref": ref})
        assert reply == {"type": "pong", "ref": ref}

    async def control_barrier(self, after: bytes) -> bool:
        """Send ``after`` plus a PING; True once its PONG is back, False if a close frame came first."""
        token = b"barrier-%d" % next(_tokens)
        self.send_raw(after + ws_frame(PING, token))
        while True:
            opcode, payload = await self._next()
            if opcode == TEXT:
                self.events.append(orjson.loads(payload))
            elif opcode == PONG and payload == token:
                return True
            elif opcode == CLOSE:
                self.close_code = self.close_code_of(payload)
                return False

    async def expect_close(self) -> int | None:
        """Read (keeping events) up to the server's close frame; its close code."""
        while True:
            opcode, payload = await self._next()
            if opcode == TEXT:
                self.events.append(orjson.loads(payload))
            elif opcode == CLOSE:
                self.close_code = self.close_code_of(payload)
                return self.close_code
            elif opcode == PONG:
                raise AssertionError(f"the server answered a PING ({payload!r}) instead of closing")

    async def after_close(self) -> list[tuple[int, bytes]]:
        """Everything the server sent after its close frame, up to the end of the TCP stream."""
        try:
            data = await asyncio.wait_for(self.reader.read(), READ_TIMEOUT)
        except ConnectionResetError:
            data = b""
        frames = []
        while data:
            opcode, length, offset = data[0] & 0x0F, data[1] & 0x7F, 2
            if length == 126:
                (length,), offset = struct.unpack("!H", data[2:4]), 4
            elif length == 127:
                (length,), offset = struct.unpack("!Q", data[2:10]), 10
            frames.append((opcode, data[offset : offset + length]))
            data = data[offset + length :]
        return frames

    async def close(self) -> None:
        await close_writer(self.writer)


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll a condition (not a sleep to synchronise): True once it holds, False after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True
