"""codes.py is the one place for codes; docs/protocol.md must list exactly the same ones."""

import re
from pathlib import Path

from fastws import codes

DOC = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()


def _table(heading: str) -> str:
    section = DOC.split(f"## {heading}\n", 1)[1]
    return section.split("\n## ", 1)[0]


def test_every_error_code_is_documented_with_its_status():
    """Each error code in codes.ERRORS appears in the doc's table with the same HTTP status, and no other does."""
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", _table("Error codes"), re.M))
    assert rows == {code: str(status) for code, (status, _) in codes.ERRORS.items()}


def test_every_close_code_is_documented():
    """Each close code in codes.CLOSE_CODES appears in the doc's table, and no other does."""
    rows = {int(code) for code in re.findall(r"^\| (\d{4}) \|", _table("Close codes"), re.M)}
    assert rows == set(codes.CLOSE_CODES)


def test_close_reasons_fit_a_control_frame():
    """close_reason() never exceeds 123 bytes, even cutting multi-byte characters."""
    assert len(codes.close_reason("é" * 200)) <= codes.MAX_CLOSE_REASON
    codes.close_reason("é" * 200).decode("utf-8")
