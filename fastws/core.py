"""The one place that picks the compiled core or its pure-Python twin.

``FASTWS_NO_EXTENSIONS=1`` forces the twin. :data:`IMPLEMENTATION` is
``"cython"`` or ``"python"``; the startup log and the status API show it, so
a slow fallback never goes unseen.
"""

from __future__ import annotations

import os

__all__ = ["IMPLEMENTATION", "frame_text", "frame_event", "new_epoch", "CloseScanner", "Matcher", "RingBuffer"]

if os.environ.get("FASTWS_NO_EXTENSIONS", "") not in ("", "0"):
    from ._core_py import IMPLEMENTATION, CloseScanner, Matcher, RingBuffer, frame_event, frame_text, new_epoch
else:
    try:
        from ._core import IMPLEMENTATION, CloseScanner, Matcher, RingBuffer, frame_event, frame_text, new_epoch  # type: ignore[no-redef]
    except ImportError:
        from ._core_py import IMPLEMENTATION, CloseScanner, Matcher, RingBuffer, frame_event, frame_text, new_epoch  # type: ignore[no-redef,assignment]
