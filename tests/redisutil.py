"""A real redis-server for integration tests.

``RedisServer`` runs ``redis-server`` (Debian's package; the tests fail, never
skip, without it) on a free loopback port with persistence off, and can pause
it (SIGSTOP), kill it (SIGKILL) and start it again on the same port.

It is synchronous and fast; asyncio tests call it directly. Only the standard
library and redis-py are used. The fixtures ``redis_server`` and ``redis_pair``
(tests/integration/conftest.py) wrap it.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["RedisServer", "RedisServerError", "RedisServerMissing", "redis_server_binary"]

HOST = "127.0.0.1"
STARTUP_TIMEOUT = 10.0
INSTALL_HINT = "install the Debian package redis-server (apt-get install -y redis-server)"


class RedisServerError(RuntimeError):
    """redis-server did not start, or a method was called in the wrong state."""


class RedisServerMissing(RedisServerError):
    """No redis-server on PATH."""


def redis_server_binary() -> str:
    """The redis-server on PATH; raises RedisServerMissing (so a test fails, not skips) without one."""
    found = shutil.which("redis-server")
    if found is None:
        raise RedisServerMissing(
            "redis-server is required by the Redis integration tests and is not on PATH: " + INSTALL_HINT
        )
    return found


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range when there is room there.

    A server restarted on its old port must find it free: a port the kernel never hands to
    outgoing connections cannot have been taken by one in the meantime.
    """
    low, _high = _ephemeral_range()
    if low > 11000:
        for _ in range(100):
            port = random.randint(10000, low - 1)
            if _port_is_free(port):
                return port
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _raw_command(port: int, *args: str, timeout: float = 5.0) -> bytes:
    """One command over a fresh socket, for a simple-string or bulk-string reply.

    The helpers below use it instead of redis-py so that their own connections do not add
    CLIENT SETINFO (or HELLO) calls to the server's statistics.
    """
    request = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(arg.encode()), arg.encode()) for arg in args
    )
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"redis-server on port {port} closed the connection after {args[0]}")
            data += chunk
            line_end = data.find(b"\r\n")
            if line_end < 0:
                continue
            kind, line = data[:1], data[1:line_end]
            if kind == b"+":
                return line
            if kind == b"-":
                raise RedisServerError(f"{args[0]}: {line.decode(errors='replace')}")
            if kind == b"$":
                size = int(line)
                body = data[line_end + 2:]
                if len(body) >= size + 2:
                    return body[:size]
                continue
            raise RedisServerError(f"{args[0]}: unexpected reply {data[:80]!r}")


def _sync_client(port: int, kwargs: dict[str, Any]) -> redis.Redis:
    options: dict[str, Any] = {
        "host": HOST, "port": port, "db": 0, "decode_responses": True,
        "socket_timeout": 5.0, "socket_connect_timeout": 5.0, "retry": Retry(NoBackoff(), 0),
    }
    options.update(kwargs)
    return redis.Redis(**options)


