"""Parsing and formatting of the values users type and read: durations, sizes, ids, timestamps."""

from __future__ import annotations

import decimal
import math
import re
from datetime import UTC, datetime

AGENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# ASCII digits only (``\d`` also takes other scripts' digits, which ``float`` then reads).
_DURATION_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

_SIZE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B|B)?\s*", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")  # loguru's, for log_level
MAX_LIMIT = 2**63 - 1  # the largest size or count a limit may be (a signed 64-bit int on the wire and on disk)
MAX_DURATION = 100 * 365 * 86400.0  # 100 years: longer is a typo (and past what sleeps, timeouts and dates take)


_WHOLE_RE = re.compile(r"\s*\+?[0-9]+\s*")
_WHOLE_RE_B = re.compile(rb"\s*\+?[0-9]+\s*")


def whole_number(text: str | bytes) -> int:
    """A whole number written as pids and counts are: ASCII digits, an optional +, blanks around.
    ``int`` also takes ``1_000`` and other scripts' digits, which no pidfile means."""
    if not (_WHOLE_RE_B if isinstance(text, bytes) else _WHOLE_RE).fullmatch(text):
        raise ValueError(f"not a whole number: {text!r}")
    return int(text)


def _shown(value) -> str:
    """``value`` for an error message: its repr, cut short (a message stays one readable line)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:36] + "...'"


def parse_duration(value: str | int | float) -> float:
    """``250ms``, ``30s``, ``5m``, ``1h``, ``1d`` or plain seconds -> seconds (float, >= 0)."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION_RE.fullmatch(value)
        if not m:
            raise ValueError(f"invalid duration {_shown(value)} (use e.g. 250ms, 30s, 5m, 1h, 1d)")
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if not 0 <= seconds <= MAX_DURATION:  # (nan and inf, which float() makes of 400 nines, fail it too)
        raise ValueError(f"invalid duration {_shown(value)}: must be from 0 to 36500d")
    return seconds


def parse_size(value: str | int | float) -> int:
    """``512MiB``, ``1GiB``, ``100MB`` or plain bytes -> bytes (int, >= 0)."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}")
    if isinstance(value, int | float):
        size = value
    else:
        m = _SIZE_RE.fullmatch(value)
        if not m:
            raise ValueError(f"invalid size {_shown(value)} (use e.g. 512MiB, 1GiB, 100MB or bytes)")
        # Exact (a float has 53 bits: "9007199254740993" was read as ...992, and the largest limit
        # itself, 2**63 - 1, as 2**63, past it). A Decimal, not a Fraction: that goes through int(),
        # which refuses more than 4300 digits with a message that names neither the value nor the
        # bound. The precision holds the product whole, however many digits (linear in them).
        number = m.group(1)
        with decimal.localcontext() as ctx:
            ctx.prec = len(number) + 20  # (a unit has at most 13 digits)
            size = decimal.Decimal(number) * _SIZE_UNITS[(m.group(2) or "b").lower()]
    if not 0 <= size <= MAX_LIMIT:  # (nan and inf fail it too)
        raise ValueError(f"invalid size {_shown(value)}: must be from 0 to {MAX_LIMIT} bytes")
    return int(size)


def check_agent_id(agent_id: str) -> str:
    if not isinstance(agent_id, str) or not AGENT_ID_RE.fullmatch(agent_id):  # not match: "$" also matches before a final newline
        raise ValueError(
            f"invalid agent id {agent_id!r}: use 1-128 of A-Z a-z 0-9 . _ -, starting with a letter or digit"
        )
    return agent_id


def check_agent_type(agent_type: str) -> str:
    """1-128 printable characters (control characters would reach terminals through status and
    top, and break their rows)."""
    if not isinstance(agent_type, str) or not agent_type or len(agent_type) > 128 or not agent_type.isprintable():
        raise ValueError(f"type must be 1-128 printable characters, not {agent_type!r}")
    return agent_type


_DIGITS3 = [f"{i:03d}" for i in range(1000)]
_SECONDS: dict[int, str] = {}  # "YYYY-MM-DDTHH:MM:SS" of recent whole seconds (the writer formats many per tick)


def rfc3339(ts: float | None) -> str | None:
    """Epoch seconds -> RFC 3339 UTC with microseconds, e.g. ``2026-11-28T23:50:10.123456Z``.

    Same result as ``datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")`` (microseconds
    rounded half to even), about five times faster: the whole-second part is cached."""
    if ts is None:
        return None
    frac, whole = math.modf(ts)
    sec, us = int(whole), round(frac * 1e6)
    if us >= 1_000_000:
        sec, us = sec + 1, us - 1_000_000
    elif us < 0:
        sec, us = sec - 1, us + 1_000_000
    head = _SECONDS.get(sec)
    if head is None:
        if len(_SECONDS) >= 4096:
            _SECONDS.clear()
        head = _SECONDS[sec] = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{head}.{_DIGITS3[us // 1000]}{_DIGITS3[us % 1000]}Z"  # twice as fast as {us:06d}


def parse_rfc3339(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def format_duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:.0f}{unit}"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{seconds / 60:.1f}m"
    return f"{seconds:.3g}s"


def format_size(n: int | float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)
