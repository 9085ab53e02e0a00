"""The supervisor: one port, N worker processes, one shared segment.

It reserves the port (each worker listens on its own SO_REUSEPORT socket, and
the kernel spreads connections over them), creates the shared segment (control plane and shared log,
fastws.broker) in /dev/shm (and removes its name at once), an eventfd per
worker, and runs each worker with ``python -m fastws.server.worker``,
passing the segment and the eventfds down as descriptors. A worker that dies is started again (0.1 s backoff, doubling to 5 s,
reset after 10 s of good health), on the same socket and segment, so the
other workers and their connections never notice. SIGTERM/SIGINT drain the
workers (they close clients with 1001) and exit 0; SIGHUP reloads the
configuration file and passes SIGHUP on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import tempfile
from dataclasses import replace
from typing import Any

import orjson

from .. import __version__, logs
from ..auth import log_auth_mode
from ..broker import SharedSegment
from ..config import Settings, read_config_file
from ..control import Flags
from ..core import IMPLEMENTATION
from .tasks import cancel

__all__ = ["Supervisor"]

log = logging.getLogger("fastws.supervisor")

BACKOFF_START = 0.1
BACKOFF_MAX = 5.0
HEALTHY_AFTER = 10.0


def config_flags(config: str | None) -> Flags | None:
    if not config:
        return None
    table = read_config_file(config)[1]
    if table is None:
        return None
    return Flags().updated(table, 1 << 30) if table else Flags()


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        workers: int,
        config: str | None = None,
        overrides: dict[str, Any] | None = None,
        log_level: str = "info",
    ) -> None:
        if workers < 1:
            raise ValueError("at least one worker")
        self.settings = settings
        self.workers = workers
        self.config = config
        self.overrides = overrides or {}
        self.log_level = log_level
        self.stopping = False
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self._stop = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        settings = self.settings
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        # Reserve the port (port 0 picks one) without listening: each worker listens on its
        # own SO_REUSEPORT socket, and the kernel spreads new connections over them.
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((settings.host, settings.port))
        directory = tempfile.mkdtemp(prefix="fastws-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        path = os.path.join(directory, "segment")
        segment = SharedSegment.create(path, settings.limits, max_workers=max(64, self.workers))
        # Workers inherit the descriptor: the name can go at once, so nothing is left
        # behind in /dev/shm however the processes end.
        os.unlink(path)
        os.rmdir(directory)
        os.set_inheritable(segment.fd, True)
        flags = config_flags(self.config)
        if flags is not None:
            segment.plane.write_flags(replace(flags, source="config"))
        wake_fds = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(self.workers)]
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self._reload(segment)))
        host, port = sock.getsockname()[:2]
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        log.info("fastws %s (core: %s, workers: %d)", __version__, IMPLEMENTATION, self.workers)
        log_auth_mode(settings, log)
        spec = {
            "segment_fd": segment.fd,
            "host": host,
            "port": port,
            "wake_fds": wake_fds,
            "config": self.config,
            "overrides": self.overrides,
            "log_level": self.log_level,
            "log_format": settings.log_format,
            # this host's name in a cluster (--broker): every worker of the host says the same
            "host_id": f"{socket.gethostname()}-{port}-{os.urandom(3).hex()}",
        }
        keepers = [asyncio.ensure_future(self._keep(index, spec, segment, [segment.fd, *wake_fds]))
                   for index in range(self.workers)]
        try:
            await self._until_listening(segment)
            log.info("WebSocket ws://%s/ws?tenant_id=..&user_id=..", netloc)
            log.info("REST http://%s/api/websocket (status: http://%s/api/websocket/status)", netloc, netloc)
            log.info("dashboard http://%s/dashboard", netloc)
            if settings.legacy_url:
                log.info("legacy endpoint %s", logs.redact_url(settings.legacy_url))
            await self._stop.wait()
        finally:
            self.stopping = True
            log.info("stopping: draining %d workers", len(self.processes))
            for process in self.processes.values():
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
            # Each keeper returns once its worker has exited (one being started
            # right now is told to stop as soon as it exists).
            try:
                await asyncio.wait_for(asyncio.gather(*keepers, return_exceptions=True), settings.drain_timeout + 5.0)
            except asyncio.TimeoutError:
                for process in self.processes.values():
                    if process.returncode is None:
                        log.warning("worker pid %d did not stop in time: killing it", process.pid)
                        process.kill()
                await asyncio.gather(*(p.wait() for p in self.processes.values()))
                await cancel(keepers)
            sock.close()
            for fd in wake_fds:
                os.close(fd)
            log.info("stopped")
        return 0

    async def _until_listening(self, segment: SharedSegment, timeout: float = 30.0) -> None:
        """Wait (bounded) until every worker listens, so the URL logged next answers at once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and not self._stop.is_set():
            rows = segment.plane.workers()
            if sum(1 for row in rows.values() if row.state == "running") >= self.workers:
                return
            await asyncio.sleep(0.01)
        log.warning("not every worker is listening yet")

    async def _keep(self, index: int, spec: dict[str, Any], segment: SharedSegment, fds: list[int]) -> None:
        """Run worker ``index``, and run it again whenever it dies."""
        loop = asyncio.get_running_loop()
        backoff = BACKOFF_START
        restarts = 0
        while not self.stopping:
            # counters continue from the row's previous worker (WorkerStats.continued): never back
            segment.plane.write_worker(index, segment.plane.read_worker(index).continued(restarts))
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "fastws.server.worker", orjson.dumps({**spec, "index": index}).decode(),
                pass_fds=fds,
            )
            self.processes[index] = process
            if self.stopping:
                process.send_signal(signal.SIGTERM)
            started = loop.time()
            code = await process.wait()
            if self.stopping:
                return
            segment.plane.write_worker(index, segment.plane.read_worker(index).continued(restarts + 1))
            segment.plane.clear_counts(index)  # its connections died with it
            segment.plane.write_tenants(index, [])
            if loop.time() - started > HEALTHY_AFTER:
                backoff = BACKOFF_START
            log.warning("worker %d (pid %d) exited with %s; starting it again in %.1f s", index, process.pid, code, backoff)
            try:
                await asyncio.wait_for(self._stop.wait(), backoff)
                return  # stopping: no new worker
            except asyncio.TimeoutError:
                pass
            backoff = min(backoff * 2, BACKOFF_MAX)
            restarts += 1

    async def _reload(self, segment: SharedSegment) -> None:
        """SIGHUP: flags from the configuration file (unless the API set them), then the workers reload."""
        try:
            flags = config_flags(self.config)
        except Exception as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return
        if flags is not None:
            with segment.exclusive():
                if segment.plane.read_flags(locked=True).source != "api":
                    segment.plane.write_flags(replace(flags, source="config"))
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGHUP)
        log.info("configuration reloaded")

