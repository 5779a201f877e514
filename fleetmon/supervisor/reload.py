"""SIGHUP: reload the config file and the registry without a restart.

The file is read again with the same command-line flags applied over it (flags still win). An
invalid file is refused with one ERROR and the running config is kept whole. What a running daemon
can change, it applies, and it logs every change by key:

- ``thresholds.*`` and ``alert_repeat``: sent to the writer (``wire.ConfigUpdate``), which resolves
  every agent's limits again; the next sample is judged by the new ones;
- ``alerts_max_size`` and ``keep_removed``: sent to the writer the same way, for its next append to
  alerts.jsonl and its next look for removed agents to forget;
- ``interval``: the next tick comes no later than one new interval from now;
- ``workers``: the pool grows or shrinks (new workers are started, surplus ones drained and stopped)
  and the agents are resharded;
- ``stall_timeout``: read by the supervisor at every check;
- ``log_level``: the supervisor's, and sent to the workers and the writer (``wire.LogLevel``); a
  child started later inherits it.

Every other key (``state_dir``, ``history_size``, ``http``, ``log_format`` ...) needs a restart: a
change is logged as a WARNING and the running value kept.
"""

from __future__ import annotations

import time

from loguru import logger

from fleetmon import logs, wire
from fleetmon.supervisor import children
from fleetmon.supervisor.config import Config, ConfigError, load, warn_short_keep
from fleetmon.supervisor.registry import registry_changes
from fleetmon.units import format_duration, format_size

RELOADABLE = (
    "workers", "interval", "stall_timeout", "alert_repeat", "thresholds", "log_level", "alerts_max_size", "keep_removed",
)
DURATIONS = ("interval", "stall_timeout", "alert_repeat", "keep_removed")
THRESHOLD_KEYS = ("cpu_threshold", "memory_threshold", "open_files_threshold", "threshold_duration")
STOP_GRACE = 5.0  # seconds a surplus worker gets to finish its tick before it is terminated


def handle_hup(arbiter) -> None:
    notifier = getattr(arbiter, "notifier", None)
    if notifier is not None:
        notifier.reloading()
    try:
        if arbiter.config_path is None:
            logger.info("SIGHUP: no config file (--config): rescanning the registry")
        else:
            reload_config(arbiter)
        rescan_registry(arbiter)
        arbiter._tell_writer(arbiter._daemon_info())
    finally:
        if notifier is not None:
            notifier.reloaded(arbiter)


def reload_config(arbiter) -> bool:
    """Read the config file again and apply what changed. False if it was refused."""
    path = arbiter.config_path
    try:
        new = load(path, getattr(arbiter, "overrides", None))
    except ConfigError as exc:
        logger.error("SIGHUP: new config refused, keeping the running one: {}", exc)
        return False
    if new.http:
        # Checked as `fleetmon run` checks it: kept until a restart, but the restart would refuse it
        # (exit 2, which systemd's RestartPreventExitStatus=2 does not retry).
        from fleetmon.supervisor.httpaddr import parse_http

        try:
            parse_http(str(new.http))
        except ValueError as exc:
            logger.error("SIGHUP: new config refused, keeping the running one: config file {}: http: {}", path, exc)
            return False
    old: Config = arbiter.config
    for key in restart_only():
        if getattr(new, key) != getattr(old, key):
            logger.warning(
                "SIGHUP: {} changed ({} -> {}) but needs a restart: keeping {}",
                key, _show(key, getattr(old, key)), _show(key, getattr(new, key)), _show(key, getattr(old, key)),
            )
            setattr(new, key, getattr(old, key))
    changed = config_changes(old, new)
    if not changed:
        logger.info("SIGHUP: config file {} reloaded: nothing changed", path)
        return True
    summary = "SIGHUP: config file {} reloaded: {}".format(
        path, "; ".join(f"{key} {_show(key, a)} -> {_show(key, b)}" for key, a, b in changed)
    )
    keys = {key for key, _, _ in changed}
    if "log_level" in keys:  # the summary at INFO, under whichever of the two levels shows it
        logs.set_level(new.log_level, summary)
    else:
        logger.info(summary)
    arbiter.config = new
    if keys & {"alert_repeat", "alerts_max_size", "keep_removed"} or any(k.startswith("thresholds.") for k in keys):
        arbiter._tell_writer(
            wire.ConfigUpdate(
                new.default_thresholds(),
                {name: t.to_wire() for name, t in new.thresholds.types.items()},
                float(new.alert_repeat),
                int(new.alerts_max_size),
                float(new.keep_removed),
            )
        )
    if "keep_removed" in keys:
        warn_short_keep(new)
    if "interval" in keys:
        arbiter.reschedule = time.monotonic() + float(new.interval)
    if "log_level" in keys:
        msg = wire.LogLevel(new.log_level.upper())
        for w in arbiter.workers + [arbiter.quarantine_worker]:
            arbiter._send(w, msg)
        arbiter._tell_writer(msg)
    if new.worker_count != len(arbiter.workers):
        resize_pool(arbiter, new.worker_count)
    return True


