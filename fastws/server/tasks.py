"""Stopping background tasks: cancelled until they have ended, not only once."""

from __future__ import annotations

import asyncio
from typing import Iterable

__all__ = ["CANCEL_AGAIN", "cancel"]

#: seconds a cancelled task is given to end before it is cancelled again
CANCEL_AGAIN = 0.05


async def cancel(tasks: Iterable["asyncio.Future[object]"]) -> None:
    """Cancel ``tasks`` and wait until every one has ended; their outcomes are read and dropped.

    One cancel is not always enough. On Python 3.11, ``asyncio.wait_for`` returns the result of
    an awaited operation that completed in the same loop iteration as the cancellation and drops
    the cancellation (CPython gh-86296, fixed in 3.12), and so can a library that catches
    CancelledError while it cleans up: a task looping over such awaits then carries on, and a
    single ``cancel(); await task`` waits for ever. Here a task still running after
    :data:`CANCEL_AGAIN` seconds is cancelled again.
    """
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=CANCEL_AGAIN)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: nothing is logged as "never retrieved"
