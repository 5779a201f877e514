"""What CPU does each tool that could watch the fleet spend per watched process per interval?

Spawns N real idle processes (default 2000; ``sleep`` with a command line unique to the run) and,
one tool after the other over that same fleet, sampled every ``--interval`` (1 s) for ``--duration``
seconds (30) after a warm-up, measures the CPU the tool spent (utime+stime from /proc/<pid>/stat of
every process of the tool, plus its reaped children) divided by N x the intervals it actually
performed, and its peak RSS:

- **fleetmon**: ``fleetmon run --workers 2`` with all N registered and limits on every agent, as
  ``benchmarks.fleet`` runs it (the whole tree: supervisor, workers, writer); intervals: ticks
  persisted.
- **process-exporter** (Debian ``prometheus-process-exporter``): one group per process (group name
  ``agent-{{.PID}}``, a ``cmdline`` matcher on the fleet's unique command line), per-thread and
  smaps metrics off (``--exporter-flags``) so that it reads about what fleetmon reads; scraped every
  interval by a process of its own (a scrape is what makes it read /proc), whose CPU is reported
  apart; intervals: scrapes served.
- **apps.plugin** (netdata's, Debian ``netdata-core``): standalone, ``apps.plugin <interval>``, its
  output read and thrown away (it needs no netdata daemon, only a stdin that stays open). It reads
  every process of the host, not only the fleet, and reports by app group, user and user group, not
  by process; intervals: iterations it wrote (``BEGIN apps.cpu``).
- **monit** (Debian ``monit``): one ``check process`` per agent by pidfile, ``set daemon <interval>``,
  no tests, no alerts, no mail, no httpd; intervals: its cycles (the bursts of its read syscalls, in
  /proc/<pid>/io; monit sleeps the whole interval after each cycle, so a cycle is interval + its own
  time). ``--monit-agents`` checks only the first M processes.

The baseline: the bare psutil loop (``benchmarks.baselines``: one process, a cached
``psutil.Process`` and ``oneshot()``), back to back over the same processes before each tool and after
the last: ``x bare`` is a tool's CPU per process per interval over the mean of the bare runs just
before and just after it (the host is shared, and its speed drifts from one tool to the next). Tools
never run at once. A tool that is not installed is skipped (``--install`` apt-gets
it; nothing is installed or downloaded otherwise). Telegraf's procstat is not here: Telegraf is not
packaged in Debian, nor on the registries this project uses.

process-exporter, apps.plugin and monit read every process of the host each interval (to match
them, or to build a process tree), fleetmon only its agents: on a host with more processes than the
fleet they pay for all of them (the ``host procs`` column). To give them a host with nothing but the
fleet, run the script in a PID namespace of its own (as root), where /proc lists only its processes;
the JSON says ``own_pid_namespace``:

    python -m benchmarks.competitors                     # 2000 processes, every 1 s, 30 s per tool
    unshare --pid --fork --mount-proc python -m benchmarks.competitors    # the tools see only the fleet
    python -m benchmarks.competitors --agents 20 --duration 3 --tools fleetmon,monit

Prints a table and writes ``benchmarks/results/competitors-<time>.json``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from benchmarks import baselines, fleet
from benchmarks import harness as H

console = Console(stderr=True)

EXPORTER = "/usr/bin/prometheus-process-exporter"
APPS_PLUGIN = "/usr/lib/netdata/plugins.d/apps.plugin"
MONIT = "/usr/bin/monit"

# tool: (binary, Debian package) -- fleetmon is this checkout
BINARIES = {"process-exporter": (EXPORTER, "prometheus-process-exporter"), "apps.plugin": (APPS_PLUGIN, "netdata-core"),
            "monit": (MONIT, "monit")}
TOOLS = ("fleetmon", "process-exporter", "apps.plugin", "monit")
# Those that read every process of the host each interval (process-exporter to match them, monit to
# build its process tree): their cost grows with the host's processes, not only the fleet's.
SCANS_HOST = ("process-exporter", "apps.plugin", "monit")

# What each tool gives, beyond the CPU it costs (as configured here).
GIVES = {
    "fleetmon": "per agent: cpu, rss, io, fds, threads; a bounded history of every sample on disk (1440 points); "
    "limits with a duration, alerts; pid reuse detected (start time)",
    "process-exporter": "per group (here one per pid): cpu, memory, io, fds, threads, states, context switches, "
    "page faults, now only: history and alert durations (`for:`) need a Prometheus server; processes told apart "
    "by pid and start time",
    "apps.plugin": "by app group, user and user group, not per process: cpu, memory, io, fds, threads, processes; "
    "history and alarms need the netdata daemon; reads every process on the host",
    "monit": "per check, now only (`monit status`, needs httpd): cpu, memory, threads, children, uptime; tests "
    "`if cpu > X for N cycles then ...` with actions (restart, exec); no history; the pid read from the "
    "pidfile each cycle, a stranger on a reused pid passes",
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.competitors", description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=2000, help="idle processes to watch (default 2000)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between samples (default 1; whole seconds "
                   "for apps.plugin and monit)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds measured per tool (default 30)")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds after a tool's first interval before measuring "
                   "(default 10)")
    p.add_argument("--tools", type=H.names, default=list(TOOLS), help=f"comma-separated, in order (default {','.join(TOOLS)})")
    p.add_argument("--workers", type=int, default=2, help="fleetmon's workers (default 2)")
    p.add_argument("--exporter-flags", default="-threads=false -gather-smaps=false",
                   help="extra flags for process-exporter (default: no per-thread, no smaps metrics)")
    p.add_argument("--monit-agents", type=int, help="monit checks only the first M processes (default all)")
    p.add_argument("--baseline-seconds", type=float, default=5.0, help="seconds of each bare psutil loop (before, after)")
    p.add_argument("--install", action="store_true", help="apt-get install the Debian packages of missing tools")
    p.add_argument("--workdir", type=Path, help="where state dirs and tool configs go (default: beside fleetmon's)")
    p.add_argument("--out", type=Path, help="write the JSON here instead of benchmarks/results/")
    args = p.parse_args(argv)
    unknown = [t for t in args.tools if t not in TOOLS]
    if unknown:
        p.error(f"unknown tool(s) {', '.join(unknown)}: choose from {', '.join(TOOLS)}")
    return args


# --- a tool's processes ---------------------------------------------------------------------------


class ToolRun(H.Watched):
    """A competitor started by pid and watched from /proc (its tree, reaped children included);
    ``stop()`` TERMs it, then KILLs by pid whatever of its tree is left."""

    def __init__(self, argv: list[str], log_path: Path, stdin=subprocess.DEVNULL, stdout=None, cwd: Path | None = None):
        super().__init__(argv, log_path, stdin=stdin, stdout=stdout, cwd=cwd)
        self.argv = argv
        self.peak_rss = 0

    def sample_rss(self) -> int:
        rss = sum(H.rss_bytes(p) for p in self.tree())
        self.peak_rss = max(self.peak_rss, rss)
        return rss

    def log_tail(self, n: int = 15) -> str:
        return super().log_tail(n)

    def stop(self, timeout: float = 10.0, linger: float = 0.0) -> int | None:
        return super().stop(timeout, linger)


def version(argv: list[str]) -> str | None:
    """The first line a tool prints for its version flag (stdout or stderr)."""
    try:
        out = subprocess.run(argv, capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [x.strip() for x in (out.stdout + out.stderr).decode(errors="replace").splitlines() if x.strip()]
    return lines[0] if lines else None


def package_version(tool: str) -> str | None:
    """The installed Debian package's version of ``tool``."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", BINARIES[tool][1]], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.decode().strip() or None


