"""CloseScanner (where a client's first CLOSE frame ends) on both implementations, and their parity."""

from __future__ import annotations

import importlib
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from fastws import _core_py
from tests.conftest import IMPLEMENTATIONS

MODULES = [_core_py if name == "python" else importlib.import_module("fastws._core") for name in IMPLEMENTATIONS]


def frame(opcode: int, payload: bytes, masked: bool = True, fin: bool = True, length: int | None = None) -> bytes:
    """A client frame; ``length`` overrides the declared payload length (a frame still arriving)."""
    size = len(payload) if length is None else length
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head = bytes((first, mask_bit | size))
    elif size < 65536:
        head = bytes((first, mask_bit | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((first, mask_bit | 127)) + size.to_bytes(8, "big")
    return head + (os.urandom(4) if masked else b"") + payload


def first_close_end(stream: bytes) -> int:
    """Independent answer: where the first complete CLOSE frame ends, or len(stream)."""
    at = 0
    while at + 2 <= len(stream):
        opcode, second = stream[at] & 0x0F, stream[at + 1]
        length, head = second & 0x7F, 2
        if length == 126:
            length, head = int.from_bytes(stream[at + 2:at + 4], "big"), 4
        elif length == 127:
            length, head = int.from_bytes(stream[at + 2:at + 10], "big"), 10
        head += 4 if second & 0x80 else 0
        end = at + head + length
        if end > len(stream):
            break
        if opcode == 0x8:
            return end
        at = end
    return len(stream)


def feed(scanner, stream: bytes, cuts: list[int]) -> tuple[int, list[int]]:
    """Feed ``stream`` in chunks cut at ``cuts``; (bytes passed on, per-chunk answers)."""
    answers, passed, start = [], 0, 0
    for end in [*sorted(set(c for c in cuts if 0 < c < len(stream))), len(stream)]:
        kept = scanner.scan(memoryview(stream)[start:end])
        answers.append(kept)
        passed += kept
        start = end
    return passed, answers


def test_everything_passes_without_a_close(core):
    stream = frame(0x1, b"hello") + frame(0x9, b"") + frame(0x2, b"x" * 300) + frame(0x1, b"y" * 70_000)
    scanner = core.CloseScanner()
    assert scanner.scan(stream) == len(stream)
    assert not scanner.done


def test_stops_at_the_end_of_the_first_close(core):
    """Data after a CLOSE frame (here a second CLOSE, Autobahn 7.1.2) is never passed on."""
    head = frame(0x1, b"hi") + frame(0x8, b"\x03\xe8bye")
    scanner = core.CloseScanner()
    assert scanner.scan(head + frame(0x8, b"\x03\xe8") + frame(0x1, b"after")) == len(head)
    assert scanner.done
    assert scanner.scan(frame(0x1, b"more")) == 0


def test_a_close_split_over_many_reads(core):
    """Header and payload arriving a byte at a time."""
    stream = frame(0x1, b"x" * 200) + frame(0x8, b"\x03\xe8" + b"r" * 50)
    scanner = core.CloseScanner()
    passed = sum(scanner.scan(stream[i:i + 1]) for i in range(len(stream)))
    assert passed == len(stream)
    assert scanner.done


def test_extended_lengths_are_skipped_not_read(core):
    """A frame declaring 2**40 bytes: what follows in the stream is payload, close-looking or not."""
    scanner = core.CloseScanner()
    stream = frame(0x2, b"", length=2**40) + frame(0x8, b"")
    assert scanner.scan(stream) == len(stream)
    assert not scanner.done


frames = st.builds(
    frame,
    st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA, 0x3, 0xF]),
    st.one_of(st.binary(max_size=130), st.integers(126, 70_000).map(lambda n: b"p" * n)),
    st.booleans(),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(frames, max_size=8), st.binary(max_size=12), st.lists(st.integers(0, 140_000), max_size=12))
def test_parity_and_correctness(parts, tail, cuts):
    """Random frames (and an unfinished tail) cut into random reads: both cores pass on exactly the
    bytes up to the first complete CLOSE frame (or all), with the same answer for every read."""
    stream = b"".join(parts) + tail
    results = [feed(module.CloseScanner(), stream, cuts) for module in MODULES]
    assert all(result == results[0] for result in results)
    assert results[0][0] == first_close_end(stream)
