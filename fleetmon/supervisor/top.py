"""``fleetmon top``: a live full-screen view of the fleet, read from the state dir.

Agents sorted by cpu (``c``), memory (``m``) or open fds (``f``), busiest first; ``q`` quits. A header
shows the pool's health (daemon state, workers, last tick, how far persisting lags behind, alerts).
With thousands of agents only the rows that fit the terminal are drawn.

``render`` is pure (status in, renderable out) so that it can be tested on a string console; ``run``
owns the terminal: cbreak mode for single keys, read with a select timeout, always restored.
"""

from __future__ import annotations

import os
import re
import select
import sys
import termios
import time
import tty

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from fleetmon.store import queries
from fleetmon.store.layout import StateDir
from fleetmon.supervisor.render import STATE_STYLE, STATUS_STYLE, daemon_state, fleet_counts, sort_agents
from fleetmon.units import format_size, parse_rfc3339

SORT_KEYS = {"c": "cpu", "m": "memory", "f": "fds"}
SORT_LABEL = {"cpu": "cpu", "memory": "memory (RSS)", "fds": "open fds"}
FOOTER_LINES = 1
ESCAPES = re.compile(r"\x1b(\[[0-9;?]*[@-~]|O.|.)?")  # arrow keys and the like: not commands


def handle_key(key: str, sort_key: str) -> tuple[str, bool]:
    """One key press -> (sort key, quit?). Unknown keys change nothing."""
    k = key.lower()
    if k == "q":
        return sort_key, True
    return SORT_KEYS.get(k, sort_key), False


def _ago(seconds: float) -> str:
    if seconds < 0:
        seconds = 0.0
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def health_lines(status, now: float, run_dir=None) -> list[Text]:
    """The header: the daemon and its pool (its state as ``status`` says it), then the fleet's counts."""
    d = status.daemon
    agents = status.agents
    lines: list[Text] = []
    if d is None:
        lines.append(Text("daemon: none has run on this state dir (start `fleetmon run`)", style="yellow"))
    else:
        interval = d.interval or 60.0
        age = now - parse_rfc3339(d.updated)
        state = daemon_state(d, run_dir, now)
        style = {"running": "green", "not recording": "bold red"}.get(state, "dim")
        persisted = d.persisted_tick if d.persisted_tick is not None else 0
        lag = max(0, d.tick - persisted)
        line = Text("daemon: ")
        line.append(state, style=style)
        line.append(f"  supervisor {d.supervisor_pid}  writer {d.writer_pid}")
        if d.writer_restarts:
            line.append(f" ({d.writer_restarts} restart{'s' if d.writer_restarts != 1 else ''})", style="yellow")
        line.append(f"  workers {len(d.workers)}")
        restarts = sum(w.restarts for w in d.workers)
        if restarts:
            line.append(f" ({restarts} restart{'s' if restarts != 1 else ''})", style="yellow")
        lines.append(line)
        tick = Text(f"tick {d.tick}  persisted {persisted}  ")
        tick.append(f"lag {lag} tick{'s' if lag != 1 else ''}", style="bold red" if lag > 1 else "")
        tick.append(f"  updated {_ago(age)}  interval {interval:g}s")
        if d.stalled_pids:
            tick.append(f"  stalled pids {', '.join(map(str, d.stalled_pids))}", style="bold red")
        lines.append(tick)
    counts, warn, err = fleet_counts(agents)
    fleet = Text(f"agents {len(agents)}: ")
    fleet.append(
        "  ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none registered",
    )
    fleet.append("   alerts: ")
    fleet.append(f"{err} error", style="bold red" if err else "")
    fleet.append("  ")
    fleet.append(f"{warn} warning", style="yellow" if warn else "")
    lines.append(fleet)
    return lines


