"""Pure decisions of the supervisor: which worker holds an agent, how long a failing child waits."""

from __future__ import annotations

import zlib

BOOT_GRACE = 10.0  # a child that dies sooner than this after starting counts as failing to boot
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0


def shard_for(agent_id: str, workers: int) -> int:
    """Stable: the same id maps to the same worker for as long as the pool size is unchanged."""
    return zlib.crc32(agent_id.encode()) % workers


def restart_delay(failures: int) -> float:
    """Delay before restarting a child that has failed to boot ``failures`` times in a row."""
    if failures <= 0:
        return 0.0
    return min(BACKOFF_FIRST * 2 ** (failures - 1), BACKOFF_MAX)


def next_failures(failures: int, lived: float) -> int:
    """Consecutive boot failures after a child that lived ``lived`` seconds died."""
    return failures + 1 if lived < BOOT_GRACE else 0


def quarantine_delay(strikes: int, interval: float) -> float:
    """How long a quarantined agent waits before it is tried again: doubling, from one interval to
    64 intervals (capped at one hour)."""
    return min(interval * 2 ** max(0, strikes - 1), max(interval, min(64 * interval, 3600.0)))
