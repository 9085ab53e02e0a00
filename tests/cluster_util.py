"""`fastws serve --workers N` as a real process, for the integration tests of workers and of hosts.

``Cluster`` starts ``python -m fastws serve --port 0 --workers N ...`` (the
environment is passed down, so ``PYTHONPATH`` decides which fastws runs),
reads the URL the supervisor logs once every worker listens, keeps the log,
and speaks plain HTTP/1.1 to it. ``until`` polls a condition, bounded.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections import defaultdict

import orjson

from tests.helpers import Client

URL_LINE = re.compile(rb"WebSocket (ws://\S+?)\?")
TIMEOUT = 20.0


class Cluster:
    """`fastws serve --workers N` in a real process, its URL, and its log."""

    def __init__(self, process: asyncio.subprocess.Process, url: str) -> None:
        self.process = process
        self.url = url
        self.host, self.port = url.removeprefix("ws://").removesuffix("/ws").rsplit(":", 1)
        self.log: list[bytes] = []
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while line := await self.process.stderr.readline():
            self.log.append(line)

    @classmethod
    async def start(cls, workers: int = 2, *args: str, env: dict[str, str] | None = None) -> "Cluster":
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fastws", "serve", "--port", "0", "--workers", str(workers), *args,
            stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})},
        )
        seen: list[bytes] = []
        while True:
            line = await asyncio.wait_for(process.stderr.readline(), TIMEOUT)
            assert line, "the server exited:\n" + b"".join(seen).decode(errors="replace")
            seen.append(line)
            match = URL_LINE.search(line)
            if match:
                cluster = cls(process, match.group(1).decode())
                cluster.log[:0] = seen
                return cluster

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), TIMEOUT)
        await self._reader
        return code

    def text(self) -> str:
        return b"".join(self.log).decode(errors="replace")

    async def http(self, method: str, path: str, headers: dict[str, str] | None = None, body: object = None):
        """One request on a new connection (so any worker may answer): (status, decoded JSON body)."""
        reader, writer = await asyncio.open_connection(self.host, int(self.port))
        data = b"" if body is None else orjson.dumps(body)
        lines = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(data)}\r\n"
            f"Content-Type: application/json\r\n{lines}\r\n".encode() + data
        )
        raw = await asyncio.wait_for(reader.read(), TIMEOUT)
        writer.close()
        head, _, payload = raw.partition(b"\r\n\r\n")
        return int(head.split()[1]), orjson.loads(payload)

    async def spread(self, tenant: str, count: int = 24, **query: str) -> dict[int, list[Client]]:
        """Open connections until each worker has some; grouped by the worker named in the welcome."""
        by_worker: dict[int, list[Client]] = defaultdict(list)
        for i in range(200):
            client = await Client.connect(self.url, tenant, f"u{i}", **query)
            by_worker[client.welcome["data"]["worker"]].append(client)
            if i + 1 >= count and len(by_worker) >= 2:
                break
        assert len(by_worker) >= 2, "every connection landed on one worker"
        return by_worker


async def until(predicate, timeout: float = TIMEOUT) -> None:
    """Poll a condition (bounded); fail if it never holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)
