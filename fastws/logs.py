"""Log records: text or JSON lines, the HTTP access log, no secrets, and no floods. Sans-I/O.

What a process writes to stderr is configured here once (:func:`configure`,
from ``fastws serve`` and from each worker process): one handler on the root
logger with

- a formatter: :class:`TextFormatter` (``--log-format text``, for people) or
  :class:`JsonFormatter` (``--log-format json``: one object per line with
  ``time``, ``level``, ``logger``, ``worker``, ``tenant`` and ``connection``
  when the record concerns one, ``message``, ``exc`` when there is a
  traceback, and the record's structured fields);
- :class:`RateLimitFilter`: records of something a client did (marked with
  :func:`client_fault`) pass at most :data:`BURST` times per key and window of
  :data:`PERIOD` seconds, a key being (logger, message template, code); the
  rest are counted and said in one "suppressed N similar messages" record
  when the window ends (:func:`flush`, called by the server's sweep, says
  it even if the key is never logged again);
- :class:`RedactFilter`: bearer tokens, JWTs, ``token=`` and the like, the
  passwords of URLs, and the configured secrets (:func:`secrets_of`) become
  ``***`` in every message, traceback and string field, whatever logged them.

Theory of operation:

1. Client-caused trouble (bad commands, protocol errors, refused upgrades,
   slow consumers) is logged at INFO or DEBUG, never above: WARNING and ERROR
   are the server's own faults.
2. A client cannot make the log grow faster than :data:`BURST` records per
   key per :data:`PERIOD` seconds per worker, and the table of keys is bounded
   (:data:`MAX_KEYS`, then one shared key).
3. The access log (:func:`access`, logger ``fastws.access``) is one INFO record
   per HTTP response, by design not rate-limited; the HTTP front calls it only
   when the setting is on and the logger enabled (checked once per server).
   :class:`LineHandler` writes access lines in batches (at most
   :data:`ACCESS_DELAY` seconds late, or at the server's next sweep), every
   other record at once.
4. Nothing here formats anything for a record that no handler takes: the
   call sites check ``isEnabledFor`` first.
"""

from __future__ import annotations

import logging
import os
import re
import select
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, TextIO
from urllib.parse import unquote_plus

import orjson

if TYPE_CHECKING:
    from .config import Settings

__all__ = [
    "ACCESS", "ACCESS_DELAY", "BURST", "PERIOD", "MAX_KEYS",
    "JsonFormatter", "TextFormatter", "LineHandler", "RedactFilter", "RateLimitFilter", "RateLimiter", "PicowsFilter",
    "about", "access", "add_secrets", "client_fault", "configure", "flush", "mask_query", "redact",
    "redact_url", "secrets_of",
]

#: the access log's logger: one INFO record per HTTP response
ACCESS = logging.getLogger("fastws.access")
#: records of one key let through per window
BURST = 10
#: seconds of a rate-limit window
PERIOD = 10.0
#: keys (logger, template, code) remembered at once; past it, new keys share one
MAX_KEYS = 1024
#: seconds an access line may wait to be written with the next ones (LineHandler)
ACCESS_DELAY = 0.1
#: bytes of access lines that are written at once, however recent
_ACCESS_BATCH = 64 * 1024
#: the largest write a pipe makes atomically (POSIX: at least 512; Linux: 4096)
_PIPE_BUF = getattr(select, "PIPE_BUF", 512)
#: longest message kept as the sample of a suppressed key
_SAMPLE_SIZE = 200
#: longest path or query written in an access record (the head may be 16 KiB)
_TARGET_SIZE = 1024
#: literal secrets shorter than this are not searched for (too many false hits); URLs still are
_MIN_SECRET = 6
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
           "critical": logging.CRITICAL}

#: LogRecord attributes that are not structured fields (anything else in a record's dict is one)
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
#: fields the formatters place themselves, or that only steer the filters
_PLACED = frozenset({"tenant", "connection", "client_fault", "_redacted"})


# -- structured fields --------------------------------------------------------------------------


