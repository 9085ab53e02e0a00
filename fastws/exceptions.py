"""The exception tree. Everything fastws raises on purpose derives from FastWSError.

::

    FastWSError
    ├── ProtocolError          a client broke the wire protocol: carries an error code
    │   └── ChannelError       a channel name is invalid or belongs to another tenant
    ├── ConnectionClosedError  a WebSocket must be closed: carries a close code
    └── ConfigError            invalid settings
"""

from __future__ import annotations

from . import codes

__all__ = ["FastWSError", "ProtocolError", "ChannelError", "ConnectionClosedError", "ConfigError"]


class FastWSError(Exception):
    """Root of every exception fastws raises on purpose."""


class ProtocolError(FastWSError):
    """The client's fault: answered with ``code`` (see :mod:`fastws.codes`), the connection stays up."""

    def __init__(self, code: str, message: str | None = None, ref: object = None, retry_after: int | None = None) -> None:
        if code not in codes.ERRORS:
            raise ValueError(f"undocumented error code {code!r}")
        self.code = code
        self.message = message or codes.ERRORS[code][1]
        #: the command's ``ref`` (None when it had none), echoed in the error reply
        self.ref = ref
        #: seconds a rate-limited client should wait (REST: the Retry-After header)
        self.retry_after = retry_after
        super().__init__(f"{code}: {self.message}")

    @property
    def http_status(self) -> int:
        return codes.ERRORS[self.code][0]


class ChannelError(ProtocolError):
    """A channel name is malformed (invalid_channel) or another tenant's (forbidden_channel)."""


class ConnectionClosedError(FastWSError):
    """The connection must be closed with ``close_code``."""

    def __init__(self, close_code: int, reason: str = "") -> None:
        if close_code not in codes.CLOSE_CODES:
            raise ValueError(f"undocumented close code {close_code}")
        self.close_code = close_code
        self.reason = reason or codes.CLOSE_CODES[close_code]
        super().__init__(f"{close_code}: {self.reason}")


class ConfigError(FastWSError):
    """Invalid settings."""
