"""Per-connection protocol state, sans I/O.

A Session is fed complete text messages (``receive``) and answers through its
Sink: ``send(frame)`` with pre-built frame bytes, ``close(code, reason)``. The
server adapter implements the Sink on a real transport; tests implement it on
a list.

Invariants:

1. Every command with a non-null ``ref`` gets exactly one reply: an ack (a
   pong for ping) or an error. A command without a ref gets a reply only when
   it fails.
2. A failed command changes nothing: the error reply is all that happens.
3. All of a connection's outgoing frames, replies and events, go through its
   Sink in the order they were produced.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Protocol

from . import codes, logs
from .core import frame_text
from .exceptions import ProtocolError
from .limits import AbuseMeter, TokenBucket
from .messages import (
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

__all__ = ["Host", "Sink", "Session", "connection_id_bytes"]

log = logging.getLogger("fastws.session")

class Host(Protocol):
    """What a Session asks of the hub it belongs to (fastws.hub.Hub), so that this module
    needs nothing from that one."""

    metrics: Any
    debug: bool

    def check_publish(self, session: "Session", ref: Any = None) -> None: ...

    def publish(self, tenant_id: str, user_id: str, publish: Publish, ack_to: "Session | None" = None) -> str: ...

    def subscribe(self, session: "Session", channel: object, event_types: frozenset[str] | None, ref: Any = None,
                  since: int | None = None, epoch: str | None = None) -> None: ...

    def unsubscribe(self, session: "Session", channel: object, ref: Any = None) -> str: ...

    def set_filters(self, session: "Session", filters: Filters) -> None: ...

    def refresh(self, session: "Session", token: str, ref: Any = None) -> str | None: ...


#: no filters (Filters is immutable: one object for every session without any)
_NO_FILTERS = Filters()


def connection_id_bytes(connection_id: str) -> bytes | None:
    """The 16 bytes of a connection id as fastws writes it (a lower-case UUID); None for any other string."""
    try:
        parsed = uuid.UUID(connection_id)
    except ValueError:
        return None
    return parsed.bytes if str(parsed) == connection_id else None


class Sink(Protocol):
    """Where a session's outgoing frames go."""

    def send(self, frame: bytes) -> None:
        """Queue a complete WebSocket frame (a reply or notice: never dropped) for this connection."""

    def send_event(self, frame: bytes, priority: int, channel: str, offset: int) -> None:
        """Queue an event's frame; a slow connection may drop it, lowest priority first."""

    def close(self, close_code: int, reason: str) -> None:
        """Flush what is queued, send a close frame, and end the connection."""


class Session:
    """One WebSocket connection's state: identity, filters, and command dispatch."""

    __slots__ = (
        "hub", "sink", "number", "_id", "tenant_id", "user_id", "filters", "closed",
        "bucket", "abuse", "expires_at",
    )

    def __init__(
        self,
        hub: Host,
        sink: Sink,
        number: int,
        connection_id: str,
        tenant_id: str,
        user_id: str,
    ) -> None:
        self.hub = hub
        self.sink = sink
        #: the small integer the matcher knows this connection by
        self.number = number
        # the id clients and operators see, as its 16 bytes (a str of it is 96 bytes per connection)
        self._id = uuid.UUID(connection_id).bytes
        self.tenant_id = tenant_id
        self.user_id = user_id
        self.filters = _NO_FILTERS
        self.closed = False
        #: publishes allowed to this connection, and its rejected ones (made at its first publish)
        self.bucket: TokenBucket | None = None
        self.abuse: AbuseMeter | None = None
        #: unix time its token expires (None: open mode); a refresh moves it
        self.expires_at: float | None = None

    @property
    def connection_id(self) -> str:
        """The id clients and operators see (a UUID string)."""
        return str(uuid.UUID(bytes=self._id))

    @property
    def id_bytes(self) -> bytes:
        """The connection id's 16 bytes (see :func:`connection_id_bytes`)."""
        return self._id

    def __repr__(self) -> str:
        return f"<Session {self.connection_id} tenant={self.tenant_id} user={self.user_id}>"

    # -- incoming ----------------------------------------------------------------

    def receive(self, data: bytes | memoryview) -> None:
        """Handle one complete client message (valid UTF-8)."""
        metrics = self.hub.metrics
        metrics.messages_received += 1
        metrics.bytes_received += len(data)
        try:
            command = decode_command(data)
            self._dispatch(command)
        except ProtocolError as exc:
            self.hub.metrics.errors += 1
            # the client's fault: INFO at most, and rate-limited per code (fastws.logs)
            if log.isEnabledFor(logging.INFO):
                log.info("command refused: %s: %s", exc.code, exc.message,
                         extra=logs.client_fault(self.tenant_id, self.connection_id, exc.code))
            self.send_json(encode_error(exc.code, exc.message, exc.ref))

    def _dispatch(self, command: object) -> None:
        if type(command) is Publish:
            self.hub.check_publish(self, command.ref)
            event_id = self.hub.publish(self.tenant_id, self.user_id, command, ack_to=self)
            if self.hub.debug:
                log.debug("published %s", event_id, extra=logs.about(self.tenant_id, self.connection_id))
        elif type(command) is Subscribe:
            self.hub.subscribe(
                self, command.channel, command.event_types, command.ref, command.since, command.epoch
            )
        elif type(command) is Unsubscribe:
            channel = self.hub.unsubscribe(self, command.channel, command.ref)
            if command.ref is not None:
                self.send_json(encode_ack(command.ref, channel=channel))
        elif type(command) is SetFilters:
            self.hub.set_filters(self, command.filters)
            if command.ref is not None:
                self.send_json(encode_ack(command.ref, filters=command.filters.to_json()))
        elif type(command) is Ping:
            self.send_json(encode_pong(command.ref))
        elif type(command) is Refresh:
            expires_at = self.hub.refresh(self, command.token, command.ref)
            if command.ref is not None:
                self.send_json(encode_ack(command.ref, expiresAt=expires_at))
        else:  # pragma: no cover - decode_command returns only the types above
            raise ProtocolError(codes.UNKNOWN_TYPE)

    # -- outgoing ----------------------------------------------------------------

    def send_json(self, payload: bytes) -> None:
        """Frame and queue one JSON message for this connection only."""
        self.sink.send(frame_text(payload))
