"""The config file (TOML, decoded into msgspec structs so that an error names its key) and flags."""

from __future__ import annotations

import math
import os
import tomllib
from pathlib import Path

import msgspec

from fleetmon.units import LOG_LEVELS, MAX_LIMIT, format_duration, parse_duration, parse_size
from fleetmon.wire import Thresholds
from fleetmon.workers import procfs
from fleetmon.workers.sampler import READERS


class ConfigError(ValueError):
    """Bad config: the message names the key. Exit code 2."""


class ThresholdsConfig(msgspec.Struct, forbid_unknown_fields=True):
    cpu_threshold: float | None = None
    memory_threshold: int | str | None = None
    open_files_threshold: int | None = None
    threshold_duration: float | str | None = None

    def __post_init__(self) -> None:
        if self.cpu_threshold is not None and not 0 <= self.cpu_threshold < math.inf:  # (nan fails it too)
            raise ValueError(f"cpu_threshold: must be a finite number, not negative: {self.cpu_threshold!r}")
        if self.open_files_threshold is not None and not 0 <= self.open_files_threshold <= MAX_LIMIT:
            raise ValueError(f"open_files_threshold: must be from 0 to {MAX_LIMIT}")
        if self.memory_threshold is not None:
            self.memory_threshold = _field("memory_threshold", parse_size, self.memory_threshold)
        if self.threshold_duration is not None:
            self.threshold_duration = _field("threshold_duration", parse_duration, self.threshold_duration)

    def to_wire(self) -> Thresholds:
        return Thresholds(
            cpu_threshold=self.cpu_threshold,
            memory_threshold=self.memory_threshold,  # type: ignore[arg-type]
            open_files_threshold=self.open_files_threshold,
            threshold_duration=self.threshold_duration,  # type: ignore[arg-type]
        )


class ThresholdSources(msgspec.Struct, forbid_unknown_fields=True):
    default: ThresholdsConfig = msgspec.field(default_factory=ThresholdsConfig)
    types: dict[str, ThresholdsConfig] = {}


class Config(msgspec.Struct, forbid_unknown_fields=True):
    state_dir: str | None = None
    workers: int = 0  # 0: the number of CPUs
    interval: float | str = 60.0
    history_size: int = 1440
    stall_timeout: float | str = 10.0
    alert_repeat: float | str = 600.0
    # Past this size alerts.jsonl is moved to alerts.jsonl.1 (the one before dropped) and started
    # again, so the two hold at most about twice this; 0: no bound.
    alerts_max_size: int | str = "64MiB"
    # The history and metadata of an agent removed from the registry are deleted this long after; 0: kept.
    keep_removed: float | str = "7d"
    http: str | int | None = None  # [HOST:]PORT; a bare port (also unquoted) binds 127.0.0.1
    log_level: str = "INFO"
    log_format: str = "text"
    thresholds: ThresholdSources = msgspec.field(default_factory=ThresholdSources)
    # How workers read a process: "procfs" (Linux: /proc directly, the fast path), "psutil", or
    # "auto" (procfs where /proc is mounted). Both give the same numbers, except that procfs can
    # count another user's open files on Linux 6.2+ (psutil records them as denied).
    reader: str = "auto"
    # For tests and diagnosis: "module:function" called as hook(agent_id, pid) before each sample.
    sampler_hook: str | None = None
    # For benchmarks: the writer appends one JSON line per persisted tick here (fleetmon/store/timing.py).
    timing_log: str | None = None

    def __post_init__(self) -> None:
        self.interval = _field("interval", parse_duration, self.interval)
        self.stall_timeout = _field("stall_timeout", parse_duration, self.stall_timeout)
        self.alert_repeat = _field("alert_repeat", parse_duration, self.alert_repeat)
        self.alerts_max_size = _field("alerts_max_size", parse_size, self.alerts_max_size)
        self.keep_removed = _field("keep_removed", parse_duration, self.keep_removed)
        if isinstance(self.http, int) and not isinstance(self.http, bool):
            self.http = str(self.http)
        self.validate()

    def validate(self) -> None:
        if self.workers < 0 or self.workers > 1024:
            raise ValueError("workers: must be between 1 and 1024 (0 = number of CPUs)")
        if self.interval <= 0:  # type: ignore[operator]
            raise ValueError("interval: must be positive")
        if self.stall_timeout <= 0:  # type: ignore[operator]
            raise ValueError("stall_timeout: must be positive")
        if 0 < self.alerts_max_size < 1024:  # type: ignore[operator]
            raise ValueError("alerts_max_size: must be 0 (no bound) or at least 1KiB")
        if not 1 <= self.history_size <= 10_000_000:
            raise ValueError("history_size: must be between 1 and 10000000")
        if self.reader not in READERS:
            raise ValueError(f"reader: must be one of {', '.join(READERS)}")
        if self.reader == "procfs" and not procfs.available():
            raise ValueError("reader: procfs needs Linux with /proc mounted (use auto or psutil)")
        if self.log_format not in ("text", "json"):
            raise ValueError("log_format: must be text or json")
        if self.log_level.upper() not in LOG_LEVELS:
            raise ValueError("log_level: must be one of DEBUG, INFO, WARNING, ERROR")

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1

    def thresholds_for_type(self, agent_type: str) -> Thresholds | None:
        t = self.thresholds.types.get(agent_type)
        return t.to_wire() if t is not None else None

    def default_thresholds(self) -> Thresholds:
        return self.thresholds.default.to_wire()


