"""The OpenAPI description against live servers: schemathesis (its CLI, in a subprocess) drives a real
`fastws serve` from the document it serves at /api/openapi.json, once in open mode and once with a
JWT key and an admin token, and fails on any failure of its checks (tests/integration/schemathesis.toml
says the one narrowing and why). Each run gets its own server: schemathesis turns flags off and
disconnects tenants. tests/unit/test_openapi.py checks the document against the code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import orjson
import pytest

from fastws.auth import Authenticator
from fastws.config import Settings
from fastws.openapi import document
from tests.helpers import stop_process

CONFIG = Path(__file__).with_name("schemathesis.toml")
SECRET = "openapi-live-test-secret-0123456789"
URL_LINE = re.compile(r"REST (http://\S+?)/api/websocket ")
#: every check the run makes (ignored_auth does nothing where no operation asks for a token)
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance", "negative_data_rejection", "ignored_auth")
#: test cases per operation and phase: bounded, and the same ones every run (deterministic generation)
MAX_EXAMPLES = 50
TIMEOUT = 30.0
RUN_TIMEOUT = 300.0


class Serve:
    """`fastws serve --port 0 --workers 2` in a subprocess; ``base`` is its http:// URL."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fastws", "serve", "--port", "0", "--workers", "2"],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env={**os.environ, **env},
        )
        self.log: list[str] = []
        self.base = ""
        found = threading.Event()

        def read() -> None:
            assert self.process.stderr is not None
            for raw in self.process.stderr:
                line = raw.decode(errors="replace")
                self.log.append(line)
                match = URL_LINE.search(line)
                if match and not found.is_set():
                    self.base = match.group(1)
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        if not (found.wait(TIMEOUT) and self.base):
            self.stop()
            pytest.fail("the server did not start:\n" + "".join(self.log), pytrace=False)

    def stop(self) -> None:
        stop_process(self.process, TIMEOUT)


@pytest.fixture
def serve() -> Iterator:
    servers: list[Serve] = []

    def start(**env: str) -> Serve:
        servers.append(Serve(env))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def schemathesis(location: str, cwd: Path, *options: str) -> tuple[int, str, float]:
    """Run the schemathesis CLI; (exit code, its report, seconds)."""
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run", location,
               # schemathesis leaves out the operation that served the document unless a filter names it:
               # this one names every path, GET /api/openapi.json included
               "--include-path-regex", "^/",
               "--checks", ",".join(CHECKS), "--max-examples", str(MAX_EXAMPLES), "--generation-deterministic",
               "--workers", "1", "--request-timeout", "10", "--no-color", *options]
    started = time.monotonic()
    try:
        # in cwd: what schemathesis keeps between runs (replays) stays out of the tree
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    except FileNotFoundError:  # pragma: no cover - the test extra installs it
        pytest.fail("schemathesis is missing: pip install -e '.[test]'", pytrace=False)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def assert_clean_run(code: int, report: str, settings: Settings) -> None:
    """Exit 0, and every operation of the document was tested: none skipped or left out."""
    count = sum(1 for item in document(settings)["paths"].values() for method in item if method != "parameters")
    assert code == 0, report
    assert f"Selected: {count}/{count}" in report and f"Tested: {count}" in report, report
    assert not re.search(r"\d+ (failed|errored)", report), report


@pytest.mark.timeout(RUN_TIMEOUT + 60)
def test_schemathesis_finds_nothing_in_open_mode(serve, tmp_path):
    """Open mode (no key, admin operations from loopback): every check passes on every operation."""
    server = serve()
    code, report, seconds = schemathesis(f"{server.base}/api/openapi.json", tmp_path)
    print(f"schemathesis, open mode: {seconds:.1f} s\n{report}")
    assert_clean_run(code, report, Settings())


@pytest.mark.timeout(RUN_TIMEOUT + 60)
def test_schemathesis_finds_nothing_with_tokens(serve, tmp_path):
    """With a JWT key and an admin token: every check passes, ignored_auth included (each operation that
    asks for a token refuses a request without one or with a bad one)."""
    server = serve(FASTWS_JWT_SECRET=SECRET)
    settings = Settings(jwt_secret=SECRET)
    admin = Authenticator.from_settings(settings).mint("ops", "root", admin=True)  # type: ignore[union-attr]
    code, report, seconds = schemathesis(f"{server.base}/api/openapi.json", tmp_path,
                                         "--header", f"Authorization: Bearer {admin}")
    print(f"schemathesis, with tokens: {seconds:.1f} s\n{report}")
    assert_clean_run(code, report, settings)


def test_schemathesis_fails_on_a_description_that_lies(serve, tmp_path):
    """The harness catches a failure: a description whose /healthz answers a status other than "ok"
    and documents no 400 fails response_schema_conformance, and the run exits non-zero."""
    server = serve()
    lying = document(Settings())
    lying["paths"] = {"/healthz": lying["paths"]["/healthz"]}
    lying["components"]["schemas"]["Health"]["properties"]["status"] = {"const": "fine"}
    spec = tmp_path / "lying.json"
    spec.write_bytes(orjson.dumps(lying))
    code, report, _ = schemathesis(str(spec), tmp_path, "--url", server.base)
    assert code != 0, report
    assert "Response violates schema" in report or "response_schema_conformance" in report, report