def restart_only() -> list[str]:
    """Config keys a running daemon cannot change."""
    return [key for key in Config.__struct_fields__ if key not in RELOADABLE]


def config_changes(old: Config, new: Config) -> list[tuple[str, object, object]]:
    """Every reloadable setting that differs, as (dotted key, old, new), in a stable order."""
    out: list[tuple[str, object, object]] = []
    if old.worker_count != new.worker_count:
        out.append(("workers", old.worker_count, new.worker_count))
    if old.log_level.upper() != new.log_level.upper():
        out.append(("log_level", old.log_level.upper(), new.log_level.upper()))
    for key in DURATIONS:
        a, b = float(getattr(old, key)), float(getattr(new, key))
        if a != b:
            out.append((key, a, b))
    if old.alerts_max_size != new.alerts_max_size:
        out.append(("alerts_max_size", old.alerts_max_size, new.alerts_max_size))
    a_t, b_t = old.thresholds, new.thresholds
    for key in THRESHOLD_KEYS:
        a, b = getattr(a_t.default, key), getattr(b_t.default, key)
        if a != b:
            out.append((f"thresholds.default.{key}", a, b))
    for name in sorted(set(a_t.types) | set(b_t.types)):
        ta, tb = a_t.types.get(name), b_t.types.get(name)
        for key in THRESHOLD_KEYS:
            a = getattr(ta, key) if ta is not None else None
            b = getattr(tb, key) if tb is not None else None
            if a != b:
                out.append((f"thresholds.types.{name}.{key}", a, b))
    return out


def _show(key: str, value) -> str:
    if value is None:
        return "unset"
    last = key.rsplit(".", 1)[-1]
    if last in DURATIONS or last == "threshold_duration":
        return format_duration(float(value))
    if last == "alerts_max_size":
        return format_size(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def rescan_registry(arbiter) -> None:
    before = arbiter.registry.entries
    if arbiter.registry.scan(force=True):
        arbiter._reshard(sample_new=arbiter.between_ticks())  # (`agents add` then a reload: as without it)
        arbiter._tell_writer(arbiter._registry_msg())
        logger.info("SIGHUP: registry rescanned: {}", registry_changes(before, arbiter.registry.entries))
    else:
        logger.info("SIGHUP: registry rescanned: unchanged, {} agents", len(arbiter.registry.entries))


def resize_pool(arbiter, n: int) -> None:
    """Grow or shrink the pool to ``n`` workers and reshard the agents over it."""
    current = len(arbiter.workers)
    if n > current:
        fresh = [children.Child(f"worker-{i}", i) for i in range(current, n)]
        arbiter.workers.extend(fresh)
        arbiter._reshard()
        for w in fresh:
            arbiter._start_worker(w)
        logger.info("workers: started {} ({} in the pool)", ", ".join(f"{w.name} (pid {w.pid})" for w in fresh), n)
        return
    surplus = arbiter.workers[n:]
    del arbiter.workers[n:]
    for w in surplus:
        arbiter._send(w, wire.Stop())
        arbiter.shards.pop(w.index, None)
        arbiter.sent_tick.pop(w.index, None)
        arbiter.busy_since.pop(w.index, None)
    for w in surplus:
        arbiter.sent_shards.pop(w.index, None)
    arbiter._reshard()  # the remaining workers take over the surplus workers' agents at once
    arbiter.abandoned.extend(_stop_workers(surplus))
    logger.info("workers: stopped {} ({} in the pool)", ", ".join(w.name for w in surplus), n)


def _stop_workers(surplus: list[children.Child]) -> list:
    """Stop them; returns those left behind stuck in the kernel (for the arbiter to reap)."""
    left = children.drain(surplus, STOP_GRACE)
    for w in surplus:
        w.reap()
    return left
