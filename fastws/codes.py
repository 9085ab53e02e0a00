"""Every error code and close code fastws uses, in one place.

Error codes are snake_case strings sent in ``{"type":"error","code":..}``
replies over WebSocket and in ``{"success":false,"error":{"code":..}}`` bodies
over HTTP. Close codes are WebSocket close frame codes.

Close code ranges (RFC 6455 section 7.4):

- 1000-1015: protocol-level codes defined by RFC 6455.
- 4000-4099: fastws policy codes; the connection was healthy but a server
  policy ended it. A client may reconnect (after fixing the cause).
- 4100-4199: reserved for authentication (see docs/security.md).

``docs/protocol.md`` lists the same tables; ``tests/unit/test_codes.py``
checks that the two agree.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ERRORS",
    "CLOSE_CODES",
    "MAX_CLOSE_REASON",
    "close_reason",
]

# --- WebSocket close codes --------------------------------------------------

NORMAL_CLOSURE: Final = 1000
GOING_AWAY: Final = 1001
PROTOCOL_ERROR: Final = 1002
UNSUPPORTED_DATA: Final = 1003
#: never sent: what a connection ended without a close frame counts as (in metrics)
ABNORMAL_CLOSURE: Final = 1006
INVALID_PAYLOAD: Final = 1007
POLICY_VIOLATION: Final = 1008
MESSAGE_TOO_BIG: Final = 1009
INTERNAL_ERROR: Final = 1011
TRY_AGAIN_LATER: Final = 1013
SLOW_CONSUMER: Final = 4008
LOST_PLACE: Final = 4009
DISCONNECTED_BY_ADMIN: Final = 4001
ROLLED_BACK_CLOSE: Final = 4002
RATE_LIMITED_CLOSE: Final = 4029
TOKEN_EXPIRED_CLOSE: Final = 4101

CLOSE_CODES: Final[dict[int, str]] = {
    NORMAL_CLOSURE: "normal closure",
    GOING_AWAY: "server shutting down, or the peer stopped answering pings",
    PROTOCOL_ERROR: "WebSocket protocol error: reserved bits, bad opcode, bad close code, bad fragmentation",
    UNSUPPORTED_DATA: "binary frames are not part of the protocol",
    INVALID_PAYLOAD: "text frame is not valid UTF-8",
    POLICY_VIOLATION: "policy violation",
    MESSAGE_TOO_BIG: "reassembled message exceeds the size limit",
    INTERNAL_ERROR: "unexpected server error",
    TRY_AGAIN_LATER: "server overloaded, reconnect later",
    DISCONNECTED_BY_ADMIN: "disconnected by an administrator",
    ROLLED_BACK_CLOSE: "websocket_v2 was turned off for the tenant: reconnect to the legacy URL (in the reason)",
    SLOW_CONSUMER: "the connection could not keep up with its events",
    LOST_PLACE: "the worker lost its place in the event stream (shared log or Redis): reconnect and recover",
    RATE_LIMITED_CLOSE: "sustained publishing over the rate limit",
    TOKEN_EXPIRED_CLOSE: "the connection's token expired and was not refreshed",
}

# Close reasons travel in a control frame: at most 125 bytes, 2 of them for
# the code. Keep them short.
MAX_CLOSE_REASON: Final = 123


def close_reason(text: str) -> bytes:
    """Encode ``text`` as a close reason that always fits in a close frame."""
    data = text.encode("utf-8")
    if len(data) <= MAX_CLOSE_REASON:
        return data
    return data[:MAX_CLOSE_REASON].decode("utf-8", "ignore").encode("utf-8")


# --- Error codes --------------------------------------------------------------
# code -> (HTTP status when it happens over REST, meaning)

INVALID_JSON: Final = "invalid_json"
INVALID_MESSAGE: Final = "invalid_message"
UNKNOWN_TYPE: Final = "unknown_type"
RESERVED_TYPE: Final = "reserved_type"
MISSING_FIELD: Final = "missing_field"
INVALID_FIELD: Final = "invalid_field"
INVALID_EVENT: Final = "invalid_event"
INVALID_SOURCE: Final = "invalid_source"
INVALID_CHANNEL: Final = "invalid_channel"
FORBIDDEN_CHANNEL: Final = "forbidden_channel"
INVALID_PRIORITY: Final = "invalid_priority"
INVALID_FILTERS: Final = "invalid_filters"
INVALID_USER_ID: Final = "invalid_user_id"
INVALID_TENANT_ID: Final = "invalid_tenant_id"
TOO_MANY_SUBSCRIPTIONS: Final = "too_many_subscriptions"
PAYLOAD_TOO_LARGE: Final = "payload_too_large"
MISSING_HEADER: Final = "missing_header"
BATCH_TOO_LARGE: Final = "batch_too_large"
NOT_FOUND: Final = "not_found"
METHOD_NOT_ALLOWED: Final = "method_not_allowed"
UNSUPPORTED_MEDIA_TYPE: Final = "unsupported_media_type"
HEADERS_TOO_LARGE: Final = "headers_too_large"
BAD_REQUEST: Final = "bad_request"
UPGRADE_REQUIRED: Final = "upgrade_required"
INTERNAL: Final = "internal_error"
SERVICE_UNAVAILABLE: Final = "service_unavailable"
ROLLED_BACK: Final = "rolled_back"
UNAUTHORIZED: Final = "unauthorized"
TOKEN_EXPIRED: Final = "token_expired"
FORBIDDEN: Final = "forbidden"
ORIGIN_NOT_ALLOWED: Final = "origin_not_allowed"
RATE_LIMITED: Final = "rate_limited"
TOO_MANY_CONNECTIONS: Final = "too_many_connections"
TOO_MANY_CHANNELS: Final = "too_many_channels"
BROKER_UNAVAILABLE: Final = "broker_unavailable"

ERRORS: Final[dict[str, tuple[int, str]]] = {
    INVALID_JSON: (400, "the message or body is not valid JSON"),
    INVALID_MESSAGE: (400, "the message is not a JSON object with a string 'type'"),
    UNKNOWN_TYPE: (400, "'type' names no command, and the message has no 'data' to publish"),
    RESERVED_TYPE: (400, "the type or event name is reserved for the server"),
    MISSING_FIELD: (400, "a required field is missing"),
    INVALID_FIELD: (400, "a field has the wrong type or value"),
    INVALID_EVENT: (400, "the event name is not text of 1-128 bytes (UTF-8) without control characters"),
    INVALID_SOURCE: (400, "the source is not text of 1-128 bytes (UTF-8) without control characters"),
    INVALID_CHANNEL: (400, "the channel name does not follow the channel grammar"),
    FORBIDDEN_CHANNEL: (403, "the channel belongs to another tenant"),
    INVALID_PRIORITY: (400, "priority is not one of low, normal, high, critical"),
    INVALID_FILTERS: (400, "filters must be an object of string lists"),
    INVALID_USER_ID: (400, "the user id is not text of 1-128 bytes (UTF-8) without control characters"),
    INVALID_TENANT_ID: (400, "the tenant id is not 1-64 characters of [A-Za-z0-9_.-]"),
    TOO_MANY_SUBSCRIPTIONS: (400, "the connection has reached its subscription limit"),
    PAYLOAD_TOO_LARGE: (413, "the message or body exceeds the size limit"),
    MISSING_HEADER: (400, "a required header is missing"),
    BATCH_TOO_LARGE: (400, "a batch holds more events than allowed"),
    NOT_FOUND: (404, "no such path"),
    METHOD_NOT_ALLOWED: (405, "the path does not accept this method"),
    UNSUPPORTED_MEDIA_TYPE: (415, "the body must be application/json"),
    HEADERS_TOO_LARGE: (431, "the request line and headers exceed the size limit"),
    BAD_REQUEST: (400, "the HTTP request could not be parsed"),
    UPGRADE_REQUIRED: (426, "this path serves WebSocket upgrades only, of version 13 (Sec-WebSocket-Version: 13)"),
    INTERNAL: (500, "unexpected server error; the details are in the server log"),
    SERVICE_UNAVAILABLE: (503, "the server is shutting down"),
    ROLLED_BACK: (503, "websocket_v2 is off for this tenant: connect to legacy_url"),
    UNAUTHORIZED: (401, "a valid token is required (Authorization: Bearer, or ?token= on a WebSocket URL)"),
    TOKEN_EXPIRED: (401, "the token has expired"),
    FORBIDDEN: (403, "the token does not allow this (another tenant or user, or not an admin token)"),
    ORIGIN_NOT_ALLOWED: (403, "the browser origin is not in the allow-list"),
    RATE_LIMITED: (429, "too many publishes or connections: slow down (REST: see Retry-After)"),
    TOO_MANY_CONNECTIONS: (429, "the tenant or client address has reached its connection limit"),
    TOO_MANY_CHANNELS: (429, "the tenant has reached its limit of channels with history: publish to existing ones"),
    BROKER_UNAVAILABLE: (503, "the cluster's Redis did not answer in time: retry (a publish refused so may "
                              "still have been delivered; its event id tells)"),
}
