"""One worker process under the supervisor: ``python -m fastws.server.worker SPEC``.

SPEC is JSON: the worker's index, the shared segment's file descriptor, the
host and port (the supervisor holds the port), every worker's eventfd, the
configuration file and the command-line overrides. The worker listens on its
own SO_REUSEPORT socket with its own uvloop loop until SIGTERM (drain, exit 0); SIGHUP reloads the
settings from the same sources, keeping every connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any

import orjson

from .. import logs
from ..broker import SharedSegment
from ..config import Settings
from .app import Server

log = logging.getLogger("fastws.worker")


def load_settings(spec: dict[str, Any]) -> Settings:
    # the port is the supervisor's (it may have been 0 on the command line)
    return Settings.load(config=spec.get("config"), **spec.get("overrides", {})).replace(host=spec["host"], port=spec["port"])


async def run(spec: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    index = spec["index"]
    settings = load_settings(spec)
    segment = SharedSegment.attach_fd(spec["segment_fd"])
    settings = settings.replace(host=spec["host"], port=spec["port"])
    server = Server(settings, segment=segment, worker=index, wake_fds=spec["wake_fds"], reuse_port=True,
                    host_id=spec.get("host_id"))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the supervisor decides; a terminal's ^C reaches it

    def reload() -> None:
        try:
            settings = load_settings(spec)
            logs.add_secrets(logs.secrets_of(settings))
            server.reload(settings)
        except Exception:
            log.exception("worker %d: reload failed; keeping the previous settings", index)

    loop.add_signal_handler(signal.SIGHUP, reload)
    await server.start()
    log.info("worker %d (pid %d) serving", index, os.getpid())
    await stop.wait()
    log.info("worker %d draining %d connections", index, len(server.connections))
    await server.close()


def main() -> None:
    spec = orjson.loads(sys.argv[1])
    # the supervisor checked these settings: what it resolved (DEBUG=websocket:* included) is used
    settings = load_settings(spec)
    logs.configure(spec.get("log_level", "info"), spec.get("log_format") or settings.log_format, spec["index"],
                   logs.secrets_of(settings))
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(run(spec))
    else:
        uvloop.run(run(spec))


if __name__ == "__main__":
    main()
