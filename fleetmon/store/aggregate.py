"""History windows and epoch-aligned bucket means."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from fleetmon.store.ring import Point


def window(points: Iterable[Point], since: float, now: float) -> list[Point]:
    """Points with ``timestamp >= now - since``, oldest first."""
    start = now - since
    return sorted((p for p in points if p.timestamp >= start), key=lambda p: p.timestamp)


def bucket_start(ts: float, every: float) -> float:
    """Start of the ``every``-wide bucket holding ``ts``, aligned to multiples of ``every`` since the
    Unix epoch (Go's ``time.Truncate``). Counted in whole microseconds, the precision timestamps are
    shown with: in binary floats, ``floor(ts / every)`` put a point shown at ``...59.600000`` into
    the bucket of ``...59.500000`` at ``every`` = 0.1 s (``every`` under 1 us counts as 1 us)."""
    us = round(ts * 1e6)
    return (us - us % max(1, round(every * 1e6))) / 1e6


def aggregate(points: Sequence[Point], every: float) -> list[Point]:
    """One point per non-empty bucket, stamped with the bucket start; each metric is the mean of its
    non-null values as a float, or None when all are null."""
    if every <= 0:
        raise ValueError("every must be positive")
    buckets: dict[float, list[Point]] = {}
    for p in points:
        buckets.setdefault(bucket_start(p.timestamp, every), []).append(p)
    out = []
    for start in sorted(buckets):
        group = buckets[start]
        means = []
        for i in range(1, len(Point._fields)):
            values = [p[i] for p in group if p[i] is not None]
            means.append(math.fsum(values) / len(values) if values else None)
        out.append(Point(start, *means))
    return out
