"""What does the history cost at full size: 10,000 agents x 1440 points?

Builds a state dir with N agents (default 10,000) whose rings are prefilled with a full synthetic
history (1440 points each, one a minute, ending now), registered against N real idle processes, and
measures:

- bytes on disk (history rings, agents/*.json, status.json, everything), from st_blocks;
- start-up time: the real daemon started on that state dir, until its first tick is persisted
  (every ring is opened and its head found on the first sample);
- writer RSS and total RSS of the daemon at that size (peak while it runs);
- recovery time: the daemon killed with SIGKILL (its children follow it), started again, until its
  first tick is persisted; and that no agent lost a point (the newest record of each ring once the
  daemon was dead is still there, unchanged, after the recovery);
- persist cost per sample at history lengths 10 and 1440 (``Fleet.on_sample`` into real rings,
  in-process, interleaved rounds): must be flat, since a sample is one write in place;
- ``fleetmon history ID --since 1d --json`` latency for one agent, and ``fleetmon status --json``
  for all, through the real CLI (wall time, Python start-up included) and in-process.

Baseline: the persist cost at history length 10 is the reference for the one at 1440 (ratio ~1).

    python -m benchmarks.storage                       # 10,000 agents x 1440 points
    python -m benchmarks.storage --agents 2000 --history-size 1440 --ticks 5

Prints a table and writes ``benchmarks/results/storage-<time>.json`` (and ``storage-latest.json``).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from benchmarks import harness as H
from benchmarks.fleet import ring_points

console = Console(stderr=True)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def synthetic_ring(capacity: int, points: int, end: float, step: float = 60.0) -> bytes:
    """A whole ring file (header + records) holding ``points`` synthetic points, one every ``step``
    seconds, the newest at ``end``."""
    from fleetmon.store import ring as R

    body = bytearray(R._header(capacity))
    for i in range(1, points + 1):
        ts = end - (points - i) * step
        body += R.encode_record(i, R.Point(ts, 1.5 + i % 7, 50_000_000 + i, 900_000_000, 4096 * i, 8192 * i, 12, 3))
    body += bytes(R.RECORD_SIZE * (capacity + 1) - len(body))
    return bytes(body)


def prefill(state_dir: Path, ids: list[str], capacity: int, points: int, progress=None) -> None:
    """Write every agent's ring with a full synthetic history (same content for all agents), a page
    at a time like the writer's small writes leave it (one big write would leave large folios in the
    page cache, which make every later small write dearer: see fleetmon.store.fsutil.preallocate)."""
    from fleetmon.store.layout import StateDir

    state = StateDir(state_dir).create()
    data = synthetic_ring(capacity, points, time.time() - 60.0)
    for i, agent_id in enumerate(ids):
        fd = os.open(state.ring_file(agent_id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        for off in range(0, len(data), 4096):
            os.pwrite(fd, data[off : off + 4096], off)
        os.close(fd)
        if progress is not None and i % 200 == 0:
            progress(i + 1)


def records_by_seq(history_dir: Path, ids: list[str]) -> list[dict[int, float]]:
    """Each agent's valid ring records, as sequence number -> timestamp ({} if it has no ring)."""
    from fleetmon.store.ring import RECORD_SIZE, decode_records

    out = []
    for agent_id in ids:
        try:
            data = (history_dir / f"{agent_id}.ring").read_bytes()
        except FileNotFoundError:
            out.append({})
            continue
        out.append({seq: p.timestamp for seq, p in decode_records(memoryview(data)[RECORD_SIZE:])})
    return out


def newest_records(history_dir: Path, ids: list[str]) -> list[tuple[int, float] | None]:
    """Each agent's newest ring record as (sequence number, timestamp), None if it has none."""
    return [max(recs.items()) if recs else None for recs in records_by_seq(history_dir, ids)]


