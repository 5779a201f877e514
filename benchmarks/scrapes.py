"""Does a storm of scrapers slow persisting?

The HTTP endpoint runs in threads of the writer process, so every scrape takes the writer's
interpreter for a while. This runs the real daemon (``--http``) on a real fleet of N idle processes
and measures two windows of the same run, one after the other:

- **quiet**: no client but a ``/healthz`` probe once a second (the baseline);
- **storm**: S threads looping ``GET /metrics`` as Prometheus asks for it (OpenMetrics) and P threads
  looping ``GET /api/status``, plus the probe.

For each window: tick latency (tick sent to the flush that persisted it) p50/p99/max, ticks missed
(a tick without every agent's sample), writer CPU (share of one CPU), requests served per second and
their p50 latency, how many got 503 (the request bound), and what ``/healthz`` answered. The storm's
tick p99 over the quiet one's is the ratio to read: near 1, scrapes do not hold persisting back.

    python -m benchmarks.scrapes                          # 3,000 agents, 30 + 10 clients, 30 s each
    python -m benchmarks.scrapes --agents 10000 --scrapers 60 --pollers 0

Prints a table and writes ``benchmarks/results/scrapes-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks import harness as H

OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scrapes", description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=3000, help="idle processes to watch (default 3000)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--interval", type=float, default=1.0, help="seconds between ticks (default 1)")
    p.add_argument("--scrapers", type=int, default=30, help="threads looping GET /metrics (OpenMetrics)")
    p.add_argument("--pollers", type=int, default=10, help="threads looping GET /api/status")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of each window (default 30)")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds after the first tick before measuring")
    p.add_argument("--out", type=Path, help="write the JSON here instead of benchmarks/results/")
    return p.parse_args(argv)


def _get(url: str, headers: dict | None = None, timeout: float = 60.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()
    except (OSError, ValueError):
        return 0, b""


class Clients:
    """Threads looping one request each until stopped: how many were served, in how long, how many 503."""

    def __init__(self, url: str, threads: int, headers: dict | None = None):
        self.times: list[float] = []
        self.busy = 0
        self.failed = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, args=(url, headers), daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _loop(self, url: str, headers: dict | None) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            code, _ = _get(url, headers)
            with self._lock:
                if code == 200:
                    self.times.append(time.monotonic() - t0)
                elif code == 503:
                    self.busy += 1
                else:
                    self.failed += 1

    def stop(self) -> dict:
        self._stop.set()
        for t in self._threads:
            t.join(120)
        return {"served": len(self.times), "p50_s": H.percentile(self.times, 50), "busy_503": self.busy, "failed": self.failed}


def window(d: H.DaemonRun, base: str, label: str, seconds: float, scrapers: int, pollers: int, n: int, progress) -> dict:
    """One measured window: clients started, ``/healthz`` probed once a second, ticks collected."""
    d.poll_ticks()
    first_tick = d.ticks[-1]["tick"] if d.ticks else 0
    cpu0, t0 = d.cpu_by_role(), time.monotonic()
    metrics = Clients(f"{base}/metrics", scrapers, OPENMETRICS) if scrapers else None
    status = Clients(f"{base}/api/status", pollers) if pollers else None
    health: dict[int, int] = {}
    lags: list[int] = []
    while time.monotonic() - t0 < seconds:
        code, body = _get(f"{base}/healthz", timeout=10)
        health[code] = health.get(code, 0) + 1
        try:
            h = json.loads(body)
            lags.append((h.get("tick") or 0) - (h.get("persisted_tick") or 0))
        except ValueError:
            pass
        d.poll_ticks()
        progress(label, time.monotonic() - t0, seconds)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - t0) % 1.0))
    clients = {"metrics": metrics.stop() if metrics else None, "status": status.stop() if status else None}
    elapsed = time.monotonic() - t0
    cpu1 = d.cpu_by_role()
    time.sleep(2.0)  # the window's last ticks persist
    d.poll_ticks()
    ticks = [t for t in d.ticks if t["tick"] > first_tick and t["tick_wall"] and t["tick_wall"] <= time.time() - 2.0]
    latencies = [t["persisted"] - t["tick_wall"] for t in ticks]
    return {
        "window": label,
        "seconds": round(elapsed, 1),
        "scrapers": scrapers,
        "pollers": pollers,
        "ticks": len(ticks),
        "tick_latency_p50_s": H.percentile(latencies, 50),
        "tick_latency_p99_s": H.percentile(latencies, 99),
        "tick_latency_max_s": max(latencies, default=None),
        "missed_ticks": sum(1 for t in ticks if t["samples"] < n),
        "max_lag_ticks": max(lags, default=None),
        "writer_cpu": round((cpu1["writer"] - cpu0["writer"]) / elapsed, 3),
        "healthz": {str(k): v for k, v in sorted(health.items())},
        "metrics": clients["metrics"],
        "status": clients["status"],
    }


def run(args: argparse.Namespace) -> dict:
    console = Console(stderr=True)
    workdir = Path(tempfile.mkdtemp(prefix="fleetmon-scrapes-", dir=H.default_workdir()))
    fleet = H.Fleet()
    d = None
    try:
        console.print(f"spawning {args.agents} idle processes ...")
        pids = fleet.spawn(args.agents)
        state = workdir / "state"
        H.write_registry(state, pids)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        d = H.DaemonRun(state, args.workers, args.interval, extra_config=f'http = "127.0.0.1:{port}"\n' + H.THRESHOLDS_CONFIG)
        deadline = time.monotonic() + 120 + args.agents / 50
        while not (d.poll_ticks() or d.ticks) or _get(f"{base}/healthz", timeout=5)[0] != 200:
            if not d.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not come up:\n{d.log_tail()}")
            time.sleep(0.2)
        console.print(f"warming up {args.warmup:g}s ...")
        time.sleep(args.warmup)

        def progress(label: str, done: float, total: float) -> None:
            console.print(f"  {label}: {done:4.0f}/{total:g}s, tick {d.ticks[-1]['tick'] if d.ticks else 0}", end="\r")

        windows = [
            window(d, base, "quiet", args.duration, 0, 0, args.agents, progress),
            window(d, base, "storm", args.duration, args.scrapers, args.pollers, args.agents, progress),
        ]
        console.print()
    finally:
        with H.cleanup():
            if d is not None:
                d.stop()
            fleet.stop()
            shutil.rmtree(workdir, ignore_errors=True)
    quiet, storm = windows
    return {
        "benchmark": "scrapes",
        "command": "python -m benchmarks.scrapes " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out" and v is not None
        ),
        "machine": H.machine(),
        "params": {k: v for k, v in vars(args).items() if k != "out"},
        "windows": windows,
        "storm_over_quiet_tick_p99": H.ratio(storm["tick_latency_p99_s"], quiet["tick_latency_p99_s"]),
    }


def table(result: dict) -> Table:
    p = result["params"]
    t = Table(title=f"{p['agents']} agents at {p['interval']:g}s: a quiet window, then {p['scrapers']} OpenMetrics "
                    f"scrapers and {p['pollers']} /api/status pollers")
    for col in ("window", "tick p50", "tick p99", "tick max", "missed", "max lag", "writer CPU", "/metrics served",
                "/metrics p50", "/api/status served", "/api/status p50", "503", "/healthz"):
        t.add_column(col, justify="left" if col in ("window", "/healthz") else "right")
    for w in result["windows"]:
        m, s = w["metrics"] or {}, w["status"] or {}
        t.add_row(
            w["window"], H.fmt(w["tick_latency_p50_s"], ".3f", "s"), H.fmt(w["tick_latency_p99_s"], ".3f", "s"),
            H.fmt(w["tick_latency_max_s"], ".3f", "s"), f"{w['missed_ticks']}/{w['ticks']}", str(w["max_lag_ticks"]),
            f"{w['writer_cpu'] * 100:.0f}%", str(m.get("served", "-")), H.fmt(m.get("p50_s"), ".3f", "s"),
            str(s.get("served", "-")), H.fmt(s.get("p50_s"), ".3f", "s"), str(m.get("busy_503", 0) + s.get("busy_503", 0)),
            " ".join(f"{k}x{v}" for k, v in w["healthz"].items()),
        )
    t.caption = (f"storm tick p99 / quiet tick p99: {H.fmt(result['storm_over_quiet_tick_p99'], '.2f')} "
                 "(near 1: scrapes do not hold persisting back); max lag: daemon tick minus persisted tick at the probes")
    return t


main = H.entry_point("scrapes", parse_args, run, table, width=170)

if __name__ == "__main__":
    H.run_script(main)
