"""What the property-based tests over bad input share: byte mutations, garbage values, checks.

Every reader must either read an input correctly or raise a ValueError whose message names
the file; nothing else (another exception type, a hang) is allowed. `expect_named_error`
runs a call under a time limit and returns its result, or None after such a ValueError.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

from hypothesis import strategies as st

# Texts a number field of a text format may hold instead of a number.
GARBAGE_NUMBERS = [
    "", " ", "nan", "NaN", "inf", "-inf", "Infinity", "1e400", "-1e400", "1e308", "-1e308", "abc",
    "0x10", "1,5", "12abc", "\u00e9", "\uff11\uff12", "--1", "1e", ".", "1_0", "\x00",
]  # fmt: skip
# JSON values a number field may hold instead of a number.
GARBAGE_JSON = [
    None, "", "12", "abc", [], [1], [[1, 2]], {}, {"x": 1}, True, False, float("nan"), float("inf"),
    -float("inf"), 10**400, -(10**400), 1e308, -1.0, -5, 0, 2**63, 1.5,
]  # fmt: skip

_MUTATIONS = ("flip", "truncate", "insert", "delete", "duplicate", "long_line", "non_utf8", "nul", "empty")


@st.composite
def mutated(draw, data: bytes, focus: int | None = None) -> bytes:
    """``data`` after 1-3 random mutations; with ``focus``, positions favour the first and
    the last ``focus`` bytes (where headers and a zip's directory are)."""
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(_MUTATIONS))
        region = draw(st.sampled_from(["all", "head", "tail"])) if focus else "all"
        low, high = 0, len(data)
        if region == "head":
            high = min(focus, len(data))
        elif region == "tail":
            low = max(len(data) - focus, 0)
        at = draw(st.integers(low, max(high, low + 1) - 1)) if data else 0
        if kind == "flip" and data:
            bit = 1 << draw(st.integers(0, 7))
            data = data[:at] + bytes([data[at] ^ bit]) + data[at + 1 :]
        elif kind == "truncate":
            data = data[:at]
        elif kind == "insert":
            data = data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 64)) :]
        elif kind == "duplicate":
            end = at + draw(st.integers(1, 256))
            data = data[:end] + data[at:end] + data[end:]
        elif kind == "long_line":
            data = data[:at] + draw(st.sampled_from([b"1", b"a", b" ", b"9."])) * 100_000 + data[at:]
        elif kind == "non_utf8":
            data = (
                data[:at] + draw(st.sampled_from([b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\x80"])) + data[at:]
            )
        elif kind == "nul":
            data = data[:at] + b"\x00" + data[at:]
        elif kind == "empty":
            data = b""
    return data


class Hang(AssertionError):
    """A reader ran past the time limit."""


@contextmanager
def time_limit(seconds: int):
    def alarm(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def expect_named_error(call: Callable[[], Any], *names: Any, seconds: int = 20) -> Any:
    """``call()``'s result, or None when it raised a ValueError naming one of ``names``.

    Any other exception propagates (the property fails), as does a ValueError naming none
    of the files, or a run past ``seconds``.
    """
    try:
        with time_limit(seconds):
            return call()
    except ValueError as error:
        message = str(error)
        assert any(str(name) in message for name in names), f"the error names no file: {message!r}"
        assert message.split(": ", 1)[-1].strip(), f"the error gives no reason: {message!r}"
        return None


def as_number(value: Any) -> float | None:
    """A JSON value as the float it stands for, or None when it is not a finite-able number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def parse_float(text: str) -> float | None:
    """Python's reading of a number text (what every text reader documents), None if none."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
