"""fastws.logs without sockets: the formatters, redaction, the rate limit of client faults, picows' records."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import textwrap

import orjson
import pytest

from fastws import logs
from fastws.config import Settings
from fastws.exceptions import ConfigError

JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ0ZW5hbnRfaWQiOiJhY21lIiwic3ViIjoiYWxpY2UifQ.c2lnbmF0dXJlLWJ5dGVz"
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def record(message: str = "hello %s", args: tuple = ("world",), level: int = logging.INFO, name: str = "fastws.test",
           exc_info=None, **extra) -> logging.LogRecord:
    made = logging.getLogger(name).makeRecord(name, level, __file__, 1, message, args, exc_info, extra=extra or None)
    return made


class Capture(logging.Handler):
    """A handler keeping what passes its filters, as (level, logger, message, fields)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def capture():
    """A fresh logger tree under fastws.test with a capturing handler behind a RateLimitFilter."""
    handler = Capture()
    limiter = logs.RateLimitFilter(logs.RateLimiter(burst=3, period=10.0, max_keys=4))
    handler.addFilter(limiter)
    logger = logging.getLogger("fastws.test")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield handler, limiter
    logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


# -- formatters ---------------------------------------------------------------------------------


def test_json_line_has_the_documented_fields():
    """A JSON record is one line: time (ISO 8601 UTC, ms), level, logger, worker, tenant, connection, message, extras."""
    line = logs.JsonFormatter(worker=3).format(record(tenant="acme", connection="c-1", code="invalid_json", count=2))
    assert "\n" not in line
    out = orjson.loads(line)
    assert ISO_MS.match(out["time"]), out["time"]
    assert out["level"] == "INFO" and out["logger"] == "fastws.test" and out["worker"] == 3
    assert out["tenant"] == "acme" and out["connection"] == "c-1" and out["message"] == "hello world"
    assert out["code"] == "invalid_json" and out["count"] == 2
    assert list(out)[:7] == ["time", "level", "logger", "worker", "tenant", "connection", "message"]


def test_json_time_is_utc_with_milliseconds():
    """The time field is the record's creation time in UTC, to the millisecond."""
    made = record()
    made.created = 1_700_000_000.25
    assert orjson.loads(logs.JsonFormatter().format(made))["time"] == "2023-11-14T22:13:20.250Z"


def test_json_without_connection_leaves_tenant_and_connection_out_and_worker_null():
    """A record about no connection has no tenant/connection fields; the supervisor's worker is null."""
    out = orjson.loads(logs.JsonFormatter().format(record()))
    assert out["worker"] is None and "tenant" not in out and "connection" not in out and "exc" not in out


def test_json_carries_the_traceback_as_exc():
    """A record with an exception has its traceback text in exc, and stays one line."""
    try:
        raise ValueError("boom")
    except ValueError:
        made = record("failed", (), level=logging.ERROR, exc_info=sys.exc_info())
    line = logs.JsonFormatter().format(made)
    assert "\n" not in line
    out = orjson.loads(line)
    assert out["level"] == "ERROR" and "ValueError: boom" in out["exc"] and "Traceback" in out["exc"]


def test_json_writes_fields_it_cannot_encode_as_text():
    """A field orjson cannot encode is written as its str(), never an exception."""
    out = orjson.loads(logs.JsonFormatter().format(record(thing=object(), keyed={1: "a"})))
    assert out["thing"].startswith("<object object")
    assert "keyed" in out