def host_processes() -> int:
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


def measure(tool: ToolRun, counter, label: str, args, progress: Progress, extra_cpu=None) -> dict:
    """Wait for the tool's first interval, warm up, then measure a window from just after one
    interval was done (``counter()`` went up) to just after the first one done ``duration``
    seconds later: CPU over it (and ``extra_cpu()``'s, a helper such as the scraper), intervals done
    in it (``counter()``'s rise), peak RSS."""
    task = progress.add_task(label, total=args.warmup + args.duration)
    try:
        started = time.monotonic()
        deadline = started + 60 + args.agents / 50

        def wait_for_interval(after: int, limit: float) -> int:
            while (c := counter()) <= after:
                if not tool.alive():
                    raise RuntimeError(f"{label} exited with {tool.proc.returncode}:\n{tool.log_tail()}")
                if time.monotonic() > limit:
                    raise RuntimeError(f"{label}: no interval done in time:\n{tool.log_tail()}")
                time.sleep(0.02)
            return c

        wait_for_interval(0, deadline)
        first = time.monotonic()
        while time.monotonic() - first < args.warmup:
            tool.sample_rss()
            progress.update(task, completed=time.monotonic() - first)
            time.sleep(0.2)
        c0 = wait_for_interval(counter(), time.monotonic() + 10 * args.interval + 60)
        cpu0, extra0, t0, host0 = tool.cpu(), extra_cpu() if extra_cpu else 0.0, time.monotonic(), H.host_cpu()
        procs_seen = host_processes()
        last_rss = 0.0
        while (now := time.monotonic()) - t0 < args.duration:
            if now - last_rss >= 0.5:
                tool.sample_rss()
                last_rss = now
            progress.update(task, completed=args.warmup + now - t0, description=f"{label}: {counter() - c0} intervals")
            if not tool.alive():
                raise RuntimeError(f"{label} exited with {tool.proc.returncode}:\n{tool.log_tail()}")
            time.sleep(0.05)
        c1 = wait_for_interval(counter(), time.monotonic() + 10 * args.interval + 60)
        cpu1, extra1, t1, host1 = tool.cpu(), extra_cpu() if extra_cpu else 0.0, time.monotonic(), H.host_cpu()
        tool.sample_rss()
    finally:
        progress.remove_task(task)
    wall = t1 - t0
    cpu, extra = cpu1 - cpu0, extra1 - extra0
    return {
        "window_s": round(wall, 3),
        "intervals": c1 - c0,
        "cpu_s": round(cpu, 3),
        "helper_cpu_s": round(extra, 3) if extra_cpu else None,
        "peak_rss_mb": round(H.mib(tool.peak_rss), 1),
        "host_processes": procs_seen,
        "others_cpus_busy": round((host1[0] - host0[0] - cpu - extra) / wall, 2) if wall > 0 else None,
    }


