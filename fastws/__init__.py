"""fastws: a high-performance, multi-tenant WebSocket pub/sub server."""

from __future__ import annotations

__version__ = "0.1.0"

from .core import IMPLEMENTATION
from .exceptions import ChannelError, ConfigError, ConnectionClosedError, FastWSError, ProtocolError
from .client import AuthenticationError, Client, ClientError, CommandError, RecoveryFailed
from .publisher import AsyncPublisher, PublishError, apublish, publish

__all__ = [
    "__version__",
    "IMPLEMENTATION",
    "FastWSError",
    "ProtocolError",
    "ChannelError",
    "ConnectionClosedError",
    "ConfigError",
    "Client",
    "ClientError",
    "CommandError",
    "AuthenticationError",
    "RecoveryFailed",
    "publish",
    "apublish",
    "AsyncPublisher",
    "PublishError",
]
