"""The JavaScript client (clients/js, fastws-client): its own test suite, run by `npm test` against real servers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "clients" / "js"


@pytest.mark.timeout(300)
def test_js_client_suite_passes() -> None:
    """`npm test` in clients/js passes (node:test, against `python -m fastws serve` run with this interpreter)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are required for the JavaScript client's tests (Node 20 or later)")
    if not (PACKAGE / "node_modules").is_dir():
        # the test dependencies, exactly as the committed lockfile has them
        installed = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=PACKAGE, capture_output=True,
                                   text=True, timeout=240)
        if installed.returncode != 0:
            pytest.fail(f"`npm ci` in clients/js failed:\n{installed.stdout[-4000:]}\n{installed.stderr[-4000:]}")
    result = subprocess.run(
        [npm, "test"],
        cwd=PACKAGE,
        env={**os.environ, "FASTWS_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, f"npm test failed ({result.returncode}):\n{result.stdout[-20000:]}\n{result.stderr[-5000:]}"
