"""Browser tests: a real `fastws serve` process and Debian's Chromium driven by Playwright.

They fail (never skip) when Chromium or Playwright is missing: CI installs both (.ci/run).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Iterator

import jwt
import orjson
import pytest

from tests.helpers import stop_process

CHROMIUM = os.environ.get("FASTWS_CHROMIUM", "/usr/bin/chromium")
SECRET = "browser-tests-secret-0123456789abcdef"
URL_LINE = re.compile(r"WebSocket ws://(\S+?)/ws\?")
TIMEOUT = 20.0


def token(tenant_id: str, user_id: str, admin: bool = False) -> str:
    """An HS256 token for the server's secret, valid for an hour."""
    claims: dict[str, Any] = {"sub": user_id, "tenant_id": tenant_id, "exp": int(time.time()) + 3600}
    if admin:
        claims["role"] = "admin"
    return jwt.encode(claims, SECRET, algorithm="HS256")


class ServerProcess:
    """`fastws serve` in a subprocess (port 0 first, then the same port again after a restart)."""

    def __init__(self, workers: int = 2, env: dict[str, str] | None = None) -> None:
        self.workers = workers
        self.env = {**os.environ, **(env or {})}
        self.netloc = ""
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log: list[str] = []

    def start(self, port: int = 0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fastws", "serve", "--port", str(port), "--workers", str(self.workers)],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=self.env,
        )
        found = threading.Event()
        process = self.process

        def read() -> None:
            assert process.stderr is not None
            for raw in process.stderr:
                line = raw.decode(errors="replace")
                self.log.append(line)
                match = URL_LINE.search(line)
                if match and not found.is_set():
                    self.netloc = match.group(1)
                    self.port = int(self.netloc.rsplit(":", 1)[1])
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        assert found.wait(TIMEOUT) and self.netloc, "the server did not start:\n" + "".join(self.log)
        assert process.poll() is None, "the server exited:\n" + "".join(self.log)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, TIMEOUT)
        self.process = None

    def restart(self) -> None:
        """Stop, then start again on the same port."""
        port = self.port
        self.stop()
        self.start(port)

    @property
    def base(self) -> str:
        return f"http://{self.netloc}"

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = None if body is None else orjson.dumps(body)
        request = urllib.request.Request(self.base + path, data=data, method=method, headers={**(headers or {})})
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                return response.status, orjson.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, orjson.loads(error.read())


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "the browser tests need Playwright for Python: pip install playwright "
            "(it is in the test extra: pip install -e '.[test]')",
            pytrace=False,
        )
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"the browser tests need Chromium at {CHROMIUM}: apt-get install -y chromium "
            "(or set FASTWS_CHROMIUM to a Chromium binary)",
            pytrace=False,
        )
    return sync_playwright


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium (the system's, no downloaded browser)."""
    sync_playwright = _playwright()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    """A two-worker server with authentication on (HS256 tokens for SECRET)."""
    running = ServerProcess(workers=2, env={"FASTWS_JWT_SECRET": SECRET})
    running.start()
    yield running
    running.stop()
