"""Does a second worker scale throughput when CPU-bound, against what this host's cores give the bare loops?

One run of 1 worker followed by one of 2 says little on a shared VM, where the speed of a core can
drift by 2x from one minute to the next. So this script measures in rounds (default 3). Each round,
back to back, over the same N real processes:

- the bare loops' own scaling: the bare psutil loop (cached ``Process`` + ``oneshot()``) and a bare
  /proc loop (open, read and close of stat, statm and io, and a stat of fd/: the reads fleetmon's
  procfs reader makes), each in 1 process over every pid and then in 2 processes at once over half
  each (samples/s);
- fleetmon, CPU-bound (the interval, default 0.02s, is far shorter than a pass over the fleet), with
  1 worker and with 2, for each reader.

Odd rounds run each pair in the opposite order (2 before 1), so that a steady drift does not favour
one side. Reported: every round's samples/s and its ratio 2/1, the median ratio over the rounds,
and fleetmon's median ratio as a share of the matching bare loop's (procfs reader: the /proc loop;
psutil reader: the psutil loop), i.e. how much of what the host gives the floor fleetmon keeps.
And for fleetmon, the CPU bound: the ratio the 1-worker run's CPU per sample by role allows when
the writer and the supervisor share the host's cores with 2 workers (``cpu_bound``; a model of
where the ratio lands on a steady host, which a round beats when the host speeds up between runs).

    python -m benchmarks.scaling                          # 4000 agents, 3 rounds, the default reader
    python -m benchmarks.scaling --reader procfs,psutil --rounds 5

Prints a table and writes ``benchmarks/results/scaling-<time>.json`` (and ``scaling-latest.json``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from benchmarks import baselines
from benchmarks import harness as H
from benchmarks.fleet import run_daemon
from fleetmon.units import parse_duration

console = Console(stderr=True)
MATCHING_LOOP = {"procfs": "procfs", "psutil": "psutil", "auto": "procfs"}


def measure(args) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="fleetmon-bench-", dir=args.workdir or H.default_workdir()))
    fleet = H.Fleet()
    rounds = []
    try:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console, transient=True
        ) as progress:
            spawn = progress.add_task(f"spawning {args.agents} processes", total=args.agents)
            fleet.spawn(args.agents, progress=lambda i, total: progress.update(spawn, completed=i))
            progress.remove_task(spawn)
            pids = fleet.pids
            overall = progress.add_task("rounds", total=args.rounds)
            for rnd in range(args.rounds):
                order = (1, 2) if rnd % 2 == 0 else (2, 1)
                pairs = []
                for kind in baselines.PARALLEL_KINDS:
                    task = progress.add_task(f"round {rnd + 1}: bare {kind} loop, 1 and 2 processes", total=None)
                    by = {k: baselines.parallel_baseline(kind, pids, args.loop_seconds, k) for k in order}
                    progress.remove_task(task)
                    pairs.append(_pair(f"bare {kind} loop", kind, by[1], by[2]))
                for reader in args.reader:
                    by = {}
                    for w in order:
                        by[w] = run_daemon(
                            pids, w, args.interval, args.duration, args.warmup, args.history_size, workdir,
                            progress, interleave=False, reader=reader, catch_up=False, thresholds=args.thresholds,
                        )
                    pairs.append(_pair(f"fleetmon, {reader} reader", reader, by[1], by[2]))
                rounds.append({"round": rnd + 1, "order": list(order), "pairs": pairs})
                progress.update(overall, completed=rnd + 1)
    finally:
        with H.cleanup():
            fleet.stop()
            shutil.rmtree(workdir, ignore_errors=True)
    return {
        "benchmark": "scaling",
        "command": "python -m benchmarks.scaling " + " ".join(args.argv),
        "machine": H.machine(),
        "params": {
            "agents": args.agents,
            "rounds": args.rounds,
            "reader": args.reader,
            "interval_s": args.interval,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "loop_seconds": args.loop_seconds,
            "thresholds": args.thresholds,
        },
        "rounds": rounds,
        "summary": summarize(rounds),
    }


def _pair(what: str, kind: str, one: dict, two: dict) -> dict:
    """1 and 2 (processes or workers) of one thing in one round. A fleetmon run whose samples/s
    came near agents/interval was capped by the interval: its ratio is kept but flagged."""
    return {
        "what": what,
        "kind": kind,
        "samples_per_s": {"1": one["samples_per_s"], "2": two["samples_per_s"]},
        "ratio": H.ratio(two["samples_per_s"], one["samples_per_s"]),
        "interval_bound": bool(one.get("interval_bound") or two.get("interval_bound")),
        "cpu_per_sample_us": {"1": one["cpu_per_sample_us"], "2": two["cpu_per_sample_us"]},
        "cpu_per_sample_us_by_role": {
            k: r["cpu_per_sample_us_by_role"] for k, r in (("1", one), ("2", two)) if "cpu_per_sample_us_by_role" in r
        },
        "bound": cpu_bound(one.get("cpu_per_sample_us_by_role")),
    }


def cpu_bound(by_role: dict | None, cpus: int | None = None) -> float | None:
    """The ratio 2 workers would reach over 1 if every sample cost what it cost in the 1-worker run
    (by role): one worker is the bottleneck (w us per sample) while the writer and the supervisor
    (r) run beside it; two workers share the cores with them, so throughput is at most
    cores/(w + r), and at most 2/w. Ratio: min(2, cores * w / (w + r)). A model, not a hard bound:
    when the host is faster during the 2-worker run than it was during the 1-worker run, a round
    beats it. None for the bare loops (no roles)."""
    if not by_role or not by_role.get("workers"):
        return None
    cores = cpus or len(os.sched_getaffinity(0)) or 1
    w = by_role["workers"]
    r = by_role.get("writer", 0.0) + by_role.get("supervisor", 0.0)
    return round(min(2.0, cores * w / (w + r)), 3)


def summarize(rounds: list[dict]) -> list[dict]:
    """Per thing measured: the median (and range) of its ratios over the rounds; for fleetmon, that
    median over the median of the matching bare loop."""
    ratios: dict[str, list[float]] = {}
    bounds: dict[str, list[float]] = {}
    kinds: dict[str, str] = {}
    capped: dict[str, bool] = {}
    for rnd in rounds:
        for p in rnd["pairs"]:
            if p["ratio"] is not None:
                ratios.setdefault(p["what"], []).append(p["ratio"])
            if p.get("bound") is not None:
                bounds.setdefault(p["what"], []).append(p["bound"])
            kinds[p["what"]] = p["kind"]
            capped[p["what"]] = capped.get(p["what"], False) or p["interval_bound"]
    out = []
    for what, values in ratios.items():
        row = {
            "what": what,
            "median_ratio": round(statistics.median(values), 3),
            "min_ratio": min(values),
            "max_ratio": max(values),
            "interval_bound": capped[what],
        }
        kind = kinds[what]
        if what.startswith("fleetmon"):
            loop = f"bare {MATCHING_LOOP[kind]} loop"
            if loop in ratios:
                row["vs_bare_loop"] = H.ratio(row["median_ratio"], statistics.median(ratios[loop]))
            if what in bounds:
                row["median_bound"] = round(statistics.median(bounds[what]), 3)
        out.append(row)
    return out


def table(result: dict) -> Table:
    p = result["params"]
    t = Table(title=f"2 vs 1 (processes or workers), {p['agents']} agents, CPU-bound (fleetmon at interval {p['interval_s']:g}s)")
    for col in ("round", "what", "1: samples/s", "2: samples/s", "2 / 1", "CPU bound"):
        t.add_column(col, justify="right")
    for rnd in result["rounds"]:
        for pair in rnd["pairs"]:
            t.add_row(
                str(rnd["round"]),
                pair["what"],
                H.fmt(pair["samples_per_s"]["1"], ".0f"),
                H.fmt(pair["samples_per_s"]["2"], ".0f"),
                H.fmt(pair["ratio"], ".2f") + (" (cap)" if pair["interval_bound"] else ""),
                H.fmt(pair.get("bound"), ".2f"),
            )
    t.add_section()
    for row in result["summary"]:
        share = f", {row['vs_bare_loop']:.2f} of the bare loop's" if row.get("vs_bare_loop") else ""
        t.add_row(
            "median",
            row["what"],
            "",
            "",
            f"{row['median_ratio']:.2f} ({row['min_ratio']:.2f}-{row['max_ratio']:.2f}){share}"
            + (" (cap)" if row["interval_bound"] else ""),
            H.fmt(row.get("median_bound"), ".2f"),
        )
    t.caption = (
        "2 / 1: samples/s with 2 processes (bare loops) or 2 workers (fleetmon) over 1; (cap): a fleetmon run "
        "within 10% of agents/interval, bound by the interval and not the CPU: shorten --interval; CPU bound: "
        "the best 2 / 1 the 1-worker run's CPU per sample allows, min(2, cores x workers / (workers + writer "
        "+ supervisor)), as the writer and the supervisor share the cores with 2 workers (a model: a round beats it when the host sped up between its two runs)"
    )
    return t


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=H.count(2), default=4000, help="real processes to watch (default 4000)")
    p.add_argument("--rounds", type=H.count(1), default=3, help="rounds of every measurement (default 3)")
    p.add_argument(
        "--reader",
        type=H.readers,
        default=["auto"],
        help="fleetmon's process reader(s), comma-separated: auto, procfs, psutil (default auto)",
    )
    p.add_argument("--interval", type=parse_duration, default=0.02, help="fleetmon's tick interval (default 0.02s)")
    p.add_argument("--duration", type=H.seconds, default=15.0, help="measured seconds per fleetmon run (default 15)")
    p.add_argument("--warmup", type=H.seconds, default=5.0, help="seconds before the window opens (default 5)")
    p.add_argument("--loop-seconds", type=H.seconds, default=5.0, help="seconds of each bare loop run (default 5)")
    p.add_argument("--history-size", type=H.count(1), default=1440)
    H.thresholds_flag(p)
    p.add_argument("--workdir", type=Path, default=None, help="where state dirs go (default: beside fleetmon's default state dir)")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/scaling-<time>.json)")
    args = p.parse_args(argv)
    args.argv = argv
    return args


main = H.entry_point("scaling", parse_args, measure, table, 130)

if __name__ == "__main__":
    H.run_script(main)