def _process_state(pid: int) -> str | None:
    """The one-letter state of a Linux process (T: stopped), or None where /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


_live_servers: set[RedisServer] = set()  # started and not yet stopped: none outlives the test run


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_live_servers):
        try:
            server.stop()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


class RedisServer:
    """A redis-server process on a loopback port, persistence off, for one test.

    ``RedisServer()`` checks that redis-server is installed; ``start()`` runs it and waits
    until it answers PING. The port is kept for the object's life, so ``restart()`` comes
    back where clients expect it. Also a context manager (start on enter, stop on exit).
    """

    def __init__(self, port: int | None = None, *, extra_args: Sequence[str] = (),
                 startup_timeout: float = STARTUP_TIMEOUT) -> None:
        self._binary = redis_server_binary()
        self._port = port
        self._fixed_port = port is not None
        self._extra_args = list(extra_args)
        self._startup_timeout = startup_timeout
        self._dir: Path | None = None
        self._log: Any = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._clients: list[redis.Redis] = []

    # --- state -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RedisServerError("the server has not been started: no port yet")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The running process's pid; None before start and after kill() or stop()."""
        return self._proc.pid if self.running else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def log_path(self) -> Path | None:
        return self._dir / "redis.log" if self._dir is not None else None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines redis-server wrote (stdout and stderr), for failure messages."""
        path = self.log_path
        if path is None or not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def __repr__(self) -> str:
        state = "paused" if self._paused else "running" if self.running else "stopped"
        return f"<RedisServer {HOST}:{self._port} {state} pid={self.pid}>"

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> RedisServer:
        """Run redis-server and wait (bounded) until it answers PING.

        A port chosen here that another process takes first is replaced by another free one;
        a given port (or the old one, on restart) is retried until the startup timeout.
        """
        if self.running:
            raise RedisServerError(f"{self!r} is already running")
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="fastws-redis-"))
        if self._port is None:
            self._port = free_port()
        deadline = time.monotonic() + self._startup_timeout
        while True:
            outcome = self._spawn_and_wait(deadline)
            if outcome == "ready":
                self._fixed_port = True  # from now on the server lives on this port
                return self
            if outcome == "in use" and time.monotonic() < deadline:
                if self._fixed_port:
                    time.sleep(0.1)
                else:
                    self._port = free_port()
                continue
            reason = {"in use": f"port {self._port} stayed in use",
                      "exited": "redis-server exited",
                      "timeout": f"no answer to PING within {self._startup_timeout:g} s"}[outcome]
            raise RedisServerError(
                f"redis-server did not start on {HOST}:{self._port}: {reason}; its log ends with:\n"
                + self.log_tail()
            )

    def _spawn_and_wait(self, deadline: float) -> str:
        assert self._dir is not None and self._port is not None
        if self._log is None:
            self._log = open(self._dir / "redis.log", "ab")  # noqa: SIM115 - closed by stop()
        self._log.write(f"--- fastws tests: starting on port {self._port}\n".encode())
        self._log.flush()
        log_start = self._log.tell()
        args = [
            self._binary, "--port", str(self._port), "--bind", HOST,
            "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--dir", str(self._dir), *self._extra_args,
        ]
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        _live_servers.add(self)
        self._paused = False
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                with open(self._dir / "redis.log", "rb") as log:
                    log.seek(log_start)
                    output = log.read()
                return "in use" if b"Address already in use" in output else "exited"
            try:
                if _raw_command(self._port, "PING", timeout=0.5) == b"PONG":
                    return "ready"
            except (OSError, RedisServerError):
                pass
            time.sleep(0.02)
        self._proc.kill()
        self._proc.wait()
        return "timeout"

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets (connections are even accepted) but answers nothing."""
        self._require_running("pause")
        os.kill(self._proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        self._paused = True
        self._wait_state(lambda state: state == "T", "stopped")

    def resume(self) -> None:
        """SIGCONT after pause()."""
        self._require_running("resume")
        os.kill(self._proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        self._paused = False
        self._wait_state(lambda state: state != "T", "running")

    def kill(self) -> None:
        """SIGKILL and wait: a crash. Every connection is closed by the kernel; nothing is saved."""
        self._require_running("kill")
        self._proc.kill()  # type: ignore[union-attr]
        self._proc.wait(timeout=5)  # type: ignore[union-attr]
        self._paused = False

    def restart(self) -> RedisServer:
        """Start again on the same port, empty (killing it first if it still runs)."""
        if self.running:
            self.kill()
        return self.start()

    def stop(self) -> None:
        """Terminate (resuming a paused server first), wait, and remove the data directory. Idempotent."""
        for client in self._clients:
            client.close()
        self._clients.clear()
        if self._proc is not None and self._proc.poll() is None:
            if self._paused:
                os.kill(self._proc.pid, signal.SIGCONT)
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._paused = False
        self._proc = None
        _live_servers.discard(self)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> RedisServer:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _require_running(self, action: str) -> None:
        if not self.running:
            raise RedisServerError(f"cannot {action} {self!r}: it is not running")

    def _wait_state(self, done: Callable[[str], bool], what: str) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + 2.0
        while True:
            state = _process_state(self._proc.pid)
            if state is None or done(state):
                return
            if time.monotonic() > deadline:
                raise RedisServerError(f"redis-server (pid {self._proc.pid}) is not {what}: state {state}")
            time.sleep(0.005)

    # --- assertions ------------------------------------------------------------------------

    def client(self, **kwargs: Any) -> redis.Redis:
        """A sync redis-py client of this server, closed by stop().

        Defaults (overridable): decode_responses=True, 5 s socket timeouts and no retries
        (redis-py retries failed commands 3 times by default, which would hide a failure).
        """
        client = _sync_client(self.port, kwargs)
        self._clients.append(client)
        return client

    def info_commandstats(self) -> dict[str, int]:
        """{command: calls} from INFO commandstats: lower case, subcommands as "client|setinfo".

        Counted since start or reset_stats(), and including this helper's own calls: an earlier
        call shows as "info", reset_stats() as "config|resetstat".
        """
        text = _raw_command(self.port, "INFO", "commandstats").decode()
        stats: dict[str, int] = {}
        for line in text.splitlines():
            if not line.startswith("cmdstat_"):
                continue
            name, _, fields = line[len("cmdstat_"):].partition(":")
            values = dict(field.split("=", 1) for field in fields.split(","))
            stats[name] = int(values["calls"])
        return stats

    def reset_stats(self) -> None:
        """CONFIG RESETSTAT: the command statistics start again from zero."""
        _raw_command(self.port, "CONFIG", "RESETSTAT")
