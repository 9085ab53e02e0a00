"""The fastws listener stack in its test-only echo mode, for conformance runs.

    python -m tests.conformance.echo_server --port 0

runs ``Server(settings, echo=True)`` on uvloop on 127.0.0.1, prints one line
``ws://127.0.0.1:PORT/ws?tenant_id=t&user_id=u`` (the URL a fuzzing client
connects to) once it is listening, and stops on SIGINT or SIGTERM. WebSocket
text and binary messages are echoed back; nothing else of fastws' protocol runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import uvloop

from fastws.config import Settings
from fastws.server import Server

MIB = 1024 * 1024

#: Autobahn's 9.* cases send messages of up to 16 MiB and expect them back;
#: 10.1.1 sends 64 KiB in frames of 1.3 KiB. Keep the limits above those.
ECHO_LIMITS = {
    "max_message_size": 20 * MIB,
    "max_send_buffer": 256 * MIB,
    "max_send_buffer_total": 256 * MIB,
}


async def main(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, uvloop.Loop), type(loop)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    settings = Settings.from_dict(
        {
            "host": host,
            "port": port,
            "drain_timeout": 1.0,
            # no server pings during a case: they would be events the fuzzing client did not expect
            "ping_interval": 0,
            **ECHO_LIMITS,
        }
    )
    async with Server(settings, echo=True) as server:
        print(f"{server.ws_url}?tenant_id=t&user_id=u", flush=True)
        await stop.wait()


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    uvloop.run(main(args.host, args.port))


if __name__ == "__main__":
    cli()
