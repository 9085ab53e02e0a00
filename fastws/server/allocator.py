"""Giving memory back to the operating system after a wave of connections has gone.

C allocators keep freed memory for reuse: after 10,000 connections close, a
server's RSS stays at its high mark. glibc's ``malloc_trim(0)`` returns the
free pages it holds (from the middle of the heap too, not only its top); it
costs about 1 ms after 10,000 connections here. The server calls it from its
once-a-second sweep when the number of open WebSocket connections has fallen
by at least :data:`TRIM_AFTER` since the last call. Where the C library is not
glibc, :func:`trim` does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["TRIM_AFTER", "trim"]

log = logging.getLogger("fastws.allocator")

#: trim once open connections have fallen by this many since the last high mark
TRIM_AFTER = 1000


def _malloc_trim():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


_TRIM = _malloc_trim()


def trim() -> bool:
    """Return the C heap's free pages to the operating system; False where that is not possible."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