# --- the tools ------------------------------------------------------------------------------------


def run_fleetmon(pids: list[int], args, workdir: Path, progress: Progress) -> dict:
    r = fleet.run_daemon(pids, args.workers, args.interval, args.duration, max(args.warmup, 2.0), 1440, workdir, progress,
                         interleave=False)
    return {
        "watched": len(pids),
        "window_s": r["window_s"],
        "intervals": r["ticks"],
        "cpu_s": r["cpu_s"],
        "helper_cpu_s": None,
        "peak_rss_mb": r["total_rss_mb"],
        "others_cpus_busy": r["others_cpus_busy"],
        "version": version([sys.executable, "-m", "fleetmon", "--version"]),
        "config": f"fleetmon run --workers {args.workers} --interval {args.interval:g}s, limits on every agent",
        "detail": {k: r[k] for k in ("samples", "missed_ticks", "tick_latency_p50_s", "tick_latency_p99_s",
                                      "cpu_per_sample_us", "cpu_per_sample_us_by_role", "writer_rss_mb",
                                      "agents_with_points", "daemon_exit_code")},
    }


def _scrape_loop(url: str, interval: float, stop, count, groups, size, failed) -> None:
    """The scraper (a process of its own): GET ``url`` every ``interval``, read it whole, count the
    groups in it; no catching up after a late scrape."""
    next_at = time.monotonic()
    while not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                body = r.read()
            groups.value = body.count(b"namedprocess_namegroup_num_procs{")
            size.value = len(body)
            count.value += 1
        except OSError:
            failed.value += 1
        next_at += interval
        delay = next_at - time.monotonic()
        if delay < 0:
            next_at = time.monotonic()
        stop.wait(max(0.0, delay))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, tool: ToolRun, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if not tool.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"process-exporter did not listen on {port}:\n{tool.log_tail()}") from None
            time.sleep(0.1)


