"""The WebSocket adapter: picows frames in, a Session's frames out.

One Connection per WebSocket. It reassembles fragments (capping the whole
message, not only a frame), enforces the frame rules picows leaves to us (RSV
bits, close codes, UTF-8, control frame shape), feeds complete messages to its
Session, and implements the Session's Sink: outgoing frames are queued and
written once per loop iteration, all of a connection's frames in one write.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from .. import codes
from ..core import frame_text
from ..exceptions import ConnectionClosedError
from ..messages import Filters

if TYPE_CHECKING:
    from ..session import Session
    from .app import Server

__all__ = ["Connection", "valid_close_code"]

log = logging.getLogger("fastws.websocket")

_TEXT = WSMsgType.TEXT
_CONTINUATION = WSMsgType.CONTINUATION
_BINARY = WSMsgType.BINARY
_CLOSE = WSMsgType.CLOSE
_PING = WSMsgType.PING
_PONG = WSMsgType.PONG


def frame_binary(payload: bytes) -> bytes:
    """A server binary frame (used only by the test echo mode)."""
    return b"\x82" + frame_text(payload)[1:]


def valid_close_code(code: int) -> bool:
    """Close codes a peer may send (RFC 6455 7.4.1 and the IANA registry)."""
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or 3000 <= code <= 4999


class Connection(WSListener):
    """One WebSocket connection: protocol checks, reassembly, and the coalescing Sink."""

    def __init__(
        self,
        server: "Server",
        tenant_id: str,
        user_id: str,
        filters: Filters | None = None,
        since: int | None = None,
        epoch: str | None = None,
    ) -> None:
        self.server = server
        self.tenant_id = tenant_id
        self.user_id = user_id
        # what the connect URL asked for, applied when the handshake completes
        self._connect_options = (filters, since, epoch)
        self.transport: WSTransport | None = None
        self.session: Session | None = None
        self._write = None
        self._write_buffer_size = None
        self._pending: list[bytes] | None = None
        self._fragments: bytearray | None = None
        self._fragments_binary = False
        self._fragments_size = 0
        self._closing = False
        self.paused = False

    # -- picows callbacks ------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        underlying = transport.underlying_transport
        self._write = underlying.write
        self._write_buffer_size = underlying.get_write_buffer_size
        if not self.server.echo:  # the echo mode (tests) has no session and sends no welcome
            filters, since, epoch = self._connect_options
            self.session = self.server.hub.connect(self, self.tenant_id, self.user_id, filters, since, epoch)
        self.server.connections.add(self)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._closing = True
        self._pending = None
        self._fragments = None
        self.server.connections.discard(self)
        if self.session is not None:
            self.server.hub.disconnect(self.session)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self._closing:
            return
        try:
            self._on_frame(frame)
        except ConnectionClosedError as exc:
            if self.server.debug:
                log.debug("closing %s: %s", self.session and self.session.connection_id, exc)
            self.close(exc.close_code, exc.reason)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    # -- frames ---------------------------------------------------------------------

    def _on_frame(self, frame: WSFrame) -> None:
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            raise ConnectionClosedError(codes.PROTOCOL_ERROR, "reserved bits set")
        msg_type = frame.msg_type
        limit = self.server.settings.limits.max_message_size
        if msg_type == _TEXT:
            if self._fragments is not None:
                raise ConnectionClosedError(codes.PROTOCOL_ERROR, "new message before the last one finished")
            if frame.payload_size > limit:
                raise ConnectionClosedError(codes.MESSAGE_TOO_BIG, f"message over {limit} bytes")
            if frame.fin:
                self._receive(frame.get_payload_as_memoryview())
            else:
                self._fragments = bytearray(frame.get_payload_as_memoryview())
                self._fragments_size = frame.payload_size
                self._fragments_binary = False
        elif msg_type == _CONTINUATION:
            fragments = self._fragments
            if fragments is None:
                raise ConnectionClosedError(codes.PROTOCOL_ERROR, "continuation without a message")
            self._fragments_size += frame.payload_size
            if self._fragments_size > limit:
                raise ConnectionClosedError(codes.MESSAGE_TOO_BIG, f"message over {limit} bytes")
            if not self._fragments_binary or self.server.echo:
                fragments += frame.get_payload_as_memoryview()
            if frame.fin:
                self._fragments = None
                if self._fragments_binary:
                    if not self.server.echo:
                        raise ConnectionClosedError(codes.UNSUPPORTED_DATA, "binary messages are not supported")
                    self.send(frame_binary(bytes(fragments)))
                else:
                    self._receive(fragments)
        elif msg_type == _CLOSE:
            self._on_close_frame(frame)
        elif msg_type == _PING or msg_type == _PONG:
            if not frame.fin or frame.payload_size > 125:
                raise ConnectionClosedError(codes.PROTOCOL_ERROR, "bad control frame")
            if msg_type == _PING:
                # Answered here, not by picows, so the RSV check above applies to pings too.
                self.transport.send_pong(frame.get_payload_as_bytes())  # type: ignore[union-attr]
        elif msg_type == _BINARY:
            if self._fragments is not None:
                raise ConnectionClosedError(codes.PROTOCOL_ERROR, "new message before the last one finished")
            if frame.payload_size > limit:
                raise ConnectionClosedError(codes.MESSAGE_TOO_BIG, f"message over {limit} bytes")
            if self.server.echo:
                if frame.fin:
                    self.send(frame_binary(frame.get_payload_as_bytes()))
                    return
                self._fragments = bytearray(frame.get_payload_as_memoryview())
            elif frame.fin:
                raise ConnectionClosedError(codes.UNSUPPORTED_DATA, "binary messages are not supported")
            else:
                # Wait for the end of the message (so a fragmented binary message
                # is still refused with 1003), counting but keeping nothing of it.
                self._fragments = bytearray()
            self._fragments_size = frame.payload_size
            self._fragments_binary = True
        else:
            raise ConnectionClosedError(codes.PROTOCOL_ERROR, "unknown opcode")

    def _receive(self, data: bytes | bytearray | memoryview) -> None:
        if self.server.echo:
            payload = bytes(data)
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                raise ConnectionClosedError(codes.INVALID_PAYLOAD, "text message is not valid UTF-8") from None
            self.send(frame_text(payload))
            return
        session = self.session
        assert session is not None
        session.receive(data)

    def _on_close_frame(self, frame: WSFrame) -> None:
        if not frame.fin or frame.payload_size > 125 or frame.payload_size == 1:
            raise ConnectionClosedError(codes.PROTOCOL_ERROR, "bad close frame")
        code = codes.NORMAL_CLOSURE
        if frame.payload_size >= 2:
            payload = frame.get_payload_as_bytes()
            code = int.from_bytes(payload[:2], "big")
            if not valid_close_code(code):
                raise ConnectionClosedError(codes.PROTOCOL_ERROR, "invalid close code")
            try:
                payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                raise ConnectionClosedError(codes.INVALID_PAYLOAD, "close reason is not UTF-8") from None
        self.close(code, "")  # echo the peer's (valid) code, as RFC 6455 5.5.1 suggests

    # -- Sink -------------------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        """Queue a frame; all frames queued in one loop iteration go out in one write."""
        pending = self._pending
        if pending is None:
            if self._closing:
                return
            self._pending = [frame]
            self.server.schedule_flush(self)
        else:
            pending.append(frame)

    def flush(self) -> None:
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        if self.transport.is_close_frame_sent:  # type: ignore[union-attr]
            # picows failed the connection itself (a frame it refused): no data after a close frame.
            self._closing = True
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        self._write(data)  # type: ignore[misc]
        self.server.hub.metrics.bytes_sent += len(data)
        if self._write_buffer_size() > self.server.settings.limits.max_send_buffer:  # type: ignore[misc]
            self.close(codes.SLOW_CONSUMER, "slow consumer: send buffer full")

    def close(self, close_code: int, reason: str) -> None:
        """Flush queued frames, send a close frame and end the connection (idempotent)."""
        if self._closing:
            return
        transport = self.transport
        if transport is None:
            return
        if self._pending is not None and close_code != codes.SLOW_CONSUMER:
            self.flush()
        self._closing = True
        self._pending = None
        transport.send_close(WSCloseCode(close_code), codes.close_reason(reason))
        # A slow consumer's queue is dropped, not drained.
        transport.disconnect(graceful=close_code != codes.SLOW_CONSUMER)
