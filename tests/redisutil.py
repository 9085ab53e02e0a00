"""A real redis-server for integration tests, and a TCP proxy in front of it that injects faults.

``RedisServer`` runs ``redis-server`` (Debian's package; the tests fail, never
skip, without it) on a free loopback port with persistence off, and can pause
it (SIGSTOP), kill it (SIGKILL) and start it again on the same port.

``FaultProxy`` forwards TCP connections to a Redis server from its own thread
and event loop (independent of the test's loop and of the servers under test,
which run in subprocesses). It recognises the connections that subscribed
(SUBSCRIBE, PSUBSCRIBE or SSUBSCRIBE) and can make them deaf (what Redis sends
them is dropped while they stay open), sever every connection abruptly, or
refuse new ones.

Both are synchronous and fast; asyncio tests call them directly. Only the
standard library and redis-py are used. The fixtures ``redis_server``,
``redis_pair`` and ``redis_proxy`` (tests/integration/conftest.py) wrap them::

    def test_something(redis_server, redis_proxy):
        ...  # a fastws server given redis_proxy.url as its Redis
        redis_proxy.wait_for_pubsub()       # it has subscribed through the proxy
        assert redis_proxy.deafen() == 1    # its subscription goes silent, the connection stays
        redis_server.client().publish("channel", "lost")
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["FaultProxy", "RedisServer", "RedisServerError", "RedisServerMissing", "redis_server_binary"]

HOST = "127.0.0.1"
STARTUP_TIMEOUT = 10.0
INSTALL_HINT = "install the Debian package redis-server (apt-get install -y redis-server)"

_T = TypeVar("_T")


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


# --- the fault-injecting proxy -----------------------------------------------------------------

PUBSUB_COMMANDS = frozenset({b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE"})


class _CommandNames:
    """Reads the names of the commands a client sends, incrementally, from the byte stream.

    RESP arrays of bulk strings (what client libraries send) and inline commands (``PING\\r\\n``).
    Arguments are skipped, not buffered. On a protocol error it gives up (``broken``): Redis
    closes such a connection anyway.
    """

    MAX_LINE = 64 * 1024
    MAX_NAME = 64

    def __init__(self) -> None:
        self._buf = bytearray()
        self._left = 0          # array elements still to read in the current command
        self._name_wanted = False
        self._bulk: int | None = None  # size of the bulk string being read (+2 for CRLF)
        self._keep = False      # whether that bulk string is the command name
        self.broken = False

    def feed(self, data: bytes) -> list[bytes]:
        """The names of the commands completed (at least up to their name) by these bytes, upper case."""
        if self.broken:
            return []
        buf = self._buf
        buf += data
        names: list[bytes] = []
        pos = 0
        try:
            while True:
                if self._bulk is not None:
                    if self._keep:
                        if len(buf) - pos < self._bulk:
                            break
                        names.append(bytes(buf[pos:pos + self._bulk - 2]).upper())
                        pos += self._bulk
                        self._bulk = None
                    else:
                        taken = min(self._bulk, len(buf) - pos)
                        pos += taken
                        self._bulk -= taken
                        if self._bulk:
                            break
                        self._bulk = None
                    self._left -= 1
                    continue
                line_end = buf.find(b"\n", pos)
                if line_end < 0:
                    if len(buf) - pos > self.MAX_LINE:
                        raise ValueError("line too long")
                    break
                line = bytes(buf[pos:line_end]).rstrip(b"\r")
                pos = line_end + 1
                if self._left > 0:  # inside an array: a bulk string header
                    if line[:1] != b"$":
                        raise ValueError("expected a bulk string")
                    size = int(line[1:])
                    if size < 0:
                        raise ValueError("null bulk string in a command")
                    self._keep = self._name_wanted and size <= self.MAX_NAME
                    if self._name_wanted and not self._keep:
                        names.append(b"")  # a name too long to be a command: not one we look for
                    self._name_wanted = False
                    self._bulk = size + 2
                elif line[:1] == b"*":
                    self._left = int(line[1:])
                    self._name_wanted = self._left > 0
                else:  # an inline command
                    words = line.split()
                    if words:
                        names.append(words[0].upper())
        except ValueError:
            self.broken = True
            buf.clear()
            return names
        del buf[:pos]
        return names


class _Connection:
    __slots__ = ("client", "upstream", "parser", "pubsub", "deaf", "closed")

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.parser = _CommandNames()
        self.pubsub = False
        self.deaf = False
        self.closed = False


def _abort(writer: asyncio.StreamWriter | None) -> None:
    """Close a connection abruptly: a TCP reset, unsent data dropped."""
    if writer is None or writer.transport.is_closing():
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


class FaultProxy:
    """A TCP proxy on a free loopback port in front of a Redis server, with faults on demand.

    Runs its own asyncio loop (the standard library's) in its own thread. Each method runs on
    that loop and returns once it has taken effect; all are safe to call from any thread.
    A connection becomes "pubsub" when the client sends SUBSCRIBE, PSUBSCRIBE or SSUBSCRIBE
    (and stays so); the proxy classifies it before forwarding that command.
    """

    def __init__(self, upstream: RedisServer | tuple[str, int], *, name: str = "redis") -> None:
        if isinstance(upstream, RedisServer):
            server = upstream
            self._upstream: Callable[[], tuple[str, int]] = lambda: (HOST, server.port)
        else:
            address = (upstream[0], int(upstream[1]))
            self._upstream = lambda: address
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._port: int | None = None
        self._conns: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._blocked = False
        self._accepted = 0
        self._pubsub = 0
        self._counts = threading.Condition()
        self._clients: list[redis.Redis] = []
        self.errors: list[BaseException] = []  # anything unexpected inside the proxy; fixtures assert it is empty

    # --- state -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the proxy has not been started")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def connections(self) -> int:
        """Connections accepted since start, including those block() closed at once."""
        with self._counts:
            return self._accepted

    @property
    def pubsub_connections(self) -> int:
        """Open connections classified as pubsub."""
        with self._counts:
            return self._pubsub

    def wait_for_pubsub(self, count: int = 1, timeout: float = 5.0) -> None:
        """Wait until at least `count` pubsub connections are open; AssertionError after `timeout`."""
        with self._counts:
            if not self._counts.wait_for(lambda: self._pubsub >= count, timeout):
                raise AssertionError(
                    f"{self._pubsub} pubsub connection(s) through the proxy after {timeout:g} s, expected {count}"
                )

    def client(self, **kwargs: Any) -> redis.Redis:
        """A sync redis-py client connecting through the proxy, closed by close(); defaults as RedisServer.client()."""
        client = _sync_client(self.port, kwargs)
        self._clients.append(client)
        return client

    def __repr__(self) -> str:
        return f"<FaultProxy {HOST}:{self._port} -> {self._name}>"

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        if self._thread is not None:
            raise RuntimeError(f"{self!r} was already started")
        self._loop = asyncio.SelectorEventLoop()  # the stdlib's, whatever the test's loop policy
        self._thread = threading.Thread(target=self._run, name=f"FaultProxy-{self._name}", daemon=True)
        self._thread.start()
        self._port = self._submit(self._listen())
        return self

    def close(self) -> None:
        """Stop listening, close every connection abruptly and stop the thread. Idempotent."""
        for client in self._clients:
            client.close()
        self._clients.clear()
        if self._loop is None or self._thread is None or self._loop.is_closed():
            return
        if self._thread.is_alive():
            self._submit(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> FaultProxy:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- faults ----------------------------------------------------------------------------

    def deafen(self) -> int:
        """Drop, from now on, what Redis sends to each open pubsub connection; returns how many.

        The connections stay open and what their clients send still reaches Redis. Connections
        made later, and open ones that subscribe only later, are not affected.
        """
        def apply() -> int:
            deafened = [conn for conn in self._conns if conn.pubsub]
            for conn in deafened:
                conn.deaf = True
            return len(deafened)
        return self._call(apply)

    def heal(self) -> int:
        """Undo deafen() for every connection (what was dropped stays lost); returns how many were deaf."""
        def apply() -> int:
            healed = [conn for conn in self._conns if conn.deaf]
            for conn in healed:
                conn.deaf = False
            return len(healed)
        return self._call(apply)

    def sever(self) -> int:
        """Close every proxied connection abruptly (a reset on both sides); returns how many.

        New connections are accepted and forwarded as before (unless block() says otherwise).
        """
        def apply() -> int:
            severed = list(self._conns)
            for conn in severed:
                self._drop(conn)
                _abort(conn.client)
                _abort(conn.upstream)
            return len(severed)
        return self._call(apply)

    def block(self) -> None:
        """Accept new connections and close them at once (open ones are left alone)."""
        self._call(lambda: setattr(self, "_blocked", True))

    def unblock(self) -> None:
        self._call(lambda: setattr(self, "_blocked", False))

    # --- the loop's side -------------------------------------------------------------------

    def _run(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        self._loop.set_exception_handler(self._on_loop_error)
        self._loop.run_forever()

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.errors.append(context.get("exception") or RuntimeError(context.get("message", "loop error")))

    def _submit(self, coro: Any, timeout: float = 5.0) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _call(self, function: Callable[[], _T], timeout: float = 5.0) -> _T:
        """Run `function` on the proxy's loop and return its result."""
        if self._loop is None or self._loop.is_closed() or self._server is None:
            raise RuntimeError(f"{self!r} is not running")
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(function())
            except BaseException as error:  # handed to the caller
                future.set_exception(error)

        self._loop.call_soon_threadsafe(run)
        return future.result(timeout)

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._handle, HOST, 0)
        return self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for conn in list(self._conns):
            self._drop(conn)
            _abort(conn.client)
            _abort(conn.upstream)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _drop(self, conn: _Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._conns.discard(conn)
        if conn.pubsub:
            with self._counts:
                self._pubsub -= 1
                self._counts.notify_all()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        with self._counts:
            self._accepted += 1
        conn = _Connection(writer)
        try:
            if self._blocked:
                writer.close()
                return
            self._conns.add(conn)
            try:
                up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self._upstream()), 5.0)
            except (OSError, asyncio.TimeoutError):
                _abort(writer)  # Redis is down: so is the connection through the proxy
                return
            conn.upstream = up_writer
            if conn.closed:  # severed while connecting
                _abort(writer)
                _abort(up_writer)
                return
            pumps = [asyncio.ensure_future(self._to_redis(conn, reader, up_writer)),
                     asyncio.ensure_future(self._to_client(conn, up_reader, writer))]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
            for side in (writer, up_writer):  # one side closed: close the other, sending what is buffered
                if not side.transport.is_closing():
                    side.close()
        except asyncio.CancelledError:
            pass
        except Exception as error:  # a bug here must not pass unnoticed
            self.errors.append(error)
        finally:
            self._drop(conn)
            if not writer.transport.is_closing():
                _abort(writer)
            if conn.upstream is not None and not conn.upstream.transport.is_closing():
                _abort(conn.upstream)
            self._tasks.discard(task)

    async def _to_redis(self, conn: _Connection, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if not conn.pubsub and not conn.closed and PUBSUB_COMMANDS.intersection(conn.parser.feed(data)):
                    conn.pubsub = True
                    conn.parser = _CommandNames()  # no longer needed: let go of its buffer
                    with self._counts:
                        self._pubsub += 1
                        self._counts.notify_all()
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass

    async def _to_client(self, conn: _Connection, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if conn.deaf:
                    continue
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