def disk_usage(path: Path) -> dict:
    """Allocated bytes (st_blocks) under ``path``, by top-level entry."""
    out: dict[str, int] = {}
    for entry in path.iterdir():
        total = 0
        if entry.is_dir():
            for root, _dirs, files in os.walk(entry):
                total += sum(os.lstat(os.path.join(root, f)).st_blocks * 512 for f in files)
        else:
            total = entry.lstat().st_blocks * 512
        out[entry.name] = total
    out["total"] = sum(out.values())
    return out


def wait_persisted(d: H.DaemonRun, ticks: int, timeout: float, on_tick=None) -> float:
    """Seconds until the daemon's ``ticks``-th tick line (counted from its start) appears."""
    start = time.monotonic()
    seen = 0
    while seen < ticks:
        if not d.alive():
            raise RuntimeError(f"daemon exited with {d.proc.returncode}:\n{d.log_tail()}")
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"no tick persisted within {timeout:.0f}s:\n{d.log_tail()}")
        seen += len(d.poll_ticks())
        d.sample_rss()
        if on_tick is not None:
            on_tick(seen)
        time.sleep(0.05)
    return time.monotonic() - start


def persist_cost(capacities: list[int], agents: int, rounds: int, repeats: int, workdir: Path) -> dict:
    """CPU per ``Fleet.on_sample`` (identity checks, ring write in place) into real rings of each
    capacity, the capacities measured in alternation; median of ``repeats``."""
    from fleetmon import wire
    from fleetmon.store.fleet import Fleet
    from fleetmon.store.ring import RingStore

    fleets = {}
    for cap in capacities:
        d = workdir / f"persist-{cap}"
        d.mkdir()
        fleet = Fleet(RingStore(d, cap, max_open=agents + 16), lambda e: None)
        fleet.set_registry(
            [wire.RegisteredAgent(f"p{i:05d}", "default", 1000 + i, None, wire.Thresholds()) for i in range(agents)], 0
        )
        fleets[cap] = fleet
    t0 = time.time()

    def batch(k: int) -> list[wire.Sample]:
        ts = t0 + k
        return [wire.Sample(f"p{i:05d}", 1000 + i, 1.7e9 + i, ts, 1.0, 10**7, 10**8, k, k, 4, 1) for i in range(agents)]

    for fleet in fleets.values():  # create the rings and fill them past one wrap of the small one
        for k in range(max(capacities[0], 12)):
            for s in batch(k):
                fleet.on_sample(s)
    per: dict[int, list[float]] = {cap: [] for cap in capacities}
    k = 1000
    for _ in range(repeats):
        for cap, fleet in fleets.items():
            samples = [batch(k + r) for r in range(rounds)]
            k += rounds
            c = _cpu()
            for b in samples:
                for s in b:
                    fleet.on_sample(s)
            per[cap].append((_cpu() - c) / (rounds * agents) * 1e6)
    for fleet in fleets.values():
        fleet.rings.close_all()
    med = {cap: statistics.median(v) for cap, v in per.items()}
    # The ratio from each pair of rounds measured back to back, then the median: the host's speed
    # drifts between repeats more than the two capacities differ.
    pairs = [b / a for a, b in zip(per[min(capacities)], per[max(capacities)], strict=True) if a > 0]
    return {
        "agents": agents,
        "rounds": rounds,
        "repeats": repeats,
        "cpu_per_sample_us": {str(cap): round(v, 2) for cap, v in med.items()},
        "runs_us": {str(cap): [round(x, 2) for x in v] for cap, v in per.items()},
        "ratio_longest_vs_shortest": round(statistics.median(pairs), 3) if pairs else None,
    }


def timed_cli(args: list[str], repeats: int) -> dict:
    walls, size = [], 0
    for _ in range(repeats):
        t = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "fleetmon", *args], capture_output=True, timeout=300, stdin=subprocess.DEVNULL
        )
        walls.append(time.perf_counter() - t)
        if proc.returncode != 0:
            raise RuntimeError(f"fleetmon {' '.join(args)} exited {proc.returncode}: {proc.stderr.decode()[-500:]}")
        size = len(proc.stdout)
    return {"median_s": round(statistics.median(walls), 4), "runs_s": [round(w, 4) for w in walls], "output_bytes": size}