def render(status, sort_key: str = "cpu", height: int = 40, now: float | None = None, run_dir=None) -> Group:
    """The whole screen for ``status`` (a ``queries.StatusJSON``) in ``height`` lines: the health
    header, then the busiest agents by ``sort_key`` (``cpu``, ``memory``, ``fds``) that fit."""
    now = time.time() if now is None else now
    header = health_lines(status, now, run_dir)
    rows = max(0, height - len(header) - 1 - FOOTER_LINES)  # 1: the table's column header
    agents = sort_agents(status.agents, sort_key)
    shown = agents[:rows]
    table = Table(box=None, header_style="bold reverse", expand=True, pad_edge=False)
    for col in ("ID", "TYPE", "PID", "STATUS", "CPU%", "RSS", "FDS", "THR", "ALERTS"):
        marked = col + ("▼" if (col, sort_key) in (("CPU%", "cpu"), ("RSS", "memory"), ("FDS", "fds")) else "")
        table.add_column(
            marked, justify="right" if col in ("PID", "CPU%", "RSS", "FDS", "THR") else "left", no_wrap=True,
            overflow="ellipsis", ratio=2 if col in ("ID", "ALERTS") else None,
        )
    for a in shown:
        s = a.last_sample
        states = {b.state for b in a.alerts}
        row_style = "bold red" if "error" in states else "yellow" if "warning" in states else None
        alerts = Text()
        for b in a.alerts:
            if alerts:
                alerts.append(" ")
            alerts.append(f"{b.resource}:{b.state}", style=STATE_STYLE.get(b.state, ""))
        table.add_row(
            a.id, Text(a.type), "-" if a.pid is None else str(a.pid),  # (Text: a type like "[/x]" is no markup)
            Text(a.status, style=STATUS_STYLE.get(a.status, "")),
            "-" if s is None or s.cpu is None else f"{s.cpu:.1f}",
            format_size(s.memory_rss if s else None),
            "-" if s is None or s.open_files is None else f"{s.open_files:.0f}",
            "-" if s is None or s.num_threads is None else f"{s.num_threads:.0f}",
            alerts if alerts else "-",
            style=row_style,
        )
    footer = Text(f"{len(shown)} of {len(agents)} agents by {SORT_LABEL[sort_key]}   ", style="dim")
    footer.append("c", style="bold")
    footer.append(" cpu  ")
    footer.append("m", style="bold")
    footer.append(" memory  ")
    footer.append("f", style="bold")
    footer.append(" fds  ")
    footer.append("q", style="bold")
    footer.append(" quit")
    return Group(*header, table, footer)


def read_keys(fd: int, timeout: float) -> str:
    """What was typed within ``timeout`` seconds ('' if nothing)."""
    ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
    if not ready:
        return ""
    try:
        data = os.read(fd, 64)
    except (BlockingIOError, InterruptedError):
        return ""
    if not data:
        raise EOFError("the terminal closed")
    return ESCAPES.sub("", data.decode(errors="replace"))


def run(state: StateDir, refresh: float, console: Console | None = None) -> int:
    """The live view until ``q`` (or Ctrl-C). Needs a terminal on stdin and stdout."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print("fleetmon: error: top needs a terminal; use `fleetmon status` (or --json) in scripts", file=sys.stderr)
        return 2
    console = console or Console(highlight=False)
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    sort_key = "cpu"
    try:
        tty.setcbreak(fd, termios.TCSANOW)
        with Live(console=console, screen=True, auto_refresh=False, redirect_stdout=False, redirect_stderr=False) as live:
            status = None
            next_read = 0.0
            while True:
                now = time.monotonic()
                if status is None or now >= next_read:
                    status = queries.status(state)
                    next_read = now + refresh
                live.update(render(status, sort_key, console.size.height, run_dir=state.run), refresh=True)
                quit_now = False
                for key in read_keys(fd, next_read - time.monotonic()):
                    sort_key, quit_now = handle_key(key, sort_key)
                    if quit_now:
                        break
                if quit_now:
                    break
    except (KeyboardInterrupt, EOFError):
        pass
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
    return 0