def test_text_line_keeps_the_old_look_plus_worker_tenant_and_connection():
    """Text: 'TIME LEVEL LOGGER[wN pid P]: MESSAGE tenant=T connection=C'; no worker tag in the supervisor."""
    line = logs.TextFormatter(worker=1).format(record(tenant="acme", connection="c-1"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO fastws\.test\[w1 pid \d+\]: hello world "
                        r"tenant=acme connection=c-1", line), line
    assert re.fullmatch(r"\S+ \S+ INFO fastws\.test: hello world", logs.TextFormatter().format(record()))


def test_text_line_cannot_be_split_by_a_client_string():
    """Line breaks in a message are written as \\n: a client's text cannot forge a log line."""
    line = logs.TextFormatter().format(record("refused %s", ("a\nINFO fake: line\r",)))
    assert "\n" not in line and "\\nINFO fake" in line


# -- redaction ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, secret", [
    (f"Authorization: Bearer {JWT}", JWT),
    ("authorization: Bearer opaque-token-123", "opaque-token-123"),
    ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
    ("bearer opaque-token-123 and more", "opaque-token-123"),
    (f"refused {JWT}", JWT),
    ("GET /ws?tenant_id=a&token=not-a-jwt-at-all&x=1", "not-a-jwt-at-all"),
    ("GET /ws?access_token=abcdef123", "abcdef123"),
    ("GET /ws?%74oken=abcdef123", "abcdef123"),
    ("redis://:hunter2hunter2@10.0.0.5:6379/0", "hunter2hunter2"),
    ("rediss://user:p4ss/word@host:6380", "p4ss"),
    ('{"type":"refresh","token":"opaque-token-123"}', "opaque-token-123"),
    ("password=swordfish; next", "swordfish"),
])
def test_redact_masks_tokens_credentials_and_passwords(text, secret):
    """Bearer tokens, JWTs, token=/password= values, JSON token fields and URL passwords become ***."""
    redacted = logs.redact(text)
    assert secret not in redacted and "***" in redacted, redacted


def test_redact_leaves_ordinary_text_alone():
    """Text without secrets comes back unchanged (the same object: nothing was done)."""
    for text in ("worker 1 (pid 42) serving", "GET /api/websocket/status?detailed=true&tenant_id=acme",
                 "closing with 1009: message over 65536 bytes", "user@example.com wrote", '"quoted": fine'):
        assert logs.redact(text) == text


def test_redact_masks_configured_literal_secrets():
    """A configured secret is masked wherever it appears, even unmarked."""
    assert logs.redact("key is s3cr3t-value-xyz!", ["s3cr3t-value-xyz"]) == "key is ***!"


def test_redact_url_drops_the_user_part():
    assert logs.redact_url("redis://:pw@h:1/0") == "redis://***@h:1/0"
    assert logs.redact_url("redis://h:1/0") == "redis://h:1/0"


def test_mask_query_masks_secret_parameters_only():
    """token (and password-like) values are masked; other parameters kept as sent."""
    assert logs.mask_query("tenant_id=acme&token=abc.def.ghi&since=4") == "tenant_id=acme&token=***&since=4"
    assert logs.mask_query("token=") == "token="


def test_redact_filter_masks_message_arguments_traceback_and_fields():
    """The filter formats the message once, masks it, the traceback text and every string field."""
    try:
        raise RuntimeError(f"bad {JWT}")
    except RuntimeError:
        made = record("got %s with %s", (f"Bearer {JWT}", "literal-secret-1"), exc_info=sys.exc_info(),
                      note=f"token={JWT}")
    assert logs.RedactFilter(["literal-secret-1"]).filter(made)
    text = logs.JsonFormatter().format(made)
    assert JWT not in text and "literal-secret-1" not in text
    assert made.args is None and made.getMessage() == "got Bearer *** with ***"


def test_secrets_of_settings(tmp_path):
    """The JWT secret, the key file's keys and Redis passwords are the configured secrets."""
    keys = tmp_path / "keys.json"
    keys.write_text('{"k1": "key-file-secret-of-32-bytes-long!!"}')
    settings = Settings(jwt_secret="x" * 32, jwt_keys_file=str(keys), broker="redis://:redispass@h:1/0,redis://h:2")
    assert set(logs.secrets_of(settings)) == {"x" * 32, "key-file-secret-of-32-bytes-long!!", "redispass"}


# -- rate limiting ------------------------------------------------------------------------------


def test_rate_limiter_lets_a_burst_through_then_counts():
    """burst records per key and window pass; the rest are counted for one summary when the window ends."""
    limiter = logs.RateLimiter(burst=3, period=10.0, max_keys=8)
    describe = lambda: ("fastws.x", logging.INFO, "first held")  # noqa: E731
    allowed = [limiter.allow("k", 100.0 + i * 0.01, describe) for i in range(50)]
    assert allowed == [True] * 3 + [False] * 47
    assert not limiter.pending
    assert limiter.allow("k", 110.5, describe)  # a new window: its first record passes...
    (summary,) = limiter.pending  # ...and the last window's count is ready to be said
    assert (summary.count, summary.sample, summary.logger) == (47, "first held", "fastws.x")