def about(tenant: str | None = None, connection: str | None = None, **fields: Any) -> dict[str, Any]:
    """The ``extra=`` of a record about a tenant and a connection (fields left out when None)."""
    if tenant is not None:
        fields["tenant"] = tenant
    if connection is not None:
        fields["connection"] = connection
    return fields


def client_fault(tenant: str | None = None, connection: str | None = None, code: str | int | None = None,
                 **fields: Any) -> dict[str, Any]:
    """The ``extra=`` of a record about something a client did: rate-limited per (logger, template, code)."""
    fields["client_fault"] = True
    if code is not None:
        fields["code"] = code
    return about(tenant, connection, **fields)


# -- redaction ----------------------------------------------------------------------------------

#: a parameter's name that says its value is secret (searched in the name: over-masking is harmless)
_SECRET_NAME = re.compile(r"token|secret|passw|pwd|api_?key|auth|sig|credential|jwt", re.IGNORECASE)
#: characters of a parameter's name, before its "="
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.%"
#: a parameter's value: up to the next separator
_VALUE = re.compile(r"[^&\s\"',;]*")
#: a JWT: the base64url of '{"', then two more base64url parts
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
#: "token": "...", "password" : "..."
_JSON_SECRET = re.compile(r"(\"\w*(?:token|secret|password)\"\s*:\s*\")[^\"]*", re.IGNORECASE)
#: scheme://user:password@host
_USERINFO = re.compile(r"\b([a-z][a-z0-9+.-]*://)[^@\s\"']*@", re.IGNORECASE)  # a password may hold a "/"
#: "Authorization: Basic x" (the whole credential), "Bearer x"
_AUTHORIZATION = re.compile(
    r"(\bauthorization[\"']?\s*[:=]\s*[\"']?)(?:[A-Za-z]+\s+)?[^\s\"',;&}]+|(\bbearer\s+)[^\s\"',;&}]+", re.IGNORECASE)


def _mask_params(text: str) -> str:
    """``text`` with the values of ``name=value`` pairs whose name looks secret replaced by ``***``
    (a loop over the "=" signs: a regex would try every position of every record)."""
    parts: list[str] = []
    start = 0
    index = text.find("=")
    while index != -1:
        head = text[max(start, index - 64):index]
        name = head[len(head.rstrip(_NAME_CHARS)):]
        end = index + 1
        if name and _SECRET_NAME.search(unquote_plus(name) if "%" in name else name):  # "%74oken" is "token"
            end = _VALUE.match(text, end).end()  # type: ignore[union-attr]
            if end > index + 1 and text[index + 1:end] != "***":
                parts += (text[start:index + 1], "***")
                start = end
        index = text.find("=", end)
    if not parts:
        return text
    parts.append(text[start:])
    return "".join(parts)


def _authorization(match: re.Match[str]) -> str:
    return f"{match.group(1) or match.group(2)}***"


def redact(text: str, literals: Iterable[str] = ()) -> str:
    """``text`` with tokens, credentials, URL passwords (and the ``literals``) replaced by ``***``.
    Each pattern runs only on text holding what it needs (most records hold none of it)."""
    if "=" in text:
        text = _mask_params(text)
    if "eyJ" in text:
        text = _JWT.sub("***", text)
    if "@" in text:
        text = _USERINFO.sub(r"\1***@", text)
    if '"' in text and ":" in text:
        text = _JSON_SECRET.sub(r"\1***", text)
    if "earer" in text or "EARER" in text or "uthorization" in text or "UTHORIZATION" in text:
        text = _AUTHORIZATION.sub(_authorization, text)
    for literal in literals:
        if literal in text:
            text = text.replace(literal, "***")
    return text


