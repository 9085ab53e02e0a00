"""The control plane across hosts, in Redis: flags, worker rows, and commands to every worker.

Within a host, workers share the control plane in memory (fastws.control);
with ``--broker redis://...`` the hosts of a cluster also share, on the first
Redis (fastws.cluster has the keys):

- **flags** (``P:flags``, JSON with a generation): a PUT on any host writes
  them and announces the change on ``P:control``; every worker of every host
  reads them on that message, and every second anyway, so a change reaches
  every worker within milliseconds (within a second if the announcement was
  lost), and survives the restart of any host. A host starting with flags
  in its configuration writes them only if the cluster has none, or none set
  by the API.
- **rows**: each worker writes its counters (``P:w:HOST:I``, JSON) every
  ``ROW_INTERVAL`` with a TTL of ``ROW_TTL``, and lists itself in
  ``P:workers``; status sums the live rows of the other hosts with its own
  host's (read from memory, fresh). A host that stops or dies drops out
  within ``ROW_TTL``.
- **commands**: DELETE publishes a disconnect on ``P:control``; PUBLISH
  answers how many workers heard it, and each pushes its count to a reply
  list the caller waits on (bounded by ``COMMAND_TIMEOUT``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable

import orjson
from redis.exceptions import RedisError
from redis.exceptions import WatchError as _WatchError

from .. import codes
from ..control import Flags
from ..exceptions import ProtocolError
from .tasks import cancel

if TYPE_CHECKING:
    from .redis_broker import RedisBroker

__all__ = ["ClusterPlane", "flags_to_json", "flags_from_json"]

log = logging.getLogger("fastws.cluster")

ROW_INTERVAL = 0.5
ROW_TTL = 3.0
FLAGS_POLL = 1.0
COMMAND_TIMEOUT = 2.0


def flags_to_json(flags: Flags) -> bytes:
    return orjson.dumps({**flags.to_json(), "generation": flags.generation})


def flags_from_json(data: bytes) -> Flags:
    value = orjson.loads(data)
    flags = Flags().updated({k: value[k] for k in ("websocket_v2", "rollout_percent", "existing", "tenants")}, 1 << 30)
    return replace(flags, source=value.get("source", "api"), generation=int(value.get("generation", 0)))


class ClusterPlane:
    """One worker's part in the cluster's control plane (see the module docstring)."""

    def __init__(
        self,
        broker: "RedisBroker",
        host_id: str,
        worker: int,
        stats: Callable[[], dict[str, Any]],
        apply_flags: Callable[[Flags], None],
        disconnect: Callable[[str, str | None, str | None], int],
    ) -> None:
        self.broker = broker
        self.client = broker.shards[0].client
        self.keys = broker.keys
        self.host_id = host_id
        self.worker = worker
        #: this worker's row (a JSON-able dict)
        self.stats = stats
        self.apply_flags = apply_flags
        self.disconnect_local = disconnect
        #: row key -> row of every live worker of the cluster (this host's too), as last read
        self.rows: dict[str, dict[str, Any]] = {}
        self.generation = -1
        self._task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self, local_flags: Flags) -> None:
        """Take the cluster's flags, or give it this host's when it has none (or none from the API)."""
        try:
            current = await asyncio.wait_for(self.client.get(self.keys.flags), self.broker.timeout)
            if current is None or (local_flags.source == "config" and flags_from_json(current).source != "api"):
                if local_flags.source != "default" or current is None:
                    generation = flags_from_json(current).generation + 1 if current else 1
                    await self.client.set(self.keys.flags, flags_to_json(replace(local_flags, generation=generation)),
                                          nx=current is None)
            await self._load_flags()
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            log.warning("cluster flags not read (%s): using this host's until Redis answers", exc)
        self._task = asyncio.ensure_future(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            await cancel([self._task])
        try:
            await asyncio.wait_for(self._remove_row(), 0.5)
        except (RedisError, OSError, asyncio.TimeoutError):
            pass

    async def _remove_row(self) -> None:
        key = self.keys.worker(self.host_id, self.worker)
        await self.client.delete(key)
        await self.client.zrem(self.keys.workers, key)

    async def _loop(self) -> None:
        last_flags = 0.0
        while True:
            try:
                await asyncio.wait_for(self._write_row(), self.broker.timeout)
                await asyncio.wait_for(self._read_rows(), self.broker.timeout)
                if time.monotonic() - last_flags >= FLAGS_POLL:
                    last_flags = time.monotonic()
                    await asyncio.wait_for(self._load_flags(), self.broker.timeout)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                log.debug("cluster rows: %s", exc)
            except Exception:  # a row or flags value this code did not write: the loop goes on
                log.exception("cluster rows or flags could not be read")
            await asyncio.sleep(ROW_INTERVAL)

    async def _write_row(self) -> None:
        key = self.keys.worker(self.host_id, self.worker)
        now_ms = int(time.time() * 1000)
        row = {**self.stats(), "host": self.host_id, "worker": self.worker}
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.set(key, orjson.dumps(row), px=int(ROW_TTL * 1000))
            pipe.zadd(self.keys.workers, {key: now_ms + int(ROW_TTL * 1000)})
            pipe.zremrangebyscore(self.keys.workers, "-inf", now_ms)
            pipe.get(self.keys.held)
            results = await pipe.execute()
        self.broker.held = max(0, int(results[3] or 0))

    async def _read_rows(self) -> None:
        now_ms = int(time.time() * 1000)
        keys = await self.client.zrangebyscore(self.keys.workers, now_ms, "+inf")
        rows: dict[str, dict[str, Any]] = {}
        if keys:
            for key, value in zip(keys, await self.client.mget(keys)):
                if value is not None:
                    rows[key.decode()] = orjson.loads(value)
        self.rows = rows

    def other_hosts(self) -> dict[str, dict[int, dict[str, Any]]]:
        """Rows of the other hosts' live workers: host -> worker -> row."""
        hosts: dict[str, dict[int, dict[str, Any]]] = {}
        for row in self.rows.values():
            if row.get("host") != self.host_id:
                hosts.setdefault(row["host"], {})[int(row["worker"])] = row
        return hosts

    # -- flags ---------------------------------------------------------------------------------

    async def _load_flags(self) -> None:
        data = await self.client.get(self.keys.flags)
        if data is None:
            return
        flags = flags_from_json(data)
        if flags.generation != self.generation:
            self.generation = flags.generation
            self.apply_flags(flags)

    async def set_flags(self, body: object, max_overrides: int) -> Flags:
        """Apply a PUT body's flag changes for the whole cluster; the new flags."""
        try:
            for _ in range(20):  # optimistic: retried if another host changed them meanwhile
                async with self.client.pipeline(transaction=True) as pipe:
                    try:
                        await pipe.watch(self.keys.flags)
                        data = await pipe.get(self.keys.flags)
                        current = flags_from_json(data) if data is not None else Flags()
                        flags = replace(current.updated(body, max_overrides), source="api",
                                        generation=current.generation + 1)
                        pipe.multi()
                        pipe.set(self.keys.flags, flags_to_json(flags))
                        pipe.publish(self.keys.control, orjson.dumps({"op": "flags"}))
                        await asyncio.wait_for(pipe.execute(), self.broker.timeout)
                        break
                    except _WatchError:
                        continue
            else:
                raise ProtocolError(codes.SERVICE_UNAVAILABLE, "the flags changed too often to apply this change")
        except (RedisError, OSError, asyncio.TimeoutError):
            raise ProtocolError(codes.BROKER_UNAVAILABLE, "the cluster's Redis did not answer: flags unchanged") from None
        self.generation = flags.generation
        self.apply_flags(flags)
        return flags

    # -- commands ------------------------------------------------------------------------------

    def on_control(self, message: dict) -> None:
        op = message.get("op")
        if op == "flags":
            self._spawn(self._load_flags_quietly())
        elif op == "disconnect":
            count = self.disconnect_local(message.get("tenant_id"), message.get("user_id"), message.get("connection_id"))
            self._spawn(self._reply(message.get("reply"), count))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load_flags_quietly(self) -> None:
        try:
            await asyncio.wait_for(self._load_flags(), self.broker.timeout)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            log.warning("flags not read after a change (%s): the next poll reads them", exc)

    async def _reply(self, request: object, count: int) -> None:
        if not isinstance(request, str):
            return
        key = self.keys.reply(request)
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.rpush(key, count)
                pipe.pexpire(key, int(COMMAND_TIMEOUT * 5000))
                await asyncio.wait_for(pipe.execute(), self.broker.timeout)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            log.warning("could not answer a disconnect command: %s", exc)

    async def disconnect(self, tenant_id: str, user_id: str | None, connection_id: str | None) -> int:
        """Disconnect the selected connections on every worker of every host; how many there were."""
        request = os.urandom(8).hex()
        body = orjson.dumps({"op": "disconnect", "tenant_id": tenant_id, "user_id": user_id,
                             "connection_id": connection_id, "reply": request})
        key = self.keys.reply(request)
        try:
            heard = await asyncio.wait_for(self.client.publish(self.keys.control, body), self.broker.timeout)
            total, answers = 0, 0
            deadline = time.monotonic() + COMMAND_TIMEOUT
            while answers < heard:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("disconnect: %d of %d workers answered in time", answers, heard)
                    break
                popped = await asyncio.wait_for(self.client.blpop([key], timeout=max(0.01, min(left, 1.0))), left + 1)
                if popped is not None:
                    total += int(popped[1])
                    answers += 1
            return total
        except (RedisError, OSError, asyncio.TimeoutError):
            raise ProtocolError(codes.BROKER_UNAVAILABLE, "the cluster's Redis did not answer in time") from None

