"""``fleetmon demo``: a small live fleet of its own, watched by a real daemon, then cleaned up.

Spawns idle agents, a CPU hog, a memory grower and an fd leaker, registers them with thresholds,
runs ``fleetmon run`` in a subprocess with a short interval, and shows live status. Every process it
started is stopped by its pid at the end or on Ctrl-C; the state dir is left behind to explore.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from fleetmon.store import queries
from fleetmon.store.layout import StateDir
from fleetmon.supervisor import registry as reg
from fleetmon.wire import Thresholds

HOG = "import time\nend = time.time() + 3600\nwhile time.time() < end: pass\n"
GROWER = (
    "import time\nblocks = []\n"
    "for _ in range(3600):\n"
    "    if len(blocks) < 40: blocks.append(bytearray(8 * 1024 * 1024))\n"
    "    for b in blocks[-1:]:\n"
    "        b[::4096] = b'x' * len(b[::4096])\n"
    "    time.sleep(1)\n"
)
LEAKER = (
    "import os, time\nfds = []\n"
    "for _ in range(36000):\n"
    "    if len(fds) < 400: fds += [os.open(os.devnull, os.O_RDONLY) for _ in range(8)]\n"
    "    time.sleep(1)\n"
)
IDLE = "import time\ntime.sleep(3600)\n"

KINDS = [
    ("cpu-hog", "batch", HOG, Thresholds(cpu_threshold=50, threshold_duration=5)),
    ("mem-grower", "worker", GROWER, Thresholds(memory_threshold=128 * 2**20, threshold_duration=5)),
    ("fd-leaker", "worker", LEAKER, Thresholds(open_files_threshold=64, threshold_duration=5)),
]


MAX_AGENTS = 200


def run(state: StateDir | None, agents: int, duration: float, interval: float, console: Console | None = None) -> int:
    # Piped or logged, lines are not cut at 80 columns (the commands it prints are copied from there).
    console = console or Console(highlight=False, soft_wrap=not sys.stdout.isatty())
    if state is None or str(state.root) == "":
        state = StateDir(Path(tempfile.mkdtemp(prefix="fleetmon-demo-")))
    state.create()
    procs: list[subprocess.Popen] = []
    daemon: subprocess.Popen | None = None
    try:
        for i in range(agents):
            name, agent_type, code, limits = KINDS[i] if i < len(KINDS) else (f"idle-{i - len(KINDS) + 1}", "default", IDLE, Thresholds(cpu_threshold=50, memory_threshold=256 * 2**20))
            p = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdin=subprocess.DEVNULL)
            procs.append(p)
            reg.write_entry(state.registry, reg.RegistryEntry(name, agent_type, p.pid, None, limits))
        log_path = state.root / "demo.log"
        # (0600 as every file of the state dir; the directory is new, but a link is never followed)
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "ab") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "fleetmon", "run", "--state-dir", str(state.root), "--interval", f"{interval}s",
                 "--workers", "2", "--log-level", "INFO"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
        console.print(f"fleetmon demo: {agents} agents, daemon pid {daemon.pid}, state dir {state.root} (log: {log_path})", markup=False)
        console.print(f"running for {duration:g}s; Ctrl-C stops earlier")
        _watch(state, daemon, duration, console)
    except KeyboardInterrupt:
        console.print("interrupted: cleaning up")
    finally:
        code = _stop_daemon(daemon)
        _stop_agents(procs)
    summary = queries.alerts(state, 24 * 3600)
    prog = _prog()
    console.print(
        f"demo done: daemon exited {code}, {len(summary.events)} alert events recorded. Explore with:\n"
        f"  {prog} status --state-dir {state.root}\n"
        f"  {prog} alerts --state-dir {state.root}\n"
        f"  {prog} top --state-dir {state.root}\n"
        f"  {prog} history cpu-hog --state-dir {state.root} --every 5s",
        markup=False,  # (a path may hold brackets)
    )
    return 0 if code == 0 else 1


def _prog() -> str:
    """How the user can call fleetmon again: ``fleetmon`` when that is on PATH and is this one, else
    the path of the script that is running (e.g. ``.venv/bin/fleetmon`` after ``./dev demo``)."""
    import shutil

    here = os.path.realpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    on_path = shutil.which("fleetmon")
    if on_path and (not here.endswith("fleetmon") or os.path.realpath(on_path) == here):
        return "fleetmon"
    if not here.endswith("fleetmon"):
        return f"{sys.executable} -m fleetmon"
    rel = os.path.relpath(here)  # below the working directory (not /): shorter, and still a path to the shell
    return rel if os.getcwd() != "/" and not rel.startswith("..") else here


def _view(state: StateDir) -> Group:
    from fleetmon.supervisor import render

    console = Console(width=120, record=True, file=open(os.devnull, "w"))
    render.status_view(queries.status(state), console)
    events = queries.alerts(state, 3600).events[-6:]
    lines = [Text.from_markup(f"[{render.STATE_STYLE[e.state]}]{e.timestamp[11:19]} {e.agent_id} {e.resource} {e.state}[/]") for e in events]
    return Group(Text.from_ansi(console.export_text(styles=True)), Text("recent alerts:", style="bold"), *lines)


def _watch(state: StateDir, daemon: subprocess.Popen, duration: float, console: Console) -> None:
    deadline = time.monotonic() + duration
    if console.is_terminal:
        with Live(_view(state), console=console, refresh_per_second=2) as live:
            while time.monotonic() < deadline and daemon.poll() is None:
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                live.update(_view(state))
    else:
        seen = 0
        while time.monotonic() < deadline and daemon.poll() is None:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            events = queries.alerts(state, 3600).events
            for e in events[seen:]:
                console.print(f"{e.timestamp} {e.agent_id} {e.resource} -> {e.state}")
            seen = len(events)
    if daemon.poll() is not None:
        console.print(f"[red]the daemon exited early ({daemon.returncode}); see {escape(str(state.root / 'demo.log'))}[/]")


def _stop_daemon(daemon: subprocess.Popen | None) -> int | None:
    if daemon is None:
        return None
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            return daemon.wait(timeout=20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            return daemon.wait()
    return daemon.returncode


def _stop_agents(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + 5
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
