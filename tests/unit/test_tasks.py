"""fastws.server.tasks.cancel: a task that lost a cancellation is cancelled again until it ends."""

from __future__ import annotations

import asyncio

import pytest

from fastws.server.tasks import cancel


async def _loses_one_cancellation(state: dict) -> None:
    """A loop like the cluster rows': the first cancellation is lost (as asyncio.wait_for on Python 3.11
    may drop one), and it goes on looping."""
    while True:
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            state["lost"] += 1
            if state["lost"] > 1:
                raise


async def test_a_task_that_lost_a_cancellation_is_cancelled_again():
    state = {"lost": 0}
    task = asyncio.ensure_future(_loses_one_cancellation(state))
    await asyncio.sleep(0.02)
    task.cancel()  # what close() did: one cancel, then wait
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(task), 0.2)
    assert not task.done() and state["lost"] == 1
    await asyncio.wait_for(cancel([task]), 5)
    assert task.cancelled() and state["lost"] == 2


async def test_ended_and_failed_tasks_are_waited_for_and_read():
    async def fails() -> None:
        raise ValueError("read, not logged")

    done = asyncio.ensure_future(asyncio.sleep(0))
    failed = asyncio.ensure_future(fails())
    sleeping = asyncio.ensure_future(asyncio.sleep(60))
    await asyncio.sleep(0.01)
    await asyncio.wait_for(cancel([done, failed, sleeping]), 5)
    assert done.done() and not done.cancelled() and sleeping.cancelled()
    assert isinstance(failed.exception(), ValueError)
