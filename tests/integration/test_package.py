"""A built wheel ships the dashboard: every file of fastws/static/, the browser client as a file
(the content of the npm package's module, not the source tree's symlink)."""

from __future__ import annotations

import stat
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "fastws" / "static"


def test_wheel_ships_static_files(tmp_path):
    """`pip wheel .` holds fastws/static/** with the same bytes, and fastws-client.js as a regular file."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(tmp_path)],
        check=True, capture_output=True, timeout=600,
    )
    (wheel,) = tmp_path.glob("fastws-*.whl")
    expected = {
        path.relative_to(ROOT).as_posix(): path.read_bytes()
        for path in STATIC.rglob("*") if path.is_file()
    }
    assert "fastws/static/dashboard.html" in expected and "fastws/static/fastws-client.js" in expected
    with zipfile.ZipFile(wheel) as archive:
        infos = {info.filename: info for info in archive.infolist() if info.filename.startswith("fastws/static/")}
        assert set(infos) == set(expected)
        for name, content in expected.items():
            assert archive.read(name) == content, name
            mode = infos[name].external_attr >> 16
            assert not stat.S_ISLNK(mode), f"{name} is a symlink in the wheel"
    client = (ROOT / "clients" / "js" / "src" / "index.js").read_bytes()
    assert expected["fastws/static/fastws-client.js"] == client