def test_rate_limiter_keys_are_independent():
    """Each key has its own budget."""
    limiter = logs.RateLimiter(burst=1, period=10.0)
    describe = lambda: ("l", logging.INFO, "m")  # noqa: E731
    assert limiter.allow("a", 0.0, describe) and limiter.allow("b", 0.0, describe)
    assert not limiter.allow("a", 0.1, describe)


def test_rate_limiter_memory_is_bounded():
    """Past max_keys, ended windows are freed, then new keys share one: the table never grows past max_keys + 1."""
    limiter = logs.RateLimiter(burst=1, period=10.0, max_keys=16)
    describe = lambda: ("l", logging.INFO, "m")  # noqa: E731
    for i in range(10_000):
        limiter.allow(("l", f"message {i}", None), 1.0, describe)
    assert len(limiter) <= 17
    limiter.expire(20.0)
    assert len(limiter) == 0 and sum(s.count for s in limiter.pending) == 10_000 - 17


def test_expire_ends_windows_that_are_over():
    """expire() says a window's count even when its key is never logged again; everything=True ends all."""
    limiter = logs.RateLimiter(burst=1, period=10.0)
    describe = lambda: ("l", logging.INFO, "m")  # noqa: E731
    for key in ("a", "b"):
        limiter.allow(key, 0.0, describe)
        limiter.allow(key, 0.0, describe)
    limiter.allow("c", 5.0, describe)
    limiter.allow("c", 5.0, describe)
    limiter.expire(11.0)
    assert sorted(s.count for s in limiter.pending) == [1, 1] and len(limiter) == 1
    limiter.pending.clear()
    limiter.expire(11.0, everything=True)
    assert [s.count for s in limiter.pending] == [1] and len(limiter) == 0


def test_rate_limit_filter_holds_back_client_faults_and_summarises(capture):
    """Client-fault records past the burst are held back; the summary comes on the same logger, with a count."""
    handler, limiter = capture
    log = logging.getLogger("fastws.test")
    for i in range(100):
        log.info("command refused: %s", i, extra=logs.client_fault("acme", "c1", "invalid_json"))
    log.warning("a server fault %d", 1)  # not a client fault: never held back
    assert [r.getMessage() for r in handler.records] == [
        "command refused: 0", "command refused: 1", "command refused: 2", "a server fault 1"]
    limiter.flush(everything=True)
    summary = handler.records[-1]
    assert summary.name == "fastws.test" and summary.levelno == logging.INFO
    assert summary.suppressed == 97 and summary.code == "invalid_json"
    assert summary.getMessage().startswith("suppressed 97 similar messages in ") and "command refused: 3" in summary.getMessage()


def test_rate_limit_keys_by_code(capture):
    """The same call site with another error code has its own budget."""
    handler, _ = capture
    log = logging.getLogger("fastws.test")
    for code in ("invalid_json", "unknown_type"):
        for _ in range(5):
            log.info("command refused: %s", code, extra=logs.client_fault(code=code))
    assert len(handler.records) == 6


def test_summary_at_the_next_record_after_the_window(capture):
    """When a key is logged again after its window, the summary comes first, then the record."""
    handler, limiter = capture
    log = logging.getLogger("fastws.test")
    for _ in range(5):
        log.info("x", extra=logs.client_fault())
    late = record("x", (), client_fault=True)
    late.created += 60
    for flt in handler.filters:
        assert flt.filter(late)
    assert handler.records[-1].suppressed == 2


# -- picows ---------------------------------------------------------------------------------------


@pytest.fixture
def picows_logger():
    logger = logging.getLogger("fastws.picows")
    flt = logs.PicowsFilter()
    logger.addFilter(flt)
    fastws = logging.getLogger("fastws")
    level = fastws.level
    fastws.setLevel(logging.INFO)
    yield logger
    logger.removeFilter(flt)
    fastws.setLevel(level)


def test_picows_protocol_error_becomes_an_info_client_fault(picows_logger):
    """picows' ERROR about a peer's bad frame becomes INFO 'closing with CODE: reason', a client fault with its code."""
    made = record("WS parser error: %s, initiate disconnect", ((1009, "frame too big"),), level=logging.ERROR,
                  name="fastws.picows")
    assert picows_logger.filter(made)
    assert made.levelno == logging.INFO and made.levelname == "INFO"
    assert made.getMessage() == "closing with 1009: frame too big" and made.code == 1009 and made.client_fault


