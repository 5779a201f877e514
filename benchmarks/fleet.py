"""How does the real daemon perform on a real fleet, against psutil's own floor?

Spawns N real processes (idle ``sleep`` by default; ``--busy``/``--memory`` add some burning ~20% of
a CPU or holding memory), registers them by writing registry files, runs the real daemon
(``python -m fleetmon run --workers W --interval I``) and measures, over a window after a warm-up:

- samples persisted per second (the writer's count, from the opt-in timing log);
- tick latency p50/p99/max: from the supervisor sending a tick to the writer's flush that persisted
  the last sample of it (``fleetmon/store/timing.py``);
- missed ticks: ticks for which some agent got no point (a worker too busy coalesces ticks);
- whole-daemon CPU per persisted sample: utime+stime from /proc of the supervisor, workers and
  writer (and of any reaped, replaced child);
- peak writer RSS and peak total RSS of the daemon's process tree.

Baselines, in the same run over the same processes, each in a forked process of its own:
- ``bare``: one process, cached ``psutil.Process`` + ``oneshot()`` reading cpu_times, memory_info,
  io_counters, num_fds, num_threads: the floor for CPU per sample (run before and after the daemon
  runs of each fleet size; the mean is the reference);
- ``naive``: a new ``psutil.Process`` per sample, no ``oneshot()``.
Ratios: daemon CPU per sample / baseline CPU per sample, and throughput against 1 worker.

For the scaling question (does a second worker help when CPU-bound?) pass an interval much shorter
than a pass over the fleet takes, e.g. ``--agents 4000 --workers 1,2 --interval 0.02s``: workers
never idle, ticks coalesce, and samples/s is the pipeline's throughput. A run whose samples/s came
within 10% of agents/interval was capped by the interval, not by the CPU: the JSON has
``interval_bound: true`` and the table marks its "x 1 worker" with "(cap)" (for 2 or more workers). Such a ratio says nothing about
scaling (4000 agents at 0.1s is capped at 40,000 samples/s).

    python -m benchmarks.fleet                                   # N in 1k,2k,5k,10k x workers 1,2,4
    python -m benchmarks.fleet --agents 2000 --workers 2 --duration 30
    python -m benchmarks.fleet --agents 4000 --workers 1,2 --interval 0.02s --plot scaling.png

Prints a table and writes ``benchmarks/results/fleet-<time>.json`` (and ``fleet-latest.json``).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from benchmarks import baselines, pyspy
from benchmarks import harness as H
from fleetmon.units import parse_duration

console = Console(stderr=True)


def ring_points(history_dir: Path, ids: list[str]) -> list[int]:
    """Points written so far to each agent's ring (its highest sequence number; 0 if none)."""
    out = []
    for agent_id in ids:
        try:
            data = (history_dir / f"{agent_id}.ring").read_bytes()
        except FileNotFoundError:
            out.append(0)
            continue
        words = memoryview(data)[64 : 64 + (len(data) - 64) // 64 * 64].cast("I")
        out.append(max(words[13::16], default=0))
    return out


def run_daemon(
    pids: list[int],
    workers: int,
    interval: float,
    duration: float,
    warmup: float,
    history_size: int,
    workdir: Path,
    progress: Progress | None = None,
    keep: bool = False,
    interleave: bool = True,
    profile: Path | None = None,
    reader: str = "auto",
    catch_up: bool = True,
    thresholds: bool = True,
) -> dict:
    """One daemon run over ``pids``; returns its measurements. ``interleave``: run the bare psutil
    loop between ticks (``harness.BareProbe``) as the reference for CPU per sample. ``catch_up``:
    after the warm-up, wait (up to 30 s more) for a tick persisted within two intervals before the
    window opens; a CPU-bound run never catches up, so pass False for one. ``thresholds``: every
    agent has limits (``harness.THRESHOLDS_CONFIG``), none of them crossed."""
    n = len(pids)
    warmup = max(warmup, n / 1000)  # creating the rings takes about this long on the first tick
    state = workdir / f"state-n{n}-w{workers}-i{interval:g}-{reader}"
    ids = H.write_registry(state, pids)
    label = f"{n} agents, {workers} workers" + (f", {reader}" if reader != "auto" else "")
    task = progress.add_task(label, total=warmup + duration) if progress else None
    create_us = H.file_create_us(workdir)
    probe = profiler = d = None
    config = f'reader = "{reader}"\n' + (H.THRESHOLDS_CONFIG if thresholds else "")
    base = end = None
    marks: list[tuple[int, float]] = []  # (samples persisted, daemon CPU) after each flush in the window

    def edge(line: dict, now: float) -> dict:
        """What the window is measured between: at its start and at its end."""
        return {
            "line": line,
            "cpu": d.cpu(),
            "roles": d.cpu_by_role(),
            "host": H.host_cpu(),
            "disk": H.disk_written(state),
            "at": now,
        }

    last_rss = 0.0
    try:
        # inside the try: an interrupt or error while the daemon starts still stops the probe
        probe = baselines.BareProbe(pids) if interleave else None
        started = time.monotonic()
        startup_deadline = started + 120 + n / 50
        d = H.DaemonRun(state, workers, interval, history_size, extra_config=config)
        while end is None:
            if not d.alive():
                raise RuntimeError(f"daemon exited with {d.proc.returncode}:\n{d.log_tail()}")
            now = time.monotonic()
            if base is None and now > startup_deadline:
                raise RuntimeError(f"no tick persisted within {startup_deadline - started:.0f}s:\n{d.log_tail()}")
            new = d.poll_ticks()
            if new:
                line = new[-1]  # several lines can come from one flush: the CPU snapshot follows them all
                if base is None:
                    # The first ticks create every ring and may leave a backlog: the window opens once
                    # the warm-up is over and a tick was persisted within two intervals (or, failing
                    # that, a while later anyway: a fleet too big for the interval never catches up).
                    caught_up = not catch_up or (line["tick_wall"] and line["persisted"] - line["tick_wall"] <= 2 * interval)
                    if now - started >= warmup and len(d.ticks) >= 2 and (caught_up or now - started >= 2 * warmup + 30):
                        base = edge(line, now)
                        marks.append((line["samples_total"], base["cpu"]))
                        if profile is not None:
                            profiler = pyspy.Profiler(profile, f"n{n}-w{workers}-{reader}", d, duration)
                elif line["persisted"] - base["line"]["persisted"] >= duration:
                    end = edge(line, now)
                    marks.append((line["samples_total"], end["cpu"]))
                else:
                    marks.append((line["samples_total"], d.cpu()))
                    if probe is not None:
                        probe.request()  # the daemon idles until the next tick
            if now - last_rss >= 0.5:
                d.sample_rss()
                last_rss = now
            if progress is not None:
                done = min(warmup, now - started) + (now - base["at"] if base else 0.0)
                lat = [t["persisted"] - t["tick_wall"] for t in d.ticks[-5:] if t["tick_wall"]]
                progress.update(
                    task,
                    completed=min(done, warmup + duration),
                    description=f"{label}: tick {d.ticks[-1]['tick'] if d.ticks else 0}"
                    + (f", latency {max(lat):.2f}s" if lat else ""),
                )
            time.sleep(0.1)
        d.sample_rss()
    finally:
        # each step whatever the one before it did (py-spy failing, the probe dead ...), and a
        # second Ctrl-C held until they are done (H.cleanup)
        with H.cleanup():
            try:
                profiles = profiler.finish() if profiler is not None else None
            finally:
                try:
                    code = d.stop() if d is not None else None
                finally:
                    try:
                        bare = probe.result() if probe is not None else None
                    finally:
                        if probe is not None:
                            probe.close()
                        if progress is not None and task is not None:
                            progress.remove_task(task)
    window = [t for t in d.ticks if base["line"]["tick"] < t["tick"] <= end["line"]["tick"]]
    latencies = [t["persisted"] - t["tick_wall"] for t in window if t["tick_wall"]]
    samples = end["line"]["samples_total"] - base["line"]["samples_total"]
    elapsed = end["line"]["persisted"] - base["line"]["persisted"]
    cpu = end["cpu"] - base["cpu"]
    # CPU per sample flush by flush: its median shrugs off bursts of load from the rest of the host
    per_flush = [(c1 - c0) / (s1 - s0) * 1e6 for (s0, c0), (s1, c1) in zip(marks, marks[1:], strict=False) if s1 > s0]
    wall = end["at"] - base["at"]
    host_busy = end["host"][0] - base["host"][0]
    probe_cpu = sum(v["cpu_s"] for k, v in bare.items() if k != "passes") if bare else 0.0
    points = ring_points(state / "history", ids)
    first = d.ticks[0] if d.ticks else None
    result = {
        "agents": n,
        "workers": workers,
        "reader": reader,
        "interval_s": interval,
        "window_s": round(elapsed, 3),
        "ticks": len(window),
        "samples": samples,
        "samples_per_s": round(samples / elapsed, 1) if elapsed > 0 else None,
        "interval_bound": elapsed > 0 and samples / elapsed >= 0.9 * n / interval,
        "tick_latency_p50_s": H.percentile(latencies, 50),
        "tick_latency_p99_s": H.percentile(latencies, 99),
        "tick_latency_max_s": max(latencies, default=None),
        "first_tick_latency_s": first["persisted"] - first["tick_wall"] if first and first["tick_wall"] else None,
        "missed_ticks": sum(1 for t in window if t["samples"] < n),
        "cpu_s": round(cpu, 3),
        "cpu_per_sample_us": round(cpu / samples * 1e6, 2) if samples else None,
        "median_flush_cpu_per_sample_us": round(statistics.median(per_flush), 2) if per_flush else None,
        "cpu_per_sample_us_by_role": {
            role: round((end["roles"][role] - base["roles"][role]) / samples * 1e6, 2) if samples else None
            for role in base["roles"]
        },
        "writer_rss_mb": round(H.mib(d.peak_writer_rss), 1),
        "total_rss_mb": round(H.mib(d.peak_total_rss), 1),
        "agents_with_points": sum(1 for p in points if p > 0),
        "min_points_per_agent": min(points, default=0),
        "daemon_exit_code": code,
        # The rest of the host over the window, in CPUs: busy time of every CPU minus the daemon's
        # and the interleaved baselines' (the harness's own polling is in it, and small).
        "host_cpus_busy": round(host_busy / wall, 2) if wall > 0 else None,
        "others_cpus_busy": round((host_busy - cpu - probe_cpu) / wall, 2) if wall > 0 else None,
        "host_steal_cpus": round((end["host"][1] - base["host"][1]) / wall, 2) if wall > 0 else None,
        # Written to the state dir's disk meanwhile (by the whole host: the daemon's share when it is quiet)
        "disk_write_mb_per_s": round((end["disk"] - base["disk"]) / 2**20 / wall, 2)
        if base["disk"] is not None and wall > 0
        else None,
        "file_create_us": create_us,
        "baselines_interleaved": bare,
        "profile": profiles,
    }
    if not keep:
        shutil.rmtree(state, ignore_errors=True)
    return result


def sweep(args) -> dict:
    sizes = sorted(args.agents)
    workdir = Path(tempfile.mkdtemp(prefix="fleetmon-bench-", dir=args.workdir or H.default_workdir()))
    fleet = H.Fleet()
    runs: list[dict] = []
    by_size: dict[int, dict] = {}  # the back-to-back baselines of each fleet size
    try:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console, transient=True
        ) as progress:
            spawn = progress.add_task(f"spawning {max(sizes)} processes", total=max(sizes))
            fleet.spawn(
                max(sizes),
                busy=args.busy,
                memory=args.memory,
                memory_mb=args.memory_mb,
                progress=lambda i, total: progress.update(spawn, completed=i),
            )
            progress.remove_task(spawn)
            pids = fleet.pids
            for n in sizes:
                base = progress.add_task(f"{n} agents: psutil baselines", total=None)
                before = baselines.psutil_baseline("bare", pids[:n], args.baseline_seconds)
                naive = baselines.psutil_baseline("naive", pids[:n], args.baseline_seconds)
                progress.remove_task(base)
                size_runs = []
                for reader, w in [(r, w) for r in args.reader for w in args.workers]:
                    size_runs.append(
                        run_daemon(
                            pids[:n],
                            w,
                            args.interval,
                            args.duration,
                            args.warmup,
                            args.history_size,
                            workdir,
                            progress,
                            args.keep,
                            args.interleave,
                            args.profile,
                            reader,
                            thresholds=args.thresholds,
                        )
                    )
                base = progress.add_task(f"{n} agents: psutil baseline again", total=None)
                after = baselines.psutil_baseline("bare", pids[:n], args.baseline_seconds)
                progress.remove_task(base)
                bare_us = statistics.mean([before["cpu_per_sample_us"], after["cpu_per_sample_us"]])
                by_size[n] = {
                    "bare_before": before,
                    "bare_after": after,
                    "bare_cpu_per_sample_us": round(bare_us, 2),
                    "naive": naive,
                }
                for r in size_runs:
                    one = next((o for o in size_runs if o["workers"] == 1 and o["reader"] == r["reader"]), None)
                    # The reference: the baselines interleaved with this run when there were, else
                    # the back-to-back runs before and after this fleet size's daemon runs.
                    inter = r["baselines_interleaved"]
                    r["bare_cpu_per_sample_us"] = (inter and inter["bare"]["cpu_per_sample_us"]) or round(bare_us, 2)
                    r["naive_cpu_per_sample_us"] = (inter and inter["naive"]["cpu_per_sample_us"]) or round(
                        naive["cpu_per_sample_us"], 2
                    )
                    r["baseline_source"] = "interleaved" if inter and inter["bare"]["samples"] else "before/after"
                    r["cpu_vs_bare"] = H.ratio(r["cpu_per_sample_us"], r["bare_cpu_per_sample_us"])
                    if inter and inter["bare"]["samples"]:  # the same ratio from medians (flush by flush, pass by pass)
                        r["median_cpu_vs_bare"] = H.ratio(
                            r["median_flush_cpu_per_sample_us"], inter["bare"]["median_pass_cpu_per_sample_us"]
                        )
                    r["cpu_vs_naive"] = H.ratio(r["cpu_per_sample_us"], r["naive_cpu_per_sample_us"])
                    r["samples_per_s_vs_1_worker"] = H.ratio(r["samples_per_s"], one["samples_per_s"]) if one else None
                runs += size_runs
    finally:
        with H.cleanup():
            fleet.stop()
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
    return {
        "benchmark": "fleet",
        "command": "python -m benchmarks.fleet " + " ".join(args.argv),
        "machine": H.machine(),
        "params": {
            "agents": sizes,
            "workers": args.workers,
            "reader": args.reader,
            "interval_s": args.interval,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "history_size": args.history_size,
            "busy": args.busy,
            "memory": args.memory,
            "thresholds": args.thresholds,
        },
        "baselines": {str(k): v for k, v in by_size.items()},
        "runs": runs,
    }


