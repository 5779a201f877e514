"""Opt-in per-tick timing for benchmarks (config ``timing_log = "/path/ticks.jsonl"``; off by default).

The writer appends one JSON line per tick once every worker's batch for it (or a later one) has been
persisted: ``{"tick", "tick_wall", "persisted", "samples", "samples_total"}`` where ``tick_wall`` is
when the supervisor sent the tick, ``persisted`` when the writer finished the flush that covered it,
``samples`` how many samples were stamped with that tick (a worker that coalesced a tick it was too
busy for contributes none), and ``samples_total`` the writer's running count. ``benchmarks/fleet.py``
derives tick latency, missed ticks and throughput from it.
"""

from __future__ import annotations

import os

import msgspec


class TickLine(msgspec.Struct):
    tick: int
    tick_wall: float
    persisted: float
    samples: int
    samples_total: int


class TickTiming:
    def __init__(self, path: str):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self.walls: dict[int, float] = {}
        self.samples: dict[int, int] = {}
        self.done = 0  # highest tick written
        self._encoder = msgspec.json.Encoder()

    def on_tick(self, tick: int, wall: float) -> None:
        self.walls.setdefault(tick, wall)

    def on_batch(self, tick: int, samples: int) -> None:
        self.samples[tick] = self.samples.get(tick, 0) + samples

    def on_flush(self, complete: int, now: float, samples_total: int) -> None:
        """Every tick up to ``complete`` is persisted: write the lines not yet written."""
        if complete <= self.done:
            return
        start = self.done + 1 if self.done else min(self.walls, default=complete)
        lines = [
            self._encoder.encode(TickLine(t, self.walls.get(t, 0.0), now, self.samples.pop(t, 0), samples_total)) + b"\n"
            for t in range(start, complete + 1)
        ]
        self.done = complete
        self.walls = {t: w for t, w in self.walls.items() if t > complete}
        self.samples = {t: n for t, n in self.samples.items() if t > complete}
        os.write(self.fd, b"".join(lines))

    def close(self) -> None:
        os.close(self.fd)
