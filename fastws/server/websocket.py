"""The WebSocket adapter: picows frames in, a Session's frames out.

One Connection per WebSocket. It reassembles fragments (capping the whole
message, not only a frame), enforces the frame rules picows leaves to us (RSV
bits, close codes, UTF-8, control frame shape), feeds complete messages to its
Session, and implements the Session's Sink: outgoing frames are queued and
written once per loop iteration, all of a connection's frames in one write.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from .. import codes, logs
from ..backlog import NEVER_DROP, Backlog, low_water
from ..core import frame_text
from ..exceptions import ConnectionClosedError
from ..messages import Filters

if TYPE_CHECKING:
    from ..backlog import Budget
    from ..config import Settings
    from ..hub import Hub
    from ..session import Session

__all__ = ["Connection", "ConnectionHost", "valid_close_code"]

log = logging.getLogger("fastws.websocket")

_TEXT = WSMsgType.TEXT
_CONTINUATION = WSMsgType.CONTINUATION
_BINARY = WSMsgType.BINARY
_CLOSE = WSMsgType.CLOSE
_PING = WSMsgType.PING
_PONG = WSMsgType.PONG


class ConnectionHost(Protocol):
    """What a Connection asks of the worker serving it (fastws.server.app.Server), so that
    this module needs nothing from that one."""

    settings: "Settings"
    hub: "Hub"
    control: Any  # fastws.server.control.WorkerControl: connection_opened, connection_closed
    echo: bool
    connections: set["Connection"]
    backlogged: set["Connection"]
    budget: "Budget"

    def schedule_flush(self, connection: "Connection") -> None: ...

    def relieve_budget(self) -> None: ...


class Heard(Protocol):
    """The guard in front of picows (fastws.server.http.CloseGuard), as far as the heartbeat goes."""

    heard: bool


def frame_binary(payload: bytes) -> bytes:
    """A server binary frame (used only by the test echo mode)."""
    return b"\x82" + frame_text(payload)[1:]


def valid_close_code(code: int) -> bool:
    """Close codes a peer may send (RFC 6455 7.4.1 and the IANA registry)."""
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or 3000 <= code <= 4999


class Connection(WSListener):
    """One WebSocket connection: protocol checks, reassembly, and the coalescing Sink."""

    # One per connection: slots, no instance dict (idle memory per connection counts).
    __slots__ = (
        "server", "address", "_expiry_timer", "_connect_options",
        "transport", "session", "_pending", "_fragments", "_fragments_binary",
        "_fragments_size", "_closing", "backlog", "paused", "guard", "pinged", "quiet",
    )

    def __init__(
        self,
        server: ConnectionHost,
        tenant_id: str,
        user_id: str,
        filters: Filters | None = None,
        since: int | None = None,
        epoch: str | None = None,
        address: str = "",
        expires_at: float | None = None,
    ) -> None:
        self.server = server
        self.address = address
        self._expiry_timer: asyncio.TimerHandle | None = None
        # who connected and what the connect URL asked for, until the handshake completes
        # (then the session holds the identity; in echo mode, kept)
        self._connect_options: tuple | None = (tenant_id, user_id, filters, since, epoch, expires_at)
        self.transport: WSTransport | None = None
        self.session: Session | None = None
        self._pending: bytes | list[bytes] | None = None  # one frame, or several in order
        self._fragments: bytearray | None = None
        self._fragments_binary = False
        self._fragments_size = 0
        self._closing = False
        #: frames waiting for the transport to drain (fastws.backlog); made when first
        #: needed, dropped once sent: most connections never see backpressure
        self.backlog: Backlog | None = None
        self.paused = False
        #: the CloseGuard in front of picows (it notes when data last arrived: Server._heartbeat)
        self.guard: Heard | None = None
        #: a heartbeat PING awaits its PONG
        self.pinged = False
        #: heartbeat ticks without data from the peer (or, once pinged, since the PING)
        self.quiet = 0

    # -- picows callbacks ------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        underlying = transport.underlying_transport
        settings = self.server.settings
        underlying.set_write_buffer_limits(high=settings.write_buffer_high, low=settings.write_buffer_high // 4)
        if settings.socket_send_buffer:
            sock = underlying.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, settings.socket_send_buffer)
        if not self.server.echo:  # the echo mode (tests) has no session and sends no welcome
            tenant_id, user_id, filters, since, epoch, expires_at = self._connect_options  # type: ignore[misc]
            self._connect_options = None
            self.session = self.server.hub.connect(self, tenant_id, user_id, filters, since, epoch, expires_at)
            self.server.control.connection_opened(self.address, tenant_id)
            if expires_at is not None:
                self._arm_expiry(expires_at)
        self.server.connections.add(self)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        handshake = transport.close_handshake
        if handshake is None:
            self.server.hub.metrics.record_close(codes.ABNORMAL_CLOSURE, False)  # the peer dropped it
        elif handshake.sent is not None and not handshake.recv_then_sent:
            self.server.hub.metrics.record_close(int(handshake.sent.code), True)
        else:
            self.server.hub.metrics.record_close(int(handshake.recv.code), False)  # type: ignore[union-attr]
        self._closing = True
        self._pending = None
        self._fragments = None
        self.server.connections.discard(self)
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        if self.session is not None:
            self.server.hub.disconnect(self.session)
            self.server.control.connection_closed(self.address, self.session.tenant_id)
        # Break the reference cycles (the session's sink is this connection; the guard holds
        # picows' protocol, which holds this listener), so the connection's memory goes now,
        # by reference counting, not at the next full garbage collection.
        self.session = None
        self.guard = None
        self.transport = None
        self._expiry_timer = None
        self._drop_backlog()

    def _arm_expiry(self, expires_at: float) -> None:
        delay = max(0.0, expires_at - time.time())
        self._expiry_timer = asyncio.get_running_loop().call_later(delay, self._on_expiry)

    def _on_expiry(self) -> None:
        """Close with 4101 when the token has expired, unless a refresh moved the expiry."""
        self._expiry_timer = None
        session = self.session
        if session is None or session.expires_at is None or self._closing:
            return
        if time.time() >= session.expires_at:
            self.close(codes.TOKEN_EXPIRED_CLOSE, "token expired")
        else:
            self._arm_expiry(session.expires_at)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self._closing:
            return
        try:
            self._on_frame(frame)
        except ConnectionClosedError as exc:
            # the peer's fault (a protocol violation, 1009, bad UTF-8, publishing abuse): INFO at most
            if log.isEnabledFor(logging.INFO):
                log.info("closing with %d: %s", exc.close_code, exc.reason, extra=self._fault(exc.close_code))
            self.close(exc.close_code, exc.reason)

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
            else:
                self.pinged = False  # the peer is alive (Server._heartbeat)
                self.quiet = 0
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
    #
    # While the transport takes data, frames queued in one loop iteration go out
    # in one write. When it pushes back (pause_writing: the kernel's and the
    # transport's buffers are full), frames wait in a Backlog (fastws.backlog)
    # holding references to the shared frames, bounded by max_send_buffer bytes
    # per connection and by the worker's share of max_send_buffer_total for all
    # of them (Server.relieve_budget); past a bound, events are dropped lowest
    # priority first (low, normal, high), oldest first, at O(1) each. Critical
    # events and replies are never dropped: when they alone overflow, the
    # connection is closed with 4008. Once the transport drains, the client is
    # first told what it missed (a "missed" message with, per channel, the first
    # and last offset dropped), so it can recover them from history.

    def send(self, frame: bytes) -> None:
        """Queue a reply or notice (never dropped)."""
        self.send_event(frame, NEVER_DROP, "", 0)

    def send_event(self, frame: bytes, priority: int, channel: str, offset: int) -> None:
        """Queue an event (replies use priority NEVER_DROP); under backpressure it may be dropped by priority."""
        if self.paused:
            self._backlog_add(frame, priority, channel, offset)
            return
        pending = self._pending
        if pending is None:
            if self._closing:
                return
            # One frame waits as itself: a list per connection per event would be a container
            # for the collector to count, and at 1,000 subscribers the lists of one fan-out
            # outlive a young collection, reach the oldest generation and trigger full
            # collections (a 19-26 ms pause each, measured) every few seconds.
            self._pending = frame
            self.server.schedule_flush(self)
        elif type(pending) is bytes:
            self._pending = [pending, frame]
        else:
            pending.append(frame)  # type: ignore[union-attr]

    def flush(self) -> None:
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        if self.transport.is_close_frame_sent:  # type: ignore[union-attr]
            # picows failed the connection itself (a frame it refused): no data after a close frame.
            self._closing = True
            return
        data = pending if type(pending) is bytes else b"".join(pending)
        self._write(data)
        self.server.hub.metrics.bytes_sent += len(data)

    def _write(self, data: bytes) -> None:
        # looked up per write, not kept: a bound method per connection is 64 bytes of idle memory
        self.transport.underlying_transport.write(data)  # type: ignore[union-attr]

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        backlog = self.backlog
        if self._closing or backlog is None:
            return
        self._drop_backlog()
        notice = backlog.missed_notice()
        if notice is not None:
            self.send(frame_text(orjson.dumps(notice)))
        for frame in backlog.drain():
            self.send(frame)

    def _backlog_add(self, frame: bytes, priority: int, channel: str, offset: int) -> None:
        if self._closing:
            return
        backlog = self.backlog
        server = self.server
        if backlog is None:
            backlog = self.backlog = Backlog()
            server.backlogged.add(self)
        backlog.add(frame, priority, channel, offset)
        budget = server.budget
        budget.used += len(frame)
        limit = server.settings.limits.max_send_buffer
        if backlog.nbytes > limit:
            budget.used -= backlog.shed(low_water(limit), server.hub.metrics.drop_reasons[0])
            if backlog.nbytes > limit:
                self.overflow("slow consumer: critical events could not be delivered")
                return
        if budget.used > budget.limit:
            server.relieve_budget()

    def shed(self, target: int) -> None:
        """Drop droppable events until at most ``target`` bytes wait (Server.relieve_budget)."""
        backlog = self.backlog
        if backlog is not None:
            self.server.budget.used -= backlog.shed(target, self.server.hub.metrics.drop_reasons[1])

    def overflow(self, reason: str) -> None:
        """Close with 4008: what waits cannot be delivered within the bounds (critical events count as dropped)."""
        backlog = self.backlog
        if backlog is not None:
            self.server.hub.metrics.drop_reasons[2][3] += backlog.critical
        if not self._closing and log.isEnabledFor(logging.INFO):
            log.info("closing with %d: %s", codes.SLOW_CONSUMER, reason, extra=self._fault(codes.SLOW_CONSUMER))
        self.close(codes.SLOW_CONSUMER, reason)

    def _drop_backlog(self) -> None:
        backlog = self.backlog
        if backlog is not None:
            self.backlog = None
            self.server.backlogged.discard(self)
            self.server.budget.used -= backlog.nbytes

    def heartbeat(self, idle_ticks: int, timeout_ticks: int, timeout: float) -> None:
        """One tick of the server's heartbeat (Server._heartbeat): PING a peer silent for
        ``idle_ticks`` ticks; close one that left a PING unanswered for ``timeout_ticks`` ticks
        with 1001 (what picows' auto-ping did, from one server-wide timer instead of a task per
        connection). Silence is counted in ticks (small ints, no object per connection)."""
        if self._closing or self.transport is None:
            return
        guard = self.guard
        heard = guard is not None and guard.heard
        if heard:
            guard.heard = False  # type: ignore[union-attr]
        transport = self.transport
        if self.pinged:
            self.quiet += 1
            if self.quiet >= timeout_ticks:
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("no pong within %s s: closing with %d", timeout, codes.GOING_AWAY,
                              extra=self._fault(codes.GOING_AWAY))
                self._closing = True
                self._pending = None
                self._drop_backlog()
                transport.send_close(
                    WSCloseCode.GOING_AWAY, f"peer has not replied to ping/heartbeat request within {timeout} second(s)")
                # Dropped, not closed gracefully: a dead peer would hold a graceful close until TCP gives up.
                asyncio.get_running_loop().call_later(0.01, transport.underlying_transport.abort)
        elif heard:
            self.quiet = 0
        else:
            self.quiet += 1
            if self.quiet >= idle_ticks:
                transport.send_ping()
                self.pinged = True
                self.quiet = 0

    def _fault(self, close_code: int) -> dict[str, Any]:
        """The fields of a record about this connection's peer doing something wrong (fastws.logs)."""
        session = self.session
        if session is not None:
            return logs.client_fault(session.tenant_id, session.connection_id, close_code)
        options = self._connect_options
        return logs.client_fault(options[0] if options else None, None, close_code)

    @property
    def tenant_id(self) -> str:
        session = self.session
        return session.tenant_id if session is not None else self._connect_options[0]  # type: ignore[index]

    @property
    def user_id(self) -> str:
        session = self.session
        return session.user_id if session is not None else self._connect_options[1]  # type: ignore[index]

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
        self._drop_backlog()
        transport.send_close(WSCloseCode(close_code), codes.close_reason(reason))
        transport.disconnect(graceful=True)
        if close_code == codes.SLOW_CONSUMER:
            # Its backlog is dropped; what the transport already holds (and the close
            # frame behind it) gets drain_timeout to go out, then the socket is dropped.
            asyncio.get_running_loop().call_later(self.server.settings.drain_timeout, self._abort, transport)

    def abandon(self, close_code: int, reason: str) -> None:
        """Send nothing more from now on (what is queued is dropped) and close in the next loop
        iteration: for a worker that lost its place in the shared log (WorkerControl._on_lost),
        so that no event after the gap reaches the client before it reconnects and recovers."""
        transport = self.transport
        if self._closing or transport is None:
            return
        self._closing = True
        self._pending = None
        self._drop_backlog()
        asyncio.get_running_loop().call_soon(self._send_close, transport, close_code, reason)

    def _send_close(self, transport: WSTransport, close_code: int, reason: str) -> None:
        if self.transport is transport:
            transport.send_close(WSCloseCode(close_code), codes.close_reason(reason))
            transport.disconnect(graceful=True)

    def _abort(self, transport: WSTransport) -> None:
        """Drop the socket of a connection closed with 4008 whose peer did not read its close in time."""
        if self.transport is transport:  # not yet gone (on_ws_disconnected clears it)
            transport.disconnect(False)
