"""Autobahn|Testsuite cases 1.* to 10.* against the real listener stack in echo mode.

The fuzzing client is kosoku (PyPI, a Python 3 wheel that runs Autobahn's own
case files); CI installs it (.ci/run) and sets FASTWS_REQUIRE_AUTOBAHN=1, which
turns the skip below into a failure. Locally: ``pip install kosoku==0.1.0``.

The server is ``python -m tests.conformance.echo_server`` (``Server(settings,
echo=True)`` on uvloop): the httptools front, the hand-off to picows and the
Connection adapter's frame rules, with messages echoed instead of interpreted.
Cases 12.* and 13.* (permessage-deflate) are not run: fastws does not
negotiate compression, so they would all be UNIMPLEMENTED.

The runner's exit code does not say enough, so the JSON report it writes
(``index.json``, one entry per case, in wstest's format) is parsed: every case
must have a passing ``behavior`` (OK, NON-STRICT or INFORMATIONAL) and a
passing ``behaviorClose``, and more than 250 cases must run.

This run takes about 15 s, so it runs in both passes of .ci/run: the second
one (FASTWS_NO_EXTENSIONS=1, inherited by the server process) checks the echo
path on the pure-Python core too.
"""

from __future__ import annotations

import collections
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.conformance

ROOT = Path(__file__).resolve().parents[2]
RUNNER_VERSION = "0.1.0"  # what .ci/run installs
RUN_TIMEOUT = 300.0  # seconds for the whole run (about 15 s here)
SERVER_START_TIMEOUT = 30.0
MIN_CASES = 250  # cases 1.* to 10.* are 301

PASSING_BEHAVIOR = {"OK", "NON-STRICT", "INFORMATIONAL"}
PASSING_BEHAVIOR_CLOSE = {"OK", "INFORMATIONAL"}

#: Cases that fail because of picows 2.3.1 itself, each with the exact signature
#: of that failure (anything else in the case still fails the test).
#:
#: 7.1.2 sends two close frames. When both arrive in one read, picows' parser,
#: which parses the frame after the one it is about to deliver, refuses the
#: second close ("Received CLOSE for the second time") and sends close 1002
#: before the first close reaches Connection; Autobahn wants 1000 with the
#: second close ignored. When the frames arrive in separate reads the case
#: passes (about 1 run in 10 here). The reference wstest (autobahntestsuite
#: 25.10.1 under Python 2.7) reports the same. Connection cannot help: the 1002
#: is on the wire before it sees the first close. The fix belongs in picows
#: (deliver a CLOSE frame before parsing the next one, or ignore a second
#: CLOSE), or in a pre-scan of frame headers in front of WSProtocol. Remove the
#: entry when that lands: an unused entry is harmless, a changed failure is not.
def find_runner() -> list[str] | None:
    """The kosoku command: next to this interpreter first (a venv without PATH), then on PATH."""
    candidate = Path(sys.executable).parent / "kosoku"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return [str(candidate)]
    found = shutil.which("kosoku")
    return [found] if found else None


def start_echo_server(log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start the echo server on a free loopback port; (process, its WebSocket URL)."""
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.conformance.echo_server", "--host", "127.0.0.1", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if selector.select(timeout=0.5):
                line = process.stdout.readline().decode().strip()
                if line.startswith("ws://127.0.0.1:"):
                    return process, line
                if not line and process.poll() is not None:
                    break
        stop_server(process)
        raise AssertionError(f"the echo server did not start:\n{log_path.read_text(errors='replace')[-4000:]}")
    finally:
        selector.close()


def stop_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    if process.stdout is not None:
        process.stdout.close()


def load_report(report_dir: Path) -> dict[str, dict[str, Any]]:
    """Case id -> the runner's index entry, plus the case's own report file under 'detail'."""
    index = json.loads((report_dir / "index.json").read_text())
    assert len(index) == 1, f"expected one agent in the report, got {list(index)}"
    (cases,) = index.values()
    for entry in cases.values():
        entry["detail"] = json.loads((report_dir / entry["reportfile"]).read_text())
    return cases


def case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case_id.split("."))


def describe(case_id: str, entry: dict[str, Any]) -> str:
    detail = entry["detail"]
    return (
        f"{case_id}: behavior={entry['behavior']} behaviorClose={entry['behaviorClose']}"
        f" -- {detail.get('description')}\n"
        f"    expected: {detail.get('expectation')}\n"
        f"    result: {detail.get('result')} / {detail.get('resultClose')}\n"
        f"    server close: {detail.get('remoteCloseCode')} {detail.get('remoteCloseReason')!r},"
        f" wasClean={detail.get('wasClean')} {detail.get('wasNotCleanReason') or ''}"
    )


@pytest.mark.timeout(RUN_TIMEOUT + 60)
def test_autobahn_fuzzingclient(tmp_path: Path) -> None:
    runner = find_runner()
    if runner is None:
        reason = f"the Autobahn runner kosoku is not installed (pip install kosoku=={RUNNER_VERSION})"
        if os.environ.get("FASTWS_REQUIRE_AUTOBAHN") == "1":
            pytest.fail(f"FASTWS_REQUIRE_AUTOBAHN=1 but {reason}")
        pytest.skip(reason)

    report_dir = tmp_path / "reports"
    server_log = tmp_path / "echo_server.log"
    server, url = start_echo_server(server_log)
    started = time.monotonic()
    try:
        try:
            run = subprocess.run(
                [*runner, "-m", "fuzzingclient", "-x", "12.*", "-x", "13.*", "-o", str(report_dir), url],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"the fuzzing client did not finish in {RUN_TIMEOUT:.0f} s: {exc.stdout!r} {exc.stderr!r}")
        elapsed = time.monotonic() - started
        server_exited = server.poll()
    finally:
        stop_server(server)

    output = f"exit code {run.returncode}\nstdout: {run.stdout[-2000:]}\nstderr: {run.stderr[-4000:]}"
    assert server_exited is None, f"the echo server died during the run:\n{server_log.read_text(errors='replace')[-4000:]}"
    assert (report_dir / "index.json").is_file(), f"the fuzzing client wrote no report\n{output}"
    cases = load_report(report_dir)

    behaviors = collections.Counter(entry["behavior"] for entry in cases.values())
    closes = collections.Counter(entry["behaviorClose"] for entry in cases.values())
    summary = (
        f"Autobahn 1.* to 10.*: {len(cases)} cases in {elapsed:.1f} s;"
        f" behavior {dict(sorted(behaviors.items()))}; behaviorClose {dict(sorted(closes.items()))}"
    )
    print(summary)

    assert len(cases) > MIN_CASES, f"only {len(cases)} cases ran\n{summary}\n{output}"
    assert not [c for c in cases if c.startswith(("12.", "13."))], "permessage-deflate cases ran"

    failing = sorted(
        (
            case_id
            for case_id, entry in cases.items()
            if entry["behavior"] not in PASSING_BEHAVIOR or entry["behaviorClose"] not in PASSING_BEHAVIOR_CLOSE
        ),
        key=case_key,
    )
    assert not failing, (
        f"{len(failing)} Autobahn case(s) FAILED ({summary}):\n"
        + "\n".join(describe(case_id, cases[case_id]) for case_id in failing)
        + f"\nreports: {report_dir}\nserver log tail:\n{server_log.read_text(errors='replace')[-2000:]}"
    )