def timed_call(fn, repeats: int) -> dict:
    walls = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t)
    return {"median_s": round(statistics.median(walls), 4), "runs_s": [round(w, 4) for w in walls]}


def run(args) -> dict:
    from fleetmon.store import queries
    from fleetmon.store.layout import StateDir

    workdir = Path(tempfile.mkdtemp(prefix="fleetmon-storage-", dir=args.workdir or H.default_workdir()))
    state_dir = workdir / "state"
    fleet = H.Fleet()
    daemons: list[H.DaemonRun] = []
    result: dict = {
        "benchmark": "storage",
        "command": "python -m benchmarks.storage " + " ".join(args.argv),
        "machine": H.machine(),
        "params": {
            "agents": args.agents,
            "history_size": args.history_size,
            "interval_s": args.interval,
            "workers": args.workers,
            "ticks": args.ticks,
        },
    }
    try:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console, transient=True
        ) as progress:
            task = progress.add_task(f"spawning {args.agents} processes", total=args.agents)
            pids = fleet.spawn(args.agents, progress=lambda i, total: progress.update(task, completed=i))
            ids = H.write_registry(state_dir, pids)
            result["file_create_us"] = H.file_create_us(workdir)
            progress.update(task, description=f"prefilling {args.agents} rings x {args.history_size} points", completed=0)
            t = time.perf_counter()
            prefill(state_dir, ids, args.history_size, args.history_size, lambda i: progress.update(task, completed=i))
            result["prefill_s"] = round(time.perf_counter() - t, 2)

            progress.update(task, description="start-up on the full history", completed=0, total=args.ticks)
            d = H.DaemonRun(state_dir, args.workers, args.interval, args.history_size)
            daemons.append(d)
            result["startup_s"] = round(wait_persisted(d, 1, 600), 2)
            wait_persisted(d, args.ticks - 1, 600, lambda n: progress.update(task, completed=n + 1))
            result["writer_rss_mb"] = round(H.mib(d.peak_writer_rss), 1)
            result["total_rss_mb"] = round(H.mib(d.peak_total_rss), 1)
            result["ticks_run"] = len(d.ticks)

            progress.update(task, description="SIGKILL and recovery", completed=0, total=None)
            d.tree()
            os.kill(d.pid, signal.SIGKILL)
            d.proc.wait()
            d.stop()  # reaps whatever of its tree is left, by pid
            # what is on disk once nothing writes any more: the points the recovery must keep
            before = ring_points(state_dir / "history", ids)
            at_kill = newest_records(state_dir / "history", ids)
            d2 = H.DaemonRun(state_dir, args.workers, args.interval, args.history_size)
            daemons.append(d2)
            result["recovery_s"] = round(wait_persisted(d2, 1, 600), 2)
            wait_persisted(d2, 2, 600)
            result["writer_rss_after_recovery_mb"] = round(H.mib(d2.peak_writer_rss), 1)
            d2.stop()
            after = ring_points(state_dir / "history", ids)
            kept = records_by_seq(state_dir / "history", ids)
            # lost: the newest record at the kill is gone or changed (a recovery that rolled the ring's
            # head back would reuse its sequence number: the highest one alone cannot tell)
            result["recovery_points_lost_agents"] = sum(
                1 for k, recs in zip(at_kill, kept, strict=True) if k is not None and recs.get(k[0]) != k[1]
            )
            result["recovery_agents_with_new_points"] = sum(1 for a, b in zip(before, after, strict=True) if b > a)

            result["disk_bytes"] = disk_usage(state_dir)
            result["disk_bytes_per_agent"] = {k: round(v / args.agents) for k, v in result["disk_bytes"].items()}

            progress.update(task, description="history and status latency")
            some = ids[len(ids) // 2]
            state = StateDir(state_dir)
            result["history_cli"] = timed_cli(["history", some, "--since", "1d", "--json", "--state-dir", str(state_dir)], 5)
            result["history_call"] = timed_call(lambda: queries.history(state, some, 86400.0), 5)
            result["history_points"] = len(queries.history(state, some, 86400.0).points)
            result["status_cli"] = timed_cli(["status", "--json", "--state-dir", str(state_dir)], 3)
            result["status_call"] = timed_call(lambda: queries.status(state), 3)

            progress.update(task, description="persist cost by history length")
            result["persist"] = persist_cost([10, args.history_size], args.persist_agents, args.persist_rounds, 9, workdir)
    finally:
        with H.cleanup():
            for d in daemons:
                d.stop()
            fleet.stop()
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
    return result


def table(r: dict) -> Table:
    t = Table(title=f"storage at {r['params']['agents']} agents x {r['params']['history_size']} points")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_column("note")
    mb = 2**20
    disk = r["disk_bytes"]
    rows = [
        (
            "bytes on disk, total",
            f"{disk['total'] / mb:.0f} MB",
            f"history {disk.get('history', 0) / mb:.0f} MB, "
            f"agents/ {disk.get('agents', 0) / mb:.1f} MB, status.json {disk.get('status.json', 0) / mb:.1f} MB",
        ),
        ("bytes on disk per agent", f"{r['disk_bytes_per_agent']['total'] / 1024:.1f} KiB", "ring: (1440+1) x 64 B"),
        ("writer RSS (peak)", f"{r['writer_rss_mb']:.0f} MB", "budget < 250 MB"),
        ("daemon total RSS (peak)", f"{r['total_rss_mb']:.0f} MB", "supervisor + workers + writer"),
        ("start-up to first persisted tick", f"{r['startup_s']:.1f} s", "every ring opened, head found"),
        ("recovery after SIGKILL", f"{r['recovery_s']:.1f} s", f"agents that lost points: {r['recovery_points_lost_agents']}"),
        ("persist cost, history 10", f"{r['persist']['cpu_per_sample_us']['10']:.2f} us/sample", "Fleet.on_sample, CPU"),
        (
            f"persist cost, history {r['params']['history_size']}",
            f"{r['persist']['cpu_per_sample_us'][str(r['params']['history_size'])]:.2f} us/sample",
            f"ratio {r['persist']['ratio_longest_vs_shortest']:.2f} (flat = 1.0)",
        ),
        (
            "history ID --since 1d --json (CLI)",
            f"{r['history_cli']['median_s'] * 1000:.0f} ms",
            f"{r['history_points']} points; in-process {r['history_call']['median_s'] * 1000:.1f} ms",
        ),
        (
            "status --json, all agents (CLI)",
            f"{r['status_cli']['median_s'] * 1000:.0f} ms",
            f"in-process {r['status_call']['median_s'] * 1000:.0f} ms",
        ),
    ]
    for row in rows:
        t.add_row(*row)
    return t


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.storage", description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=H.count(1), default=10_000)
    p.add_argument("--history-size", type=H.count(1), default=1440)
    p.add_argument("--workers", type=H.count(1), default=2)
    p.add_argument("--interval", type=H.seconds, default=1.0, help="seconds between ticks of the daemon runs (default 1)")
    p.add_argument("--ticks", type=H.count(1), default=10, help="ticks to run before the SIGKILL (default 10)")
    p.add_argument("--persist-agents", type=H.count(1), default=2000, help="agents in the persist-cost measurement")
    p.add_argument("--persist-rounds", type=H.count(1), default=5, help="samples per agent per measured round")
    p.add_argument("--workdir", type=Path, default=None, help="where the state dir goes (default: beside the default state dir)")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/storage-<time>.json)")
    args = p.parse_args(argv)
    args.argv = argv
    return args


main = H.entry_point("storage", parse_args, run, table, 130)

if __name__ == "__main__":
    H.run_script(main)
