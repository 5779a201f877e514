"""Shared parts of the benchmarks: a fleet of real processes, the real daemon watched from /proc, the
psutil baselines, and the output (a rich table and a JSON file under ``benchmarks/results/``).

Every process started here is remembered by pid and ended by pid (also on Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

BUSY_CODE = """
import time
while True:  # about 20% of one CPU
    end = time.monotonic() + 0.02
    while time.monotonic() < end:
        pass
    time.sleep(0.08)
"""
MEMORY_CODE = """
import sys, time
block = bytearray(int(sys.argv[1]) * 1024 * 1024)
block[::4096] = b"x" * len(block[::4096])
time.sleep(10**9)
"""


# --- signals ----------------------------------------------------------------------------------


class _Interrupts:
    interrupted = False  # a SIGINT or SIGTERM came (under sigterm_as_interrupt)
    pending = False  # ... while cleanup code ran: raised once it is done
    depth = 0  # cleanup() blocks running


_interrupts = _Interrupts()


@contextmanager
def _handled_by(handler):
    """SIGINT and SIGTERM go to ``handler`` inside the block; the handlers they had (yielded, by
    signal) are put back after it."""
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield old
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt (like Ctrl-C), so every ``finally`` cleans up. Only the first
    SIGINT or SIGTERM does, and one that comes while cleanup code runs (``cleanup()``) is raised once
    that code is done: a second Ctrl-C, or a SIGTERM after one, would otherwise cut a cleanup short
    and leave the daemon, a baseline process or a state dir behind."""
    state = _interrupts

    def handler(signum, frame):
        if state.interrupted:
            os.write(2, b"still stopping every process started: please wait\n")
            return
        state.interrupted = True
        if state.depth:
            state.pending = True
            return
        raise KeyboardInterrupt

    state.interrupted = state.pending = False
    try:
        with _handled_by(handler):
            yield
    finally:
        state.interrupted = state.pending = False


@contextmanager
def cleanup():
    """Code that stops what was started: a SIGINT or SIGTERM meanwhile (under
    ``sigterm_as_interrupt``) is raised as KeyboardInterrupt only when the outermost such block is
    done, so the block runs to its end."""
    state = _interrupts
    state.depth += 1
    try:
        yield
    finally:
        state.depth -= 1
    if state.pending and not state.depth:
        state.pending = False
        raise KeyboardInterrupt


# --- /proc ------------------------------------------------------------------------------------


