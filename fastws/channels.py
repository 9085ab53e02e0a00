"""Channel grammar and tenant binding.

A channel is ``NAME:TENANT``. Tenant ids and channel names are 1 to 64
characters of ``[A-Za-z0-9_.-]`` (is_valid_id), so the single ``:`` is
unambiguous. User ids, event names and sources are looser (is_valid_name):
any UTF-8 text of 1 to 128 bytes without control characters.
``tenant`` is a NAME like any other: ``tenant:T`` is the tenant-wide channel
every connection of tenant T joins on connect.

Checks compare parsed ``(name, tenant)`` pairs, never string prefixes:
``ideas:acme-evil`` is not a channel of tenant ``acme``.
"""

from __future__ import annotations

import re
from typing import Final

from . import codes
from .exceptions import ChannelError, ProtocolError

__all__ = [
    "CONTROL_CHARACTERS",
    "ID_PATTERN",
    "MAX_NAME_BYTES",
    "TENANT_CHANNEL",
    "is_valid_id",
    "is_valid_name",
    "validate_tenant_id",
    "validate_user_id",
    "parse_channel",
    "resolve_channel",
    "tenant_channel",
]

ID_PATTERN: Final = r"[A-Za-z0-9_.-]{1,64}"
_ID_RE: Final = re.compile(ID_PATTERN)
TENANT_CHANNEL: Final = "tenant"
_MAX_CHANNEL_LENGTH: Final = 64 + 1 + 64


#: user ids, event names and sources: text of 1 to MAX_NAME_BYTES bytes of UTF-8, no control characters
MAX_NAME_BYTES: Final = 128
#: the control characters no name may hold (C0, DEL and C1), as a regular expression's class body
CONTROL_CHARACTERS: Final = r"\x00-\x1f\x7f-\x9f"
_CONTROL_RE: Final = re.compile(f"[{CONTROL_CHARACTERS}]")


#: names found valid lately (names repeat: the same event types, sources and users), bounded
_VALID_NAMES: dict[str, None] = {}
_VALID_NAMES_MAX: Final = 4096


def is_valid_name(value: object) -> bool:
    """True for a str of 1-128 bytes of UTF-8 without control characters: a user id, an event
    name or a source (emails, ``user:update``, spaces and any script welcome). Tenant ids and
    channel names stay strict (is_valid_id): they make up channel names and carry the tenant."""
    if type(value) is not str:
        return False
    if value in _VALID_NAMES:
        return True
    if not 0 < len(value) <= MAX_NAME_BYTES:
        return False
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate
        return False
    if size > MAX_NAME_BYTES or _CONTROL_RE.search(value) is not None:
        return False
    if len(_VALID_NAMES) >= _VALID_NAMES_MAX:
        _VALID_NAMES.clear()
    _VALID_NAMES[value] = None
    return True


def is_valid_id(value: object) -> bool:
    """True for a str of 1-64 characters of [A-Za-z0-9_.-]: a tenant id, or a channel name's part."""
    return type(value) is str and _ID_RE.fullmatch(value) is not None


def validate_tenant_id(value: object) -> str:
    if not is_valid_id(value):
        raise ProtocolError(codes.INVALID_TENANT_ID)
    return value  # type: ignore[return-value]


def validate_user_id(value: object) -> str:
    if not is_valid_name(value):
        raise ProtocolError(codes.INVALID_USER_ID)
    return value  # type: ignore[return-value]


def tenant_channel(tenant_id: str) -> str:
    """The tenant-wide channel, ``tenant:T``."""
    return f"{TENANT_CHANNEL}:{tenant_id}"


def parse_channel(channel: object) -> tuple[str, str | None]:
    """Split a channel into ``(name, tenant)``; ``tenant`` is None for a bare name.

    Raises ChannelError(invalid_channel) for anything outside the grammar.
    """
    if type(channel) is not str or not channel or len(channel) > _MAX_CHANNEL_LENGTH:
        raise ChannelError(codes.INVALID_CHANNEL)
    name, sep, tenant = channel.partition(":")
    if not is_valid_id(name) or (sep and not is_valid_id(tenant)):
        raise ChannelError(codes.INVALID_CHANNEL)
    return name, (tenant if sep else None)


def resolve_channel(channel: object, tenant_id: str) -> str:
    """The canonical ``NAME:T`` for a channel a connection of ``tenant_id`` names.

    A bare ``NAME`` means ``NAME:tenant_id``; a channel of another tenant raises
    ChannelError(forbidden_channel).
    """
    name, tenant = parse_channel(channel)
    if tenant is None:
        return f"{name}:{tenant_id}"
    if tenant != tenant_id:
        raise ChannelError(codes.FORBIDDEN_CHANNEL, f"channel {channel!s:.140} belongs to another tenant")
    return channel  # type: ignore[return-value]