def test_picows_connection_lines_become_debug(picows_logger):
    """The per-connection INFO lines become DEBUG: dropped unless debugging."""
    assert not picows_logger.filter(record("Disconnected", (), name="fastws.picows"))


def test_picows_errors_with_a_traceback_keep_their_level(picows_logger):
    """An exception in fastws' own listener is our fault: it stays ERROR."""
    try:
        raise KeyError("x")
    except KeyError:
        made = record("Unhandled exception from user's WSListener.on_ws_frame", (), level=logging.ERROR,
                      name="fastws.picows", exc_info=sys.exc_info())
    assert picows_logger.filter(made) and made.levelno == logging.ERROR


# -- the access record and configure() ------------------------------------------------------------


def test_access_record_fields(capture):
    """One INFO record on fastws.access: method, path, masked query, status, duration_ms, bytes, client, tenant."""
    handler = Capture()
    logs.ACCESS.addHandler(handler)
    logs.ACCESS.setLevel(logging.INFO)
    try:
        logs.access("GET", b"/ws?tenant_id=acme&token=" + JWT.encode(), 101, 129, 0.0012345, "203.0.113.7", "acme", "c-1")
    finally:
        logs.ACCESS.removeHandler(handler)
        logs.ACCESS.setLevel(logging.NOTSET)
    (made,) = handler.records
    assert made.levelno == logging.INFO
    assert (made.method, made.path, made.query, made.status, made.bytes, made.client, made.tenant, made.connection) == (
        "GET", "/ws", "tenant_id=acme&token=***", 101, 129, "203.0.113.7", "acme", "c-1")
    assert made.duration_ms == 1.234
    assert made.getMessage() == '203.0.113.7 "GET /ws?tenant_id=acme&token=***" 101 129 1.234ms'
    assert JWT not in logs.JsonFormatter().format(made)


@pytest.fixture
def configured():
    """configure() with a stream of its own; the root logger as it was afterwards."""
    root = logging.getLogger()
    before = list(root.handlers), root.level
    stream = io.StringIO()

    def install(log_format: str, secrets: tuple[str, ...] = (), level: str = "info", worker: int | None = 3,
                alone: bool = True) -> io.StringIO:
        logs.configure(level, log_format, worker, secrets, stream=stream)
        if alone:
            for handler in [h for h in root.handlers if not getattr(h, "fastws", False)]:
                root.removeHandler(handler)  # pytest's capture: as in a server, ours is the only one
        return stream

    yield install
    for handler in [h for h in root.handlers if getattr(h, "fastws", False)]:
        root.removeHandler(handler)
    for handler in before[0]:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(before[1])
    logging.getLogger("fastws.picows").setLevel(logging.NOTSET)
    logging.captureWarnings(False)
    logs._installed = None


def test_configure_installs_one_handler_in_the_format(configured):
    """configure() replaces its own handler (never two), sets the level, and writes the chosen format."""
    root = logging.getLogger()
    configured("text", worker=None, alone=False)
    stream = configured("json", ("configured-secret-9",), level="warning", worker=2, alone=False)
    ours = [h for h in root.handlers if getattr(h, "fastws", False)]
    assert len(ours) == 1 and root.level == logging.WARNING
    logging.getLogger("fastws.test").warning("uses configured-secret-9")
    out = orjson.loads(stream.getvalue().splitlines()[-1])
    assert out["worker"] == 2 and out["message"] == "uses ***"


