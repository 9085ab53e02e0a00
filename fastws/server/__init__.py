"""The I/O side: the only package that imports asyncio, uvloop, picows and httptools."""

from .app import Server, serve

__all__ = ["Server", "serve"]