def run_process_exporter(pids: list[int], args, workdir: Path, progress: Progress, token: str) -> dict:
    import multiprocessing

    config = workdir / "process-exporter.yml"
    # one group per process: the group name carries the pid (a template process-exporter fills in)
    config.write_text(
        f"process_names:\n  - name: \"agent-{{{{.PID}}}}\"\n    cmdline:\n    - '^sleep 1000000\\.{token}$'\n"
    )
    port = _free_port()
    argv = [EXPORTER, "-config.path", str(config), "-web.listen-address", f"127.0.0.1:{port}", *shlex.split(args.exporter_flags)]
    tool = scraper = None
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    count, groups, size, failed = (ctx.Value("q", 0) for _ in range(4))
    try:
        tool = ToolRun(argv, workdir / "process-exporter.log")
        _wait_listening(port, tool)
        scraper = ctx.Process(target=_scrape_loop, args=(f"http://127.0.0.1:{port}/metrics", args.interval, stop, count,
                                                          groups, size, failed), daemon=True)
        scraper.start()
        r = measure(tool, lambda: count.value, "process-exporter", args, progress,
                    extra_cpu=lambda: H.cpu_seconds(scraper.pid))
    finally:
        with H.cleanup():
            stop.set()
            if scraper is not None:
                H.join_or_kill(scraper)
            if tool is not None:
                tool.stop()
    r.update(
        watched=groups.value,
        pids=sorted(tool.seen) + [scraper.pid],
        version=version([EXPORTER, "-version"]),
        config=f"one group per pid (agent-{{{{.PID}}}}, cmdline matcher), {args.exporter_flags}; scraped every "
        f"{args.interval:g}s",
        detail={"groups_in_last_scrape": groups.value, "scrape_bytes": size.value, "failed_scrapes": failed.value,
                "per_process_metrics": ["cpu_seconds_total (user, system)", "memory_bytes (resident, virtual, swapped)",
                                        "read_bytes_total", "write_bytes_total", "open_filedesc", "worst_fd_ratio",
                                        "num_threads", "num_procs", "states", "context_switches_total",
                                        "major/minor_page_faults_total", "oldest_start_time_seconds", "threads_wchan"]},
    )
    return r


class LineCounter:
    """Counts the lines of a pipe that start with ``prefix``, in a thread; the rest is thrown away."""

    def __init__(self, stream, prefix: bytes):
        self.count = 0
        self._stream, self._prefix = stream, prefix
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for line in self._stream:
                if line.startswith(self._prefix):
                    self.count += 1
        except (OSError, ValueError):  # closed under us at stop
            pass