def _without_time(line: str, log_format: str) -> str:
    if log_format == "json":
        out = orjson.loads(line)
        del out["time"]
        return orjson.dumps(out).decode()
    return line.split(" ", 2)[2]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_access_lines_without_a_record_are_the_record_lines(configured, log_format):
    """With nothing but configure()'s handler listening, access() writes its line without making a LogRecord;
    the line is the one the record would have made (fields, order, masking), in both formats. A filter added to
    fastws.access, or a configured secret in the line, sends it through the record again, and the filter sees it."""
    stream = configured(log_format, ("configured-secret-9",))
    assert logs._direct(logs._installed)
    calls = [("GET", b"/ws?tenant_id=acme&token=" + JWT.encode(), 101, 129, 0.0012345, "203.0.113.7", "acme", "c-1"),
             ("POST", "/api/websocket", 200, 80, 0.00004, "::1", None, None),
             ("GET", b"/api/websocket/history?channel=a\r\nb", 400, 90, 0.001, "", "t\nx", None)]
    for call in calls:
        logs.access(*call)
    logs.flush()
    direct = stream.getvalue().splitlines()
    seen: list[logging.LogRecord] = []

    class Keep(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            seen.append(record)
            return True

    keep = Keep()
    logs.ACCESS.addFilter(keep)
    assert not logs._direct(logs._installed)
    try:
        for call in calls:
            logs.access(*call)
    finally:
        logs.ACCESS.removeFilter(keep)
    logs.flush()
    through_records = stream.getvalue().splitlines()[len(direct):]
    assert len(seen) == len(calls) and len(direct) == len(calls)
    assert [_without_time(line, log_format) for line in direct] == [
        _without_time(line, log_format) for line in through_records]
    assert JWT not in stream.getvalue()
    # a tenant from the query cannot start a line of its own
    assert ("tenant=t\\nx" if log_format == "text" else '"tenant":"t\\nx"') in direct[-1]
    logs.access("GET", "/api/websocket?x=configured-secret-9", 200, 1, 0.0, "127.0.0.1")
    logs.flush()
    assert "configured-secret-9" not in stream.getvalue() and "x=***" in stream.getvalue().splitlines()[-1]


def test_log_settings():
    """log_format is text or json, access_log a boolean; both from the environment too."""
    settings = Settings.load({"FASTWS_LOG_FORMAT": "json", "FASTWS_ACCESS_LOG": "off"})
    assert settings.log_format == "json" and settings.access_log is False
    assert Settings.load({}).access_log is True and Settings.load({}).log_format == "text"
    with pytest.raises(ConfigError):
        Settings.load({"FASTWS_LOG_FORMAT": "xml"})
    with pytest.raises(ConfigError):
        Settings.load({"FASTWS_LOG_LEVEL": "loud"})


def test_line_handler_batches_access_lines_only():
    """Access lines wait (at most ACCESS_DELAY) to be written together; any other record is written at once,
    after the access lines before it; flush() writes what waits."""
    stream = io.StringIO()
    handler = logs.LineHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    handler.handle(record("first", (), name="fastws.access"))  # nothing written for a while: at once
    assert stream.getvalue() == "fastws.access first\n"
    handler.handle(record("second", (), name="fastws.access"))
    handler.handle(record("third", (), name="fastws.access"))
    assert stream.getvalue().count("\n") == 1
    handler.handle(record("other", (), name="fastws.server"))
    assert stream.getvalue().splitlines() == ["fastws.access first", "fastws.access second", "fastws.access third",
                                              "fastws.server other"]
    handler.handle(record("fourth", (), name="fastws.access"))
    handler.flush()
    assert stream.getvalue().splitlines()[-1] == "fastws.access fourth"


def test_whole_lines_are_pieces_of_whole_lines_within_the_size():
    lines = [b"x" * n + b"\n" for n in (10, 3000, 900, 5000, 0, 4095, 4096, 7)]
    data = b"".join(lines)
    pieces = [bytes(piece) for piece in logs._whole_lines(data, 4096)]
    assert b"".join(pieces) == data
    for piece in pieces:
        assert piece.endswith(b"\n")
        assert len(piece) <= 4096 or piece.count(b"\n") == 1  # a longer line goes alone
    assert [bytes(p) for p in logs._whole_lines(b"a\nb", 4096)] == [b"a\nb"]


WRITER = textwrap.dedent("""
    import sys, time
    from fastws import logs
    logs.configure("info", "json", int(sys.argv[1]))
    for n in range(3000):
        logs.access("POST", "/api/websocket?n=%d" % n, 200, 170, 0.00003, "127.0.0.1", "t" * (n % 300))
        if n % 500 == 0:
            time.sleep(0.001)
    logs.flush()
""")


def test_workers_sharing_a_pipe_never_cut_each_others_lines():
    """Two processes write batches of access lines to one pipe at once, as two workers do to the
    supervisor's stderr: every line read back is one whole JSON record, and none is lost."""
    read_end, write_end = os.pipe()
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(worker)], stderr=write_end, stdout=subprocess.DEVNULL,
                                cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
               for worker in (0, 1)]
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        lines = pipe.read().splitlines()
    assert [writer.wait(30) for writer in writers] == [0, 0]
    records = [orjson.loads(line) for line in lines]
    assert sorted((r["worker"], r["query"]) for r in records) == sorted(
        (worker, f"n={n}") for worker in (0, 1) for n in range(3000))