def read_stat(pid: int) -> list[bytes] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 = state), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data[data.rfind(b")") + 2 :].split()


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime+stime of a process (plus cutime+cstime of its reaped children when asked)."""
    f = read_stat(pid)
    if f is None:
        return 0.0
    ticks = int(f[11]) + int(f[12])  # utime, stime
    if children:
        ticks += int(f[13]) + int(f[14])  # cutime, cstime
    return ticks / CLK_TCK


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0


def children_of(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
        except FileNotFoundError:
            pass
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children_of(p)
    return tree


def host_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole host so far, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


def disk_written(path: Path) -> int | None:
    """Bytes written so far to the block device holding ``path`` (the whole host's writes to it),
    from /proc/diskstats; None where that cannot be told (tmpfs, overlay ...)."""
    st = os.stat(path)
    try:
        name = os.path.basename(os.readlink(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}"))
        with open("/proc/diskstats") as f:
            for line in f:
                fields = line.split()
                if fields[2] == name:
                    return int(fields[9]) * 512
    except (OSError, IndexError, ValueError):
        pass
    return None


def pid_alive(pid: int) -> bool:
    f = read_stat(pid)
    return f is not None and f[0] != b"Z"


def started(pid: int) -> int | None:
    """When the process at ``pid`` started (clock ticks since boot), or None if there is none: with
    the pid, what tells a process seen earlier from a stranger given its pid since."""
    f = read_stat(pid)
    return None if f is None else int(f[19])


def kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def join_or_kill(proc, timeout: float = 10.0) -> None:
    """Wait up to ``timeout`` for a child process (multiprocessing's) to end; then kill it by pid."""
    proc.join(timeout)
    if proc.is_alive():
        kill_pids([proc.pid])
        proc.join(5)


# --- the fleet --------------------------------------------------------------------------------


class Fleet:
    """N real processes to watch: idle ``sleep`` by default, optionally some busy (~20% of a CPU)
    and some holding memory. Ended by pid in ``stop()``."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def spawn(
        self, n: int, busy: int = 0, memory: int = 0, memory_mb: int = 50, progress=None, idle_argv: list[str] | None = None
    ) -> list[int]:
        """``idle_argv``: the command line of the idle processes (default ``sleep 1000000``), e.g. one
        a tool can match on to find exactly this fleet."""
        kinds = [("busy", [sys.executable, "-c", BUSY_CODE])] * busy
        kinds += [("memory", [sys.executable, "-c", MEMORY_CODE, str(memory_mb)])] * memory
        kinds += [("idle", idle_argv or ["sleep", "1000000"])] * max(0, n - busy - memory)
        # A SIGINT or SIGTERM while Popen forks would raise inside it, after the child exists but
        # before it is in self.procs, where stop() would never see it: hold them until it is.
        held: list[int] = []
        with _handled_by(lambda signum, frame: held.append(signum)) as old:
            for i, (_, argv) in enumerate(kinds):
                self.procs.append(
                    subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                )
                if held:
                    break
                if progress is not None and i % 100 == 0:
                    progress(i + 1, len(kinds))
        for signum in held[:1]:  # as the handler in place would have had it
            if callable(old[signum]):
                old[signum](signum, None)
            elif old[signum] == signal.SIG_DFL:
                signal.raise_signal(signum)
        return self.pids

    def stop(self) -> None:
        with cleanup():
            kill_pids(p.pid for p in self.procs if p.returncode is None and p.poll() is None)
            for p in self.procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            self.procs.clear()


def default_workdir() -> Path:
    """Beside fleetmon's default state dir: the filesystem a real deployment writes to (/tmp may be
    another one, such as a tmpfs)."""
    from fleetmon.store.layout import default_state_dir

    parent = default_state_dir().parent
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def file_create_us(directory: Path, n: int = 200) -> float:
    """CPU to create (and close) one empty file in a fresh directory under ``directory``, in us:
    context for the writer's per-agent files, whose cost it dominates (on the machine these scripts
    were written on, it ranged from ~13 to ~600 us from one directory, or hour, to the next)."""
    import resource
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="create-probe-", dir=directory))
    try:
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        for i in range(n):
            os.close(os.open(d / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return round((r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / n * 1e6, 1)


def agent_ids(n: int) -> list[str]:
    return [f"bench-{i:05d}" for i in range(n)]


def write_registry(state_dir: Path, pids: list[int]) -> list[str]:
    """Register every pid (plain writes, before the daemon starts: no atomic replace needed)."""
    from fleetmon.store.layout import StateDir

    state = StateDir(state_dir).create()
    ids = agent_ids(len(pids))
    for agent_id, pid in zip(ids, pids, strict=True):
        fd = os.open(state.registry_file(agent_id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, json.dumps({"id": agent_id, "pid": pid}).encode())
        os.close(fd)
    return ids


# --- the daemon -------------------------------------------------------------------------------

# Limits on every agent, as a production config would set them, far above what the benchmark's
# processes use: the writer checks each sample against them, and no alert fires.
THRESHOLDS = {"cpu_threshold": 95, "memory_threshold": 8 << 30, "open_files_threshold": 100_000, "threshold_duration": 300}
THRESHOLDS_CONFIG = "[thresholds.default]\n" + "".join(f"{key} = {value}\n" for key, value in THRESHOLDS.items())


def thresholds_flag(parser) -> None:
    """``--thresholds/--no-thresholds``: THRESHOLDS on every agent of the daemon runs (default on)."""
    parser.add_argument(
        "--thresholds",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="give every agent limits, as a production config would (none crossed; default on)",
    )


class Watched:
    """A process started here, watched from /proc with its whole tree (reaped children included).
    ``stop`` TERMs it, KILLs it after ``timeout``, then KILLs by pid whatever of its tree is left,
    and only what is still the process seen there (not a stranger given its pid since)."""

    def __init__(self, argv: list[str], log_path: Path, stdin=subprocess.DEVNULL, stdout=None, cwd: Path | None = None):
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout or self._log, stderr=self._log, cwd=cwd)
        self.pid = self.proc.pid
        # Every process seen in the tree, by pid, with its start time.
        self.seen: dict[int, int | None] = {self.pid: started(self.pid)}

    def tree(self) -> list[int]:
        pids = process_tree(self.pid)
        for p in pids:
            if p not in self.seen or self.seen[p] is None:
                self.seen[p] = started(p)
        return pids

    def cpu(self) -> float:
        """CPU seconds of the whole tree: every live process of it, plus what the top process's
        reaped children (replaced ones) used."""
        tree = self.tree()
        return sum(cpu_seconds(p) for p in tree if p != self.pid) + cpu_seconds(self.pid, children=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 30.0, linger: float = 5.0) -> int | None:
        """``linger``: seconds given to the rest of the tree to exit on its own first (the daemon's
        children notice their parent's death)."""
        with cleanup():
            if self.proc.poll() is None:
                self.tree()
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            leftovers = [p for p, start in self.seen.items() if p != self.pid and start is not None and pid_alive(p)]
            deadline = time.monotonic() + linger
            while leftovers and time.monotonic() < deadline:
                time.sleep(0.05)
                leftovers = [p for p in leftovers if pid_alive(p)]
            kill_pids(p for p in leftovers if started(p) == self.seen[p])
            for f in (self.proc.stdin, self.proc.stdout):
                if f is not None:
                    f.close()
            self._log.close()
        return self.proc.returncode


class DaemonRun(Watched):
    """``python -m fleetmon run`` on a state dir, with the opt-in timing log, watched from /proc."""

    def __init__(self, state_dir: Path, workers: int, interval: float, history_size: int = 1440, extra_config: str = ""):
        self.state_dir = state_dir
        self.timing_path = state_dir.parent / f"{state_dir.name}-ticks.jsonl"
        self.config_path = state_dir.parent / f"{state_dir.name}.toml"
        self.timing_path.unlink(missing_ok=True)  # a run of its own, even on a state dir used before
        self.config_path.write_text(
            f'timing_log = "{self.timing_path}"\nhistory_size = {history_size}\nstall_timeout = "60s"\n{extra_config}'
        )
        super().__init__(
            [
                sys.executable,
                "-m",
                "fleetmon",
                "run",
                "--state-dir",
                str(state_dir),
                "--config",
                str(self.config_path),
                "--workers",
                str(workers),
                "--interval",
                f"{interval}s",
                "--log-level",
                "WARNING",
            ],
            state_dir.parent / f"{state_dir.name}-daemon.log",
            cwd=state_dir.parent,  # not the checkout: fleetmon is imported as installed (or from PYTHONPATH)
        )
        self.ticks: list[dict] = []
        self._timing_pos = 0
        self._partial = b""
        self.peak_writer_rss = 0
        self.peak_total_rss = 0

    # --- observation ---

    def writer_pid(self) -> int | None:
        try:
            return json.loads((self.state_dir / "daemon.json").read_text())["writer_pid"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return None

    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds by role: ``supervisor`` (with reaped children), ``writer``, ``workers``."""
        wp = self.writer_pid()
        out = {"supervisor": cpu_seconds(self.pid, children=True), "writer": 0.0, "workers": 0.0}
        for p in self.tree():
            if p == self.pid:
                continue
            out["writer" if p == wp else "workers"] += cpu_seconds(p)
        return out

    def sample_rss(self) -> tuple[int, int]:
        total = sum(rss_bytes(p) for p in self.tree())
        wp = self.writer_pid()
        writer = rss_bytes(wp) if wp else 0
        self.peak_total_rss = max(self.peak_total_rss, total)
        self.peak_writer_rss = max(self.peak_writer_rss, writer)
        return writer, total

    def poll_ticks(self) -> list[dict]:
        """New lines of the timing log (one per persisted tick)."""
        try:
            with open(self.timing_path, "rb") as f:
                f.seek(self._timing_pos)
                data = f.read()
        except FileNotFoundError:
            return []
        self._timing_pos += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        new = [json.loads(line) for line in lines if line.strip()]
        self.ticks += new
        return new


# --- statistics and output --------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def finish(name: str, result: dict, out: Path | None, rendered, width: int) -> Path:
    """The end of every benchmark: the JSON to ``out`` (or ``results/<name>-<time>.json``), the
    table to stdout, and where the JSON went to stderr. Returns the JSON's path."""
    from rich.console import Console

    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        path = out
    else:
        path = write_json(name, result)
    Console(width=max(Console().width, width)).print(rendered)
    Console(stderr=True).print(f"JSON: {path}")
    return path


def entry_point(name: str, parse_args, run, table, width: int, after=None):
    """A benchmark script's ``main(argv=None) -> dict``: parse the flags, run with SIGTERM taken as
    Ctrl-C (so every process it started is stopped), ``finish``, then ``after(args, result)`` if
    given (a plot)."""

    def main(argv: list[str] | None = None) -> dict:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        with sigterm_as_interrupt():
            result = run(args)
        finish(name, result, args.out, table(result), width)
        if after is not None:
            after(args, result)
        return result

    return main


def run_script(main) -> None:
    """``if __name__ == "__main__"`` of a benchmark script: exit 130 on Ctrl-C, once cleaned up."""
    from rich.console import Console

    try:
        main()
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted: every process started was stopped")
        sys.exit(130)


def write_json(name: str, data: dict, directory: Path | None = None) -> Path:
    """``results/<name>-<timestamp>.json`` and a copy as ``results/<name>-latest.json``."""
    directory = directory or RESULTS
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    path = directory / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(text)
    (directory / f"{name}-latest.json").write_text(text)
    return path


def machine() -> dict:
    import platform

    import psutil

    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "psutil": psutil.__version__,
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg(),
    }


def names(text: str) -> list[str]:
    """A comma-separated flag value (``--reader procfs,psutil``) as a list."""
    return [x for x in text.split(",") if x]


# --- flag types: refused when parsed, before a fleet is spawned ---------------------------------


def count(minimum: int = 1):
    """An argparse type: a whole number at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}: {text!r}")
        return value

    return parse


def counts(minimum: int = 1):
    """An argparse type: comma-separated whole numbers, each at least ``minimum`` (``--agents 1000,2000``)."""
    one = count(minimum)

    def parse(text: str) -> list[int]:
        values = [one(x) for x in names(text)]
        if not values:
            raise argparse.ArgumentTypeError("give at least one number")
        return values

    return parse


def seconds(text: str) -> float:
    """An argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def readers(text: str) -> list[str]:
    """An argparse type: fleetmon's process readers, comma-separated (``auto``, ``procfs``, ``psutil``)."""
    from fleetmon.workers.sampler import READERS

    chosen = names(text)
    wrong = [r for r in chosen if r not in READERS]
    if wrong or not chosen:
        raise argparse.ArgumentTypeError(f"readers are {', '.join(READERS)}, comma-separated: not {text!r}")
    return chosen


def fmt(value, spec: str = ".1f", unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:{spec}}{unit}"


def mib(n: int | float | None) -> float | None:
    return None if n is None else n / 2**20