def table(result: dict) -> Table:
    t = Table(title=f"fleetmon on a real fleet (interval {result['params']['interval_s']:g}s)")
    for col in (
        "agents",
        "workers",
        "reader",
        "samples/s",
        "x 1 worker",
        "tick p50",
        "tick p99",
        "missed",
        "CPU/sample",
        "bare",
        "x bare",
        "x naive",
        "writer RSS",
        "total RSS",
        "disk writes",
        "others",
    ):
        t.add_column(col, justify="right")
    for r in result["runs"]:
        t.add_row(
            str(r["agents"]),
            str(r["workers"]),
            r.get("reader", "auto"),
            H.fmt(r["samples_per_s"], ".0f"),
            H.fmt(r["samples_per_s_vs_1_worker"], ".2f") + (" (cap)" if r.get("interval_bound") and r["workers"] > 1 else ""),
            H.fmt(r["tick_latency_p50_s"], ".3f", "s"),
            H.fmt(r["tick_latency_p99_s"], ".3f", "s"),
            f"{r['missed_ticks']}/{r['ticks']}",
            H.fmt(r["cpu_per_sample_us"], ".1f", "us"),
            H.fmt(r["bare_cpu_per_sample_us"], ".1f", "us"),
            H.fmt(r["cpu_vs_bare"], ".2f"),
            H.fmt(r["cpu_vs_naive"], ".2f"),
            H.fmt(r["writer_rss_mb"], ".0f", "MB"),
            H.fmt(r["total_rss_mb"], ".0f", "MB"),
            H.fmt(r["disk_write_mb_per_s"], ".1f", "MB/s"),
            H.fmt(r["others_cpus_busy"], ".1f", " CPU"),
        )
    t.caption = (
        "x bare / x naive: whole-daemon CPU per persisted sample over the psutil loops' (interleaved "
        "between ticks); others: CPUs the rest of the host kept busy meanwhile; (cap): samples/s within 10% "
        "of agents/interval, so bound by the interval, not the CPU"
    )
    return t


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    readers = result["params"].get("reader", ["auto"])
    for reader, w in [(r, w) for r in readers for w in result["params"]["workers"]]:
        rs = [r for r in result["runs"] if r["workers"] == w and r.get("reader", "auto") == reader]
        label = f"{w} worker" + ("s" if w > 1 else "") + (f" ({reader})" if len(readers) > 1 else "")
        a.plot([r["agents"] for r in rs], [r["samples_per_s"] for r in rs], marker="o", label=label)
        b.plot([r["agents"] for r in rs], [r["cpu_vs_bare"] for r in rs], marker="o", label=label)
    a.set(xlabel="agents", ylabel="samples persisted / s", title="throughput")
    b.set(xlabel="agents", ylabel="CPU per sample / bare psutil", title="CPU per sample vs bare psutil loop")
    b.axhline(1.3, color="red", linestyle="--", label="budget 1.3x")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fleet", description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=H.counts(1), default=[1000, 2000, 5000, 10000], help="fleet sizes, comma-separated")
    p.add_argument("--workers", type=H.counts(1), default=[1, 2, 4], help="worker counts, comma-separated")
    p.add_argument(
        "--reader",
        type=H.readers,
        default=["auto"],
        help="the workers' process reader(s), comma-separated: auto, procfs, psutil (default auto: procfs on Linux)",
    )
    p.add_argument("--interval", type=parse_duration, default=1.0, help="tick interval (default 1s)")
    p.add_argument("--duration", type=H.seconds, default=20.0, help="measured seconds per run (default 20)")
    p.add_argument("--warmup", type=H.seconds, default=5.0, help="seconds before the window opens (default 5)")
    p.add_argument("--history-size", type=H.count(1), default=1440)
    H.thresholds_flag(p)
    p.add_argument("--baseline-seconds", type=H.seconds, default=5.0, help="seconds of each psutil baseline run (default 5)")
    p.add_argument("--busy", type=H.count(0), default=0, help="how many of the processes burn ~20%% of a CPU")
    p.add_argument("--memory", type=H.count(0), default=0, help="how many of the processes hold --memory-mb")
    p.add_argument("--memory-mb", type=H.count(1), default=50)
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where state dirs go (default: beside fleetmon's default state dir, on the filesystem it would use)",
    )
    p.add_argument("--keep", action="store_true", help="keep state dirs, daemon logs and timing logs")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/fleet-<time>.json)")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.png", help="plot throughput and CPU ratios")
    p.add_argument(
        "--profile",
        type=pyspy.profile_dir,
        default=None,
        metavar="DIR",
        help="attach py-spy to every daemon process over the window: raw stacks in DIR, a summary in the JSON",
    )
    p.add_argument(
        "--interleave",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the psutil baselines between ticks, as the reference (default: when --interval >= 0.5s)",
    )
    args = p.parse_args(argv)
    args.argv = argv
    if args.busy + args.memory > min(args.agents):
        p.error(f"--busy and --memory together ({args.busy + args.memory}) exceed the smallest fleet (--agents {min(args.agents)})")
    if args.interleave is None:
        args.interleave = args.interval >= 0.5
    return args


def _plot_if_asked(args, result: dict) -> None:
    if args.plot:
        plot(result, args.plot)
        console.print(f"plot: {args.plot}")


main = H.entry_point("fleet", parse_args, sweep, table, 170, after=_plot_if_asked)

if __name__ == "__main__":
    H.run_script(main)
