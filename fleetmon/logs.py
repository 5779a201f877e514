"""Logging: loguru, configured once at start, to stderr, as human text or one JSON object per line."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import msgspec
from loguru import logger

_encoder = msgspec.json.Encoder()


def _json_sink(message) -> None:
    record = message.record
    line = {
        "time": record["time"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "level": record["level"].name,
        "message": record["message"],
        "pid": record["process"].id,
    }
    for key, value in record["extra"].items():
        line.setdefault(key, value if isinstance(value, str | int | float | bool | type(None)) else str(value))
    if record["exception"] is not None:
        line["exception"] = str(record["exception"])
    sys.stderr.write(_encoder.encode(line).decode() + "\n")
    sys.stderr.flush()


TEXT_FORMAT = "{time:YYYY-MM-DDTHH:mm:ss.SSS!UTC}Z {level: <7} {message}"


def configure(level: str = "INFO", fmt: str = "text") -> None:
    logger.remove()
    level = level.upper()
    if fmt == "json":
        logger.add(_json_sink, level=level, format="{message}", backtrace=False, diagnose=False)
    else:
        logger.add(sys.stderr, level=level, format=TEXT_FORMAT, backtrace=False, diagnose=False, colorize=False)


def now_utc() -> datetime:
    return datetime.now(UTC)
