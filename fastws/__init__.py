"""fastws: a high-performance, multi-tenant WebSocket pub/sub server.

The client and the REST publishing helpers (which need asyncio and picows) are
loaded on first use, so importing the sans-I/O core (``fastws.messages``,
``fastws.hub`` ...) never imports an event loop or picows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .core import IMPLEMENTATION
from .exceptions import ChannelError, ConfigError, ConnectionClosedError, FastWSError, ProtocolError

if TYPE_CHECKING:
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

_LAZY = {
    "Client": "client", "ClientError": "client", "CommandError": "client", "AuthenticationError": "client",
    "RecoveryFailed": "client", "publish": "publisher", "apublish": "publisher", "AsyncPublisher": "publisher",
    "PublishError": "publisher",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fastws' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