def warn_short_keep(config: Config) -> None:
    """At start and at a reload: durations without a unit are seconds, so ``keep_removed = 7`` deletes
    a removed agent's history 7 s after its removal. Under an hour, say so."""
    keep = float(config.keep_removed)  # type: ignore[arg-type]
    if 0 < keep < 3600:
        from loguru import logger

        logger.warning(
            "keep_removed is {}: an agent's history and metadata are deleted {} after it leaves the registry",
            format_duration(keep), format_duration(keep),
        )


def load(path: Path | None, overrides: dict | None = None) -> Config:
    """Read the TOML file (if any), apply flag overrides, validate. Raises ConfigError naming the key."""
    data: dict = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    where = f"config file {path}" if path else "config"
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    # Convert each [thresholds.types.<type>] table on its own so that an error names the type.
    types = {}
    raw_thresholds = data.get("thresholds")
    if isinstance(raw_thresholds, dict) and isinstance(raw_thresholds.get("types"), dict):
        raw_thresholds = dict(raw_thresholds)
        for name, table in raw_thresholds.pop("types").items():
            try:
                types[name] = msgspec.convert(table, ThresholdsConfig, strict=False)
            except msgspec.ValidationError as exc:
                raise ConfigError(f"{where}: {_name_key(str(exc), f'thresholds.types.{name}')}") from None
        data = {**data, "thresholds": raw_thresholds}
    try:
        config = msgspec.convert(data, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {_name_key(str(exc))}") from None
    config.thresholds.types.update(types)
    return config


def _field(name: str, parse, value):
    try:
        return parse(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _name_key(message: str, prefix: str = "") -> str:
    """msgspec says ``... - at `$.thresholds.default```; a post-init check says ``key: ...``.
    Lead with the full dotted key."""
    text, sep, where = message.rpartition(" - at `$")
    path = where.rstrip("`").lstrip(".") if sep else ""
    if not sep:
        text = message
    inner, colon, rest = text.partition(": ")
    if colon and " " not in inner:
        path = f"{path}.{inner}" if path else inner
        text = rest
    full = ".".join(p for p in (prefix, path) if p)
    prefix_unknown = "Object contains unknown field `"
    if text.startswith(prefix_unknown):  # (msgspec's words for a key the config does not have)
        unknown = text.removeprefix(prefix_unknown).removesuffix("`")
        import difflib

        known = {f.name for f in msgspec.structs.fields(Config)} | {f.name for f in msgspec.structs.fields(ThresholdsConfig)}
        close = [k for k in sorted(known) if k.startswith(unknown + "_")] or difflib.get_close_matches(unknown, sorted(known), n=1)
        key = f"{full}.{unknown}" if full else unknown
        return f"{key}: unknown key" + (f" (did you mean {close[0]}?)" if close else "")
    return f"{full}: {text}" if full else text
