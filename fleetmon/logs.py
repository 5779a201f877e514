"""Logging: loguru, configured once at start, to stderr, as human text or one JSON object per line."""

from __future__ import annotations

import io
import os
import sys
import traceback
from datetime import UTC, datetime

import msgspec
from loguru import logger

_encoder = msgspec.json.Encoder()


def _printable(value):
    """A str with lone surrogates (bytes that are not UTF-8 in a file name or argument, decoded with
    surrogateescape) as the bytes they stand for, backslash-escaped: JSON cannot carry them."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return value


def _write_line(line: dict) -> None:
    """One JSON object, one ``write(2)`` to fd 2: lines from several processes never interleave."""
    try:
        data = _encoder.encode(line) + b"\n"
    except UnicodeEncodeError:  # a path with bytes that are not UTF-8: the line is kept, escaped
        data = _encoder.encode({_printable(k): _printable(v) for k, v in line.items()}) + b"\n"
    while data:
        try:
            data = data[os.write(2, data) :]
        except InterruptedError:
            continue
        except OSError:
            return  # stderr is gone: nowhere to log that


def _json_sink(message) -> None:
    record = message.record
    line = {
        "time": record["time"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "level": record["level"].name,
        "message": record["message"],
        "process": record["process"].id,  # the logging process; a bound ``pid`` is an agent's
    }
    for key, value in record["extra"].items():
        line.setdefault(key, value if isinstance(value, str | int | float | bool | type(None)) else str(value))
    exc = record["exception"]
    if exc is not None:
        line["exception"] = "".join(traceback.format_exception(exc.type, exc.value, exc.traceback))
    _write_line(line)


class _StderrAsJSON(io.TextIOBase):
    """``sys.stderr`` in JSON mode: whatever else writes there (a child's uncaught traceback, a
    warning, loguru's own error report) becomes JSON lines too, one per line of text."""

    def __init__(self, original):
        self.original = original  # restored if logging is configured again as text
        self._pending = ""

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return 2

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        self._pending += text
        while "\n" in self._pending:
            line, self._pending = self._pending.split("\n", 1)
            self._emit(line)
        return len(text)

    def flush(self) -> None:
        if self._pending:
            line, self._pending = self._pending, ""
            self._emit(line)

    def _emit(self, text: str) -> None:
        if text.strip():
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            _write_line({"time": now, "level": "ERROR", "message": text.rstrip(), "process": os.getpid(), "stream": "stderr"})


TEXT_FORMAT = "{time:YYYY-MM-DDTHH:mm:ss.SSS!UTC}Z {level: <7} {message}"


_level_no = 20  # INFO; set_level changes it, the sink's filter reads it


def _at_level(record) -> bool:
    return record["level"].no >= _level_no


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """One sink on stderr. Its level is a filter on ``_level_no`` (the sink itself takes every
    level), so that set_level changes it without removing a sink: a line another thread is logging
    meanwhile would go to a removed sink, and be lost."""
    global _level_no
    logger.remove()
    if isinstance(sys.stderr, _StderrAsJSON):
        sys.stderr.flush()
        sys.stderr = sys.stderr.original
    _level_no = logger.level(level.upper()).no
    common = {"level": "TRACE", "filter": _at_level, "backtrace": False, "diagnose": False}
    if fmt == "json":
        sys.stderr.flush()
        sys.stderr = _StderrAsJSON(sys.stderr)
        logger.add(_json_sink, format="{message}", **common)
    else:
        logger.add(sys.stderr, format=TEXT_FORMAT, colorize=False, **common)


def set_level(level: str, said: str | None = None) -> None:
    """Log at another level from now on (SIGHUP changed ``log_level``; each process sets its own).
    ``said``: a line about the change, logged at INFO under whichever of the two levels shows it
    (after the change when it is more verbose, before when it is quieter)."""
    global _level_no
    new = logger.level(level.upper()).no
    louder = new <= logger.level("INFO").no
    if said and not louder:
        logger.info(said)
    _level_no = new
    if said and louder:
        logger.info(said)


def now_utc() -> datetime:
    return datetime.now(UTC)