def run_apps_plugin(pids: list[int], args, workdir: Path, progress: Progress) -> dict:
    every = max(1, round(args.interval))
    tool = None
    try:
        # stdin must stay open: the plugin exits when it reads EOF there (netdata talks to it on it)
        tool = ToolRun([APPS_PLUGIN, str(every)], workdir / "apps.plugin.log", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        lines = LineCounter(tool.proc.stdout, b"BEGIN apps.cpu ")
        r = measure(tool, lambda: lines.count, "apps.plugin", args, progress)
    finally:
        with H.cleanup():
            if tool is not None:
                tool.stop()
    r.update(
        watched=len(pids),
        pids=sorted(tool.seen),
        version=version([APPS_PLUGIN, "-v"]),
        config=f"standalone `apps.plugin {every}`, default apps_groups.conf, output discarded; reads all "
        f"{r['host_processes']} processes of the host",
    )
    return r


class BurstCounter:
    """Monit's cycles, from outside: bursts of its read syscalls (``syscr`` in /proc/<pid>/io, polled
    every 50 ms by a thread) separated by a quiet spell (it sleeps a whole interval after a cycle). A
    burst counts once it is over, at the first poll that finds it quiet (``ends``: when)."""

    POLL = 0.05  # seconds: the resolution of ``ends``

    def __init__(self, pid: int, quiet: float = 0.3):
        self.count = 0
        self.ends: list[float] = []
        self._pid, self._quiet = pid, quiet
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _syscr(self) -> int | None:
        try:
            with open(f"/proc/{self._pid}/io", "rb") as f:
                for line in f:
                    if line.startswith(b"syscr:"):
                        return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return None

    def _poll(self) -> None:
        last, changed_at, in_burst = self._syscr(), time.monotonic(), False
        while not self._stop.wait(self.POLL):
            now, value = time.monotonic(), self._syscr()
            if value is None:
                return
            if value != last:
                last, changed_at, in_burst = value, now, True
            elif in_burst and now - changed_at >= self._quiet:
                in_burst = False
                self.ends.append(now)
                self.count += 1

    def cycle(self) -> float | None:
        """Seconds from one cycle to the next, from the first burst seen to the last (None: under two).
        The window's intervals over its length count a burst at either edge whole, by up to a cycle."""
        ends = self.ends
        return (ends[-1] - ends[0]) / (len(ends) - 1) if len(ends) >= 2 else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def run_monit(pids: list[int], args, workdir: Path, progress: Progress) -> dict:
    pids = pids[: args.monit_agents] if args.monit_agents else pids
    every = max(1, round(args.interval))
    d = workdir / "monit"
    (d / "pids").mkdir(parents=True, exist_ok=True)
    lines = [f"set daemon {every}", f"set logfile {d / 'monit.log'}", f"set pidfile {d / 'monit.pid'}",
             f"set idfile {d / 'monit.id'}", f"set statefile {d / 'monit.state'}"]
    for agent_id, pid in zip(H.agent_ids(len(pids)), pids, strict=True):
        pidfile = d / "pids" / f"{agent_id}.pid"
        pidfile.write_text(f"{pid}\n")
        lines.append(f"check process {agent_id} with pidfile {pidfile}")
    rc = d / "monitrc"
    rc.write_text("\n".join(lines) + "\n")
    rc.chmod(0o600)  # monit refuses a control file others can read
    tool = bursts = None
    try:
        tool = ToolRun([MONIT, "-I", "-c", str(rc)], d / "monit.out")
        bursts = BurstCounter(tool.pid)
        r = measure(tool, lambda: bursts.count, "monit", args, progress)
    finally:
        with H.cleanup():
            if bursts is not None:
                bursts.close()
            if tool is not None:
                tool.stop()
    try:
        log = (d / "monit.log").read_text(errors="replace")
    except FileNotFoundError:
        log = ""
    r.update(
        watched=len(pids),
        pids=sorted(tool.seen),
        version=version([MONIT, "-V"]),
        config=f"{len(pids)} x `check process ... with pidfile`, `set daemon {every}`, no tests, no alerts",
        detail={"cycle_s": None if (cycle := bursts.cycle()) is None else round(cycle, 3),
                "cycle_resolution_s": BurstCounter.POLL,
                "not_running_logged": log.count("not running")},
    )
    return r


# --- the run --------------------------------------------------------------------------------------


def missing(tool: str) -> str | None:
    """Why ``tool`` cannot run here, or None."""
    if tool == "fleetmon":
        return None
    binary, package = BINARIES[tool]
    if not os.access(binary, os.X_OK):
        return f"{binary} not found (Debian package {package}; --install installs it)"
    return None


def install(tools: list[str]) -> None:
    packages = sorted({BINARIES[t][1] for t in tools if t != "fleetmon" and missing(t)})
    if packages:
        console.print(f"apt-get install -y {' '.join(packages)} ...")
        subprocess.run(["apt-get", "install", "-y", *packages], check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def run(args: argparse.Namespace) -> dict:
    if args.install:
        install(args.tools)
    n = args.agents
    token = f"{secrets.randbelow(10**6):06d}"  # the fleet's command line, unique to this run
    workdir = Path(tempfile.mkdtemp(prefix="fleetmon-competitors-", dir=args.workdir or H.default_workdir()))
    fleet_procs = H.Fleet()
    rows: list[dict] = []
    bare_runs: list[dict] = []  # the bare psutil loop before each tool, and after the last
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console,
                      transient=True) as progress:
            spawn = progress.add_task(f"spawning {n} processes", total=n)
            pids = fleet_procs.spawn(n, progress=lambda i, total: progress.update(spawn, completed=i),
                                     idle_argv=["sleep", f"1000000.{token}"])
            progress.remove_task(spawn)

            def bare() -> dict:
                task = progress.add_task(f"bare psutil loop ({len(bare_runs) + 1})", total=None)
                bare_runs.append(baselines.psutil_baseline("bare", pids, args.baseline_seconds))
                progress.remove_task(task)
                return bare_runs[-1]

            for tool in args.tools:
                why = missing(tool)
                if why:
                    console.print(f"[yellow]skipped {tool}: {why}")
                    rows.append({"tool": tool, "skipped": why})
                    continue
                bare()
                try:
                    if tool == "fleetmon":
                        r = run_fleetmon(pids, args, workdir, progress)
                    elif tool == "process-exporter":
                        r = run_process_exporter(pids, args, workdir, progress, token)
                    elif tool == "apps.plugin":
                        r = run_apps_plugin(pids, args, workdir, progress)
                    else:
                        r = run_monit(pids, args, workdir, progress)
                except RuntimeError as exc:  # it did not start or stopped working: the others still run
                    console.print(f"[red]{tool} failed: {exc}")
                    rows.append({"tool": tool, "skipped": f"failed: {str(exc).splitlines()[0]}", "error": str(exc)})
                    continue
                rows.append({"tool": tool, "bare_run": len(bare_runs) - 1, **r})
            bare()
    finally:
        with H.cleanup():
            fleet_procs.stop()
            shutil.rmtree(workdir, ignore_errors=True)
    bare_all = [b["cpu_per_sample_us"] for b in bare_runs]
    for r in rows:
        if "skipped" in r:
            continue
        i = r.pop("bare_run")
        bare_us = statistics.mean(bare_all[i : i + 2])
        r["bare_cpu_per_sample_us"] = round(bare_us, 2)
        per = r["watched"] * r["intervals"]
        r["cpu_per_process_interval_us"] = round(r["cpu_s"] / per * 1e6, 2) if per else None
        r["helper_cpu_per_process_interval_us"] = (
            round(r["helper_cpu_s"] / per * 1e6, 2) if per and r["helper_cpu_s"] is not None else None
        )
        r["cpu_vs_bare"] = H.ratio(r["cpu_per_process_interval_us"], bare_us)
        if r["tool"] in SCANS_HOST:  # what it costs per process it read, the fleet's or not
            hp = r["host_processes"] * r["intervals"]
            r["cpu_per_host_process_interval_us"] = round(r["cpu_s"] / hp * 1e6, 2) if hp else None
        r["gives"] = GIVES[r["tool"]]
        if r["tool"] in BINARIES:
            r["package"] = f"{BINARIES[r['tool']][1]} {package_version(r['tool'])}"
    return {
        "benchmark": "competitors",
        "command": "python -m benchmarks.competitors " + " ".join(
            f"--{k.replace('_', '-')} {shlex.quote(','.join(v) if isinstance(v, list) else str(v))}"
            for k, v in vars(args).items()
            if k not in ("out", "workdir", "install") and v is not None
        ),
        "machine": H.machine(),
        # run as pid 1: in a PID namespace of its own (unshare --pid --fork --mount-proc), /proc lists the fleet only
        "own_pid_namespace": os.getpid() == 1,
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"},
        "fleet_command": f"sleep 1000000.{token}",
        "bare_runs": bare_runs,
        "bare_cpu_per_sample_us": round(statistics.mean(bare_all), 2) if bare_all else None,
        "tools": rows,
    }


def table(result: dict) -> Table:
    p = result["params"]
    t = Table(title=f"{p['agents']} idle processes sampled every {p['interval']:g}s, {p['duration']:g}s per tool"
                    + (", in a PID namespace of their own" if result["own_pid_namespace"] else ""))
    for col in ("tool", "watched", "host procs", "intervals", "CPU/process/interval", "bare psutil", "x bare",
                "+ scraper", "peak RSS", "others", "what it gives"):
        t.add_column(col, justify="left" if col in ("tool", "what it gives") else "right",
                     overflow="fold", max_width=60 if col == "what it gives" else None)
    for r in result["tools"]:
        if "skipped" in r:
            t.add_row(r["tool"], *["-"] * 9, f"skipped: {r['skipped']}")
            continue
        t.add_row(
            r["tool"], str(r["watched"]), str(r["host_processes"]) if r["tool"] in SCANS_HOST else "-",
            str(r["intervals"]), H.fmt(r["cpu_per_process_interval_us"], ".1f", " us"),
            H.fmt(r["bare_cpu_per_sample_us"], ".1f", " us"), H.fmt(r["cpu_vs_bare"], ".2f"),
            H.fmt(r["helper_cpu_per_process_interval_us"], ".1f", " us"), H.fmt(r["peak_rss_mb"], ".0f", " MB"),
            H.fmt(r["others_cpus_busy"], ".2f"), r["gives"],
        )
    t.caption = (
        "CPU/process/interval: utime+stime of the tool's processes / (processes watched x intervals done); "
        "host procs: the host's processes, which the tool reads every interval (fleetmon reads its agents only); "
        "bare psutil: the bare psutil loop's CPU per process per pass, mean of its runs just before and after the "
        "tool; x bare: the ratio; + scraper: process-exporter's scraper, apart; others: CPUs the rest of the host "
        "kept busy"
    )
    return t


main = H.entry_point("competitors", parse_args, run, table, width=200)

if __name__ == "__main__":
    H.run_script(main)