def redact_url(url: str) -> str:
    """A URL without its user part (the password, and the name with it), up to the last ``@``:
    a password may hold a ``/`` that is not escaped."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return scheme + sep + rest


def mask_query(query: str) -> str:
    """A query string with the values of secret-looking parameters (``token``...) replaced by ``***``."""
    return _mask_params(query)


def secrets_of(settings: "Settings") -> list[str]:
    """The secrets a configuration holds (the JWT keys, Redis passwords), to be masked wherever they appear."""
    from urllib.parse import urlsplit

    found = [settings.jwt_secret]
    for url in settings.broker_urls:
        try:
            found.append(urlsplit(url).password or "")
        except ValueError:
            continue
    if settings.jwt_keys_file:
        try:
            import json

            with open(settings.jwt_keys_file, "rb") as handle:
                table = json.load(handle)
            if isinstance(table, dict):
                found += [value for value in table.values() if isinstance(value, str)]
        except (OSError, ValueError):
            pass
    return [secret for secret in found if len(secret) >= _MIN_SECRET]


class RedactFilter(logging.Filter):
    """Masks secrets in every record's message, traceback and string fields (defense in depth:
    fastws never logs them on purpose). The message is formatted here once, so the record
    leaves with its final text and no arguments."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        #: literal secrets, the longest first (one that holds another is masked whole)
        self._literals: tuple[str, ...] = ()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Also mask these literal strings (those under _MIN_SECRET characters are ignored)."""
        known = set(self._literals)
        known.update(secret for secret in secrets if secret and len(secret) >= _MIN_SECRET)
        self._literals = tuple(sorted(known, key=len, reverse=True))

    @property
    def literals(self) -> tuple[str, ...]:
        """The configured secrets searched for literally."""
        return self._literals

    def redact(self, text: str) -> str:
        return redact(text, self._literals)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: let the handler report it as logging does
            return True
        fields = record.__dict__
        if fields.get("_redacted") and not any(literal in message for literal in self._literals):
            # made of parts redact() has seen (an access record): only literals were left to look for
            record.msg, record.args = message, None
            return True
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = _EXCEPTIONS.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for name in [name for name, value in fields.items() if type(value) is str and name not in _STANDARD]:
            fields[name] = self.redact(fields[name])
        return True


_EXCEPTIONS = logging.Formatter()


# -- rate limiting ------------------------------------------------------------------------------


class _Suppressed:
    """What one window of one key held back, for its summary record."""

    __slots__ = ("logger", "level", "code", "count", "seconds", "sample")

    def __init__(self, logger: str, level: int, code: Any, count: int, seconds: float, sample: str) -> None:
        self.logger, self.level, self.code = logger, level, code
        self.count, self.seconds, self.sample = count, seconds, sample


#: the key every new key shares while the table is full
_OVERFLOW = ("fastws", "(other messages)", None)


class RateLimiter:
    """At most ``burst`` records per key in each window of ``period`` seconds, at most
    ``max_keys`` keys. A window opens at a key's first record; what it holds back is counted,
    and when the window is over (seen at the key's next record, or by :meth:`expire`) the
    count goes to :attr:`pending`, for one summary record. Sans-I/O: time is passed in.
    """

    __slots__ = ("burst", "period", "max_keys", "_windows", "pending")

    def __init__(self, burst: int = BURST, period: float = PERIOD, max_keys: int = MAX_KEYS) -> None:
        self.burst = burst
        self.period = period
        self.max_keys = max_keys
        #: key -> [window start, records seen, records held back, (logger, level, sample) of the first held back]
        self._windows: dict[Any, list] = {}
        #: summaries of windows that ended having held records back, oldest first
        self.pending: list[_Suppressed] = []

    def __len__(self) -> int:
        return len(self._windows)

    def allow(self, key: Any, now: float, describe: Callable[[], tuple[str, int, str]]) -> bool:
        """Count one record of ``key``; False if it is to be held back. ``describe`` gives
        (logger, level, message) of the window's first held-back record (called once per window)."""
        windows = self._windows
        window = windows.get(key)
        if window is not None and now - window[0] >= self.period:
            self._close(key, window, now)
            window = None
        if window is None:
            if len(windows) >= self.max_keys:
                self.expire(now)
                if len(windows) >= self.max_keys:
                    key = _OVERFLOW
                    window = windows.get(key)
            if window is None:
                window = windows[key] = [now, 0, 0, None]
        window[1] += 1
        if window[1] <= self.burst:
            return True
        window[2] += 1
        if window[3] is None:
            window[3] = describe()
        return False

    def expire(self, now: float, everything: bool = False) -> None:
        """End the windows that are over (all of them with ``everything``), freeing their keys."""
        period = self.period
        for key, window in list(self._windows.items()):
            if everything or now - window[0] >= period:
                self._close(key, window, now)

    def _close(self, key: Any, window: list, now: float) -> None:
        del self._windows[key]
        if window[2]:
            logger, level, sample = window[3]
            code = key[2] if isinstance(key, tuple) and len(key) == 3 else None
            self.pending.append(_Suppressed(logger, level, code, window[2], now - window[0], sample[:_SAMPLE_SIZE]))


class RateLimitFilter(logging.Filter):
    """A handler's filter: records marked :func:`client_fault` pass through a :class:`RateLimiter`
    keyed by (logger, message template, code); the summaries of ended windows are logged, each
    on the logger of the records it counts, at their level, with a ``suppressed`` field."""

    def __init__(self, limiter: RateLimiter | None = None) -> None:
        super().__init__()
        self.limiter = limiter if limiter is not None else RateLimiter()

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        if not fields.get("client_fault"):
            return True
        limiter = self.limiter
        allowed = limiter.allow(
            (record.name, record.msg, fields.get("code")), record.created,
            lambda: (record.name, record.levelno, record.getMessage()),
        )
        if limiter.pending:
            self.emit_pending()
        return allowed

    def flush(self, now: float | None = None, everything: bool = False) -> None:
        """Say what windows that are over held back (the server's sweep calls this about once a second)."""
        limiter = self.limiter
        if len(limiter):
            limiter.expire(time.time() if now is None else now, everything)
        if limiter.pending:
            self.emit_pending()

    def emit_pending(self) -> None:
        pending, self.limiter.pending = self.limiter.pending, []
        for summary in pending:
            logger = logging.getLogger(summary.logger)
            fields: dict[str, Any] = {"suppressed": summary.count}
            if summary.code is not None:
                fields["code"] = summary.code
            record = logger.makeRecord(
                summary.logger, summary.level, __file__, 0,
                "suppressed %d similar messages in %.1f s, the first: %s",
                (summary.count, summary.seconds, summary.sample), None, extra=fields,
            )
            logger.handle(record)


# -- picows' records ----------------------------------------------------------------------------

#: picows' messages about what a peer did (no traceback: not our fault) -> the level they get
_PICOWS_LEVELS = {
    "WS parser error: %s, initiate disconnect": logging.INFO,
    "Disconnect because HTTP request violated max_size threshold: %d": logging.INFO,
    "Handshake timeout, the client hasn't requested upgrade within required time, close connection": logging.INFO,
    "New connection accepted: %s <- %s, recvbuf=%d, sendbuf=%d, quickack=%d, nodelay=%d, mask_impl=%s": logging.DEBUG,
    "WS connection established: %s -> %s, recvbuf=%d, sendbuf=%d, quickack=%d, nodelay=%d, mask_impl=%s": logging.DEBUG,
    "Disconnected": logging.DEBUG,
}


class PicowsFilter(logging.Filter):
    """On the ``fastws.picows`` logger: picows logs a peer's protocol violation at ERROR and two
    lines per connection at INFO. Those about a peer become INFO client faults (rate-limited;
    a frame it refused is said as ``closing with CODE: reason``, with ``code``) and the
    per-connection ones DEBUG; records with a traceback (an exception in fastws' own listener)
    and any other keep their level."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is not None or "suppressed" in record.__dict__:
            return True
        level = _PICOWS_LEVELS.get(record.msg)  # type: ignore[arg-type]
        if level is None:
            return True
        record.levelno, record.levelname = level, logging.getLevelName(level)
        if level == logging.INFO:
            record.client_fault = True
            args = record.args
            if isinstance(args, tuple) and len(args) == 1 and isinstance(args[0], tuple) and len(args[0]) == 2:
                # a WSProtocolError's (close code, reason): said as fastws' own closes are
                try:
                    code = int(args[0][0])
                except (TypeError, ValueError):
                    pass
                else:
                    record.msg, record.args, record.code = "closing with %d: %s", (code, str(args[0][1])), code
        return logging.getLogger("fastws").isEnabledFor(level)


# -- formatters ---------------------------------------------------------------------------------


class _UTCTime:
    """ISO 8601 UTC with milliseconds, the seconds' part formatted once per second."""

    __slots__ = ("_second", "_prefix")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((created - second) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (orjson)::

        {"time":"2025-05-01T09:30:00.125Z","level":"INFO","logger":"fastws.websocket","worker":1,
         "tenant":"acme","connection":"6f1c...","message":"closing with 1009: ...","code":1009}

    ``worker`` is the worker's index (null in the supervisor or a single process); ``tenant``
    and ``connection`` appear when the record concerns them, ``exc`` when it has a traceback;
    then the record's other structured fields (``extra=``).
    """

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker
        self._time = _UTCTime()

    def format(self, record: logging.LogRecord) -> str:
        fields = record.__dict__
        out = self._head(record.created, record.levelname, record.name, record.getMessage(), fields)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        for name, value in fields.items():
            if name not in _STANDARD and name not in _PLACED and name not in out:
                out[name] = value
        try:
            return orjson.dumps(out, default=str).decode()
        except TypeError:  # e.g. a dict with keys orjson cannot write
            return orjson.dumps({name: value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
                                 for name, value in out.items()}).decode()

    def format_access(self, created: float, message: str, fields: dict[str, Any]) -> str:
        """The line :meth:`format` writes for an access record (:func:`access`), without the record."""
        out = self._head(created, "INFO", ACCESS.name, message, fields)
        for name, value in fields.items():
            if name not in _PLACED:
                out[name] = value
        return orjson.dumps(out).decode()


    def _head(self, created: float, level: str, logger: str, message: str, fields: dict[str, Any]) -> dict[str, Any]:
        """time, level, logger, worker, tenant and connection (when given), message: in this order."""
        out: dict[str, Any] = {"time": self._time(created), "level": level, "logger": logger, "worker": self.worker}
        tenant = fields.get("tenant")
        if tenant is not None:
            out["tenant"] = tenant
        connection = fields.get("connection")
        if connection is not None:
            out["connection"] = connection
        out["message"] = message
        return out


class TextFormatter(logging.Formatter):
    """Today's line, plus who: ``TIME LEVEL LOGGER[wN pid P]: MESSAGE tenant=T connection=C``.

    The worker's tag is left out in the supervisor and a single process; line breaks in the
    message are written as ``\\n`` (a client's text cannot forge a line), a traceback follows on
    its own lines.
    """

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker
        self._second = -1
        self._prefix = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """Local time as logging writes it (``2025-05-01 09:30:00,125``), formatted once a second."""
        return self._local(record.created, record.msecs)

    def _local(self, created: float, msecs: float) -> str:
        second = int(created)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._prefix},{int(msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        line = self._line(self.formatTime(record), record.levelname, record.name, record.process,
                          record.getMessage(), record.__dict__)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line

    def format_access(self, created: float, message: str, fields: dict[str, Any]) -> str:
        """The line :meth:`format` writes for an access record (:func:`access`), without the record."""
        return self._line(self._local(created, (created - int(created)) * 1000), "INFO", ACCESS.name,
                          os.getpid() if self.worker is not None else None, message, fields)

    def _line(self, when: str, level: str, logger: str, pid: int | None, message: str,
              fields: dict[str, Any]) -> str:
        message = _one_line(message)
        tag = "" if self.worker is None else f"[w{self.worker} pid {pid}]"
        line = f"{when} {level} {logger}{tag}: {message}"
        tenant = fields.get("tenant")
        if tenant is not None:
            line += f" tenant={_one_line(str(tenant))}"
        connection = fields.get("connection")
        if connection is not None:
            line += f" connection={_one_line(str(connection))}"
        return line


def _one_line(text: str) -> str:
    """``text`` with its line breaks written as ``\\r`` and ``\\n``: a client's text cannot forge a line."""
    if "\n" in text or "\r" in text:
        return text.replace("\r", "\\r").replace("\n", "\\n")
    return text


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A record per line on a stream. Every record is written at once, except access records:
    those are gathered and written together, when ACCESS_DELAY seconds have passed since the
    last write, past _ACCESS_BATCH bytes, before any other record, or at :meth:`flush` (the
    server's sweep, and exit). A busy HTTP front thus makes few writes, not a system call per
    response, and no line waits longer than the sweep's period.

    Every worker writes to the same stderr: on a stream with a file descriptor, lines go out
    in system calls of whole lines of at most PIPE_BUF bytes, which a pipe writes atomically,
    so two workers' lines never interleave inside a line (a line longer than that goes alone).
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._pending_size = 0
        #: time.monotonic() of the last write
        self._written = 0.0
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
            self._fd = None
        self._encoding = getattr(stream, "encoding", None) or "utf-8"
        self._errors = getattr(stream, "errors", None) or "backslashreplace"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
            if record.name == ACCESS.name:
                self._add_access(line)
                return
            self._pending.append(line)
            self._write()
        except RecursionError:  # pragma: no cover - as logging.StreamHandler
            raise
        except Exception:
            self.handleError(record)

    def emit_access(self, created: float, message: str, fields: dict[str, Any]) -> None:
        """An access record without a LogRecord: its line as :meth:`emit` writes it (:func:`access`
        comes here when nothing but this handler would see the record)."""
        line = self.formatter.format_access(created, message, fields) + self.terminator  # type: ignore[union-attr]
        with self.lock:  # type: ignore[union-attr]
            self._add_access(line)

    def _add_access(self, line: str) -> None:
        self._pending.append(line)
        self._pending_size += len(line)
        if self._pending_size >= _ACCESS_BATCH or time.monotonic() - self._written >= ACCESS_DELAY:
            self._write()

    def _write(self) -> None:
        pending = self._pending
        if pending:
            self._pending = []
            self._pending_size = 0
            if self._fd is None:
                self.stream.write(pending[0] if len(pending) == 1 else "".join(pending))
                self.stream.flush()
            else:
                self.stream.flush()  # what others wrote through the stream goes first
                for chunk in _whole_lines("".join(pending).encode(self._encoding, self._errors)):
                    _write_all(self._fd, chunk)
        self._written = time.monotonic()

    def flush(self) -> None:
        self.acquire()
        try:
            if self.stream is not None:
                self._write()
        finally:
            self.release()


def _whole_lines(data: bytes, size: int = _PIPE_BUF) -> Iterator[bytes | memoryview]:
    """``data`` (lines, each ending with a line feed) in pieces of whole lines of at most ``size``
    bytes; a line longer than ``size`` is a piece of its own."""
    view = memoryview(data)
    start, end = 0, len(data)
    while end - start > size:
        cut = data.rfind(b"\n", start, start + size)
        if cut == -1:  # one long line: alone, whole
            cut = data.find(b"\n", start + size)
            if cut == -1:
                break
        yield view[start:cut + 1]
        start = cut + 1
    if start < end:
        yield view[start:]


def _write_all(fd: int, data: bytes | memoryview) -> None:
    while data:
        data = data[os.write(fd, data):]


# -- the access log -----------------------------------------------------------------------------


def access(method: str, target: bytes | str, status: int, size: int, seconds: float, client: str,
           tenant: str | None = None, connection: str | None = None) -> None:
    """One access record: ``CLIENT "METHOD PATH?QUERY" STATUS BYTES DURATIONms``, the query's
    secret-looking values (``token``...) masked; as fields: ``method``, ``path``, ``query``
    (when there is one), ``status``, ``duration_ms``, ``bytes``, ``client`` and, when known,
    ``tenant`` and ``connection`` (a WebSocket's, with its 101)."""
    if isinstance(target, bytes):
        target = target.decode("latin-1")
    path, mark, query = target.partition("?")
    path = redact(path.partition("#")[0][:_TARGET_SIZE]) or "-"
    milliseconds = round(seconds * 1000, 3)
    # every part is redacted here (the filter then only looks for the configured secrets)
    fields: dict[str, Any] = {"method": method, "path": path, "status": status, "duration_ms": milliseconds,
                              "bytes": size, "client": client, "_redacted": True}
    shown = path
    if mark:
        query = redact(query.partition("#")[0][:_TARGET_SIZE])
        fields["query"] = query
        shown = f"{path}?{query}"
    if tenant:
        fields["tenant"] = redact(tenant[:128])
    if connection:
        fields["connection"] = connection
    installed = _installed
    if installed is not None and _direct(installed):
        redactor, handler = installed[1], installed[2]
        message = f'{client or "-"} "{method} {shown}" {status} {size} {milliseconds:.3f}ms'
        if not redactor.literals or not any(secret in message or secret in (tenant or "")
                                            for secret in redactor.literals):
            del fields["_redacted"]
            handler.emit_access(time.time(), message, fields)
            return
    # made and handled directly: the caller checked the level, and the record's source line says nothing
    ACCESS.handle(ACCESS.makeRecord(ACCESS.name, logging.INFO, __file__, 0, '%s "%s %s" %d %d %.3fms',
                                    (client or "-", method, shown, status, size, milliseconds), None, extra=fields))


def _direct(installed: tuple[RateLimitFilter, RedactFilter, LineHandler]) -> bool:
    """Whether an access record would meet nothing but configure()'s handler and filters (no handler
    or filter added since, on fastws.access or the root): then :func:`access` hands the line to the
    handler without making a LogRecord, a third of the cost of a short request."""
    handler = installed[2]
    root = logging.root
    parent = ACCESS.parent  # "fastws"
    return (not ACCESS.handlers and not ACCESS.filters and ACCESS.propagate and not ACCESS.disabled
            and parent is not None and (parent is root or (not parent.handlers and parent.propagate))
            and len(root.handlers) == 1 and root.handlers[0] is handler and not root.filters
            and len(handler.filters) == 2 and handler.level <= logging.INFO
            and isinstance(handler.formatter, (TextFormatter, JsonFormatter)))


# -- configuration ------------------------------------------------------------------------------

#: the filters of the handler configure() installed (the server's sweep flushes the rate limit)
_installed: tuple[RateLimitFilter, RedactFilter, LineHandler] | None = None


def configure(level: str = "info", log_format: str = "text", worker: int | None = None,
              secrets: Iterable[str] = (), stream: TextIO | None = None) -> logging.Handler:
    """Log to ``stream`` (stderr) at ``level`` in ``log_format``: one handler on the root logger,
    replacing any this function installed before. picows' per-connection INFO lines are not
    even made unless ``level`` is debug."""
    global _installed
    handler = LineHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(worker) if log_format == "json" else TextFormatter(worker))
    rate, redactor = RateLimitFilter(), RedactFilter(secrets)
    handler.addFilter(rate)  # first: a record held back is never formatted
    handler.addFilter(redactor)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "fastws", False)]:
        root.removeHandler(old)
    handler.fastws = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level.lower(), logging.INFO))
    logging.getLogger("fastws.picows").setLevel(logging.NOTSET if level.lower() == "debug" else logging.WARNING)
    logging.captureWarnings(True)  # warnings go through the handler too: every line in the format
    _installed = (rate, redactor, handler)
    return handler


def add_secrets(secrets: Iterable[str]) -> None:
    """Mask these too from now on (a reload brought new keys)."""
    if _installed is not None:
        _installed[1].add(secrets)


def flush(everything: bool = False) -> None:
    """Log the summaries of rate-limit windows that are over (all of them with ``everything``),
    and write the access lines waiting (the server's sweep calls this about once a second)."""
    if _installed is not None:
        _installed[0].flush(everything=everything)
        _installed[2].flush()
