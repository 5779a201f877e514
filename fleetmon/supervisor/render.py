"""Human-readable output of the query commands: lines through rich, tables as plain aligned columns.

A rich ``Table`` costs about a millisecond a row (10 s for ``status`` at 10,000 agents, minutes for a
day of ``history`` at 1 s); ``write_table`` writes the same columns in one go, coloured with ANSI
codes only on a terminal that has colour, never cut to the terminal's width (pipes and grep get whole
rows)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from fleetmon.supervisor import lock
from fleetmon.units import format_duration, format_size, parse_rfc3339

STATE_STYLE = {"warning": "yellow", "error": "bold red", "ok": "green"}
STATUS_STYLE = {"running": "green", "exited": "dim", "not_running": "yellow", "stalled": "bold red"}


def _metric(agent, sort_key: str):
    s = agent.last_sample
    if s is None or agent.status != "running":  # an exited agent's last sample is no current usage
        return None
    if sort_key == "memory":
        return s.memory_rss
    if sort_key == "fds":
        return s.open_files
    return s.cpu


def sort_agents(agents, sort_key: str) -> list:
    """Busiest first by ``sort_key`` (cpu, memory, fds); agents without a current value (not
    running, no sample, unreadable) last; ties by id."""
    with_value = [a for a in agents if _metric(a, sort_key) is not None]
    without = [a for a in agents if _metric(a, sort_key) is None]
    with_value.sort(key=lambda a: a.id)
    with_value.sort(key=lambda a: _metric(a, sort_key), reverse=True)
    without.sort(key=lambda a: a.id)
    return with_value + without


def fleet_counts(agents) -> tuple[dict[str, int], int, int]:
    """(agents by status, agents whose worst open alert is a warning, agents with an error)."""
    counts: dict[str, int] = {}
    warn = err = 0
    for a in agents:
        counts[a.status] = counts.get(a.status, 0) + 1
        states = {b.state for b in a.alerts}
        err += "error" in states
        warn += "warning" in states and "error" not in states
    return counts, warn, err


def is_problem(agent) -> bool:
    """What ``status --problems`` shows: an agent that is not running, or has an alert open."""
    return agent.status != "running" or bool(agent.alerts)


_ANSI = {"green": "32", "yellow": "33", "bold red": "1;31", "dim": "2", "bold": "1", "red": "31"}


def write_table(console: Console, headers, rows, right=(), title: str | None = None) -> None:
    """``rows``: tuples of cells, each a str or ``(text, style)`` (a style of ``_ANSI``). Columns two
    spaces apart; those named in ``right`` right-aligned; the header in bold."""
    cells = [[c if isinstance(c, tuple) else (c, None) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, (text, _) in enumerate(row):
            if len(text) > widths[i]:
                widths[i] = len(text)
    color = console.is_terminal and console.color_system is not None and not console.no_color
    aligned = [str.rjust if h in right else str.ljust for h in headers]
    last = len(headers) - 1
    rows = [[(h, "bold") for h in headers], *cells]

    def padded(i: int, text: str) -> str:  # (a left-aligned last column is not padded: no trailing blanks)
        return text if i == last and aligned[i] is str.ljust else aligned[i](text, widths[i])

    if console.record:  # (the demo's live view renders a recording console: it must see the rows)
        out = Text(title + "\n" if title else "")
        for row in rows:
            for i, (text, style) in enumerate(row):
                out.append(("  " if i else "") + padded(i, text), style=style)
            out.append("\n")
        console.print(out, end="", soft_wrap=True)
        return

    def line(row) -> str:
        out = []
        for i, (text, style) in enumerate(row):
            text = padded(i, text)
            out.append(f"\x1b[{_ANSI[style]}m{text}\x1b[0m" if color and style in _ANSI else text)
        return "  ".join(out).rstrip() + "\n"

    console.file.write((title + "\n" if title else "") + "".join(line(row) for row in rows))
    console.file.flush()


def _console() -> Console:
    import sys

    # Piped output is not cut to 80 columns: scripts and pagers get whole rows.
    return Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 200)


def _num(v, fmt: str = "{:.0f}") -> str:
    """``-`` for None; by default a whole number in full (a pid of 4 million is not ``4e+06``)."""
    return "-" if v is None else fmt.format(v)


def _plain(v: float) -> str:
    """A value or a limit as typed: ``1048000``, ``80``, ``80.5`` (``:g`` would print ``1.048e+06``)."""
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _age(ts: str | None) -> str:
    if not ts:
        return "-"
    ago = time.time() - parse_rfc3339(ts)
    if ago < 120:
        return f"{ago:.0f}s ago"
    if ago < 7200:
        return f"{ago / 60:.0f}m ago"
    return f"{ago / 3600:.1f}h ago"


def daemon_running(d, now: float | None = None) -> bool:
    """It says it runs, and said so within three intervals."""
    return d is not None and d.running and recent(parse_rfc3339(d.updated), d.interval, now)


def recent(ts: float | None, interval: float | None, now: float | None = None) -> bool:
    """Written within three intervals (and 5 s): what a running daemon does for its files."""
    return ts is not None and (time.time() if now is None else now) - ts < 3 * (interval or 60) + 5


def daemon_state(d, run_dir=None, now: float | None = None) -> str:
    """``running``; ``not recording``: its files are stale but the state dir's lock is held (given
    ``run_dir``): the daemon is there and cannot write them (a full disk, say); ``stopped``: cleanly,
    or killed."""
    if daemon_running(d, now):
        return "running"
    if d is not None and d.running and run_dir is not None and lock.held(run_dir):
        return "not recording"
    return "stopped"


def stale_note(d, state: str) -> str:
    """Why a daemon's files stopped changing, as far as can be told (``state``: its ``daemon_state``)."""
    if state == "not recording":
        return f"its supervisor (pid {d.supervisor_pid}) still holds the state dir: can it write there? see its log"
    return "daemon stopped?"


def daemon_line(d, state: str) -> str:
    """``state``: the daemon's ``daemon_state``."""
    if d is None:
        return "daemon: none has run on this state dir"
    workers = ", ".join(f"{w.index}:{w.pid}({w.agents})" for w in d.workers)
    return (
        f"daemon: {state} - supervisor {d.supervisor_pid}, writer {d.writer_pid}, workers [{workers}], "
        f"tick {d.tick}, updated {_age(d.updated)}"
    )


def status_view(st, console: Console | None = None, shown=None, how: str = "", state: str | None = None) -> None:
    """The daemon's line, a row per agent of ``shown`` (default: all of ``st.agents``), then the
    whole fleet's counts, with how many rows were shown and ``how`` they were chosen. ``state``: the
    daemon's ``daemon_state`` as the caller found it (default: without looking at the lock)."""
    console = console or _console()
    state = state or daemon_state(st.daemon)
    console.print(daemon_line(st.daemon, state))
    rows = st.agents if shown is None else shown
    table = []
    for a in rows:
        s = a.last_sample
        alerts = " ".join(f"{b.resource}:{b.state}" for b in a.alerts) or "-"
        worst = "bold red" if any(b.state == "error" for b in a.alerts) else "yellow" if a.alerts else None
        table.append((
            a.id, a.type, _num(a.pid), (a.status, STATUS_STYLE.get(a.status)),
            _num(s.cpu if s else None, "{:.1f}"), format_size(s.memory_rss if s else None),
            _num(s.open_files if s else None), _num(s.num_threads if s else None), str(a.restart_count),
            (alerts, worst), _age(s.timestamp if s else None),
        ))
    if rows:
        write_table(
            console, ("ID", "TYPE", "PID", "STATUS", "CPU%", "RSS", "FDS", "THR", "RESTARTS", "ALERTS", "LAST SAMPLE"),
            table, right=("PID", "CPU%", "RSS", "FDS", "THR", "RESTARTS"),
        )
    if not st.agents:
        console.print("no agents registered: fleetmon agents add ID --pid PID")
        return
    if st.daemon is not None and state != "running":
        console.print(
            f"[yellow]no tick recorded for {_age(st.daemon.updated).removesuffix(' ago')} ({stale_note(st.daemon, state)}): "
            "statuses and alerts are as of then[/]"
        )
    console.print(summary_line(st.agents, len(rows), how))


def summary_line(agents, shown: int, how: str = "") -> str:
    """``5000 agents: 4990 running, 8 exited, 2 stalled; alerts: 1 error, 3 warning`` and, when not
    every agent has a row, ``(12 shown: --problems)``."""
    counts, warn, err = fleet_counts(agents)
    by_status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda c: (-c[1], c[0])))
    alerts = f"[bold red]{err} error[/]" if err else "0 error"
    alerts += f", [yellow]{warn} warning[/]" if warn else ", 0 warning"
    line = f"{len(agents)} agent{'s' if len(agents) != 1 else ''}: {by_status}; alerts: {alerts}"
    if shown != len(agents) or how:
        line += f" ({shown} shown{': ' + escape(how) if how else ''})"  # (``how`` holds the --type typed)
    return line


def history_table(agent_id: str, points) -> None:
    from fleetmon.units import rfc3339

    rows = [
        (
            rfc3339(p.timestamp), _num(p.cpu, "{:.1f}"), format_size(p.memory_rss), format_size(p.memory_vms),
            format_size(p.disk_read_bytes), format_size(p.disk_write_bytes), _num(p.open_files, "{:.0f}"),
            _num(p.num_threads, "{:.0f}"),
        )
        for p in points
    ]
    headers = ("TIMESTAMP", "CPU%", "RSS", "VMS", "READ", "WRITTEN", "FDS", "THREADS")
    write_table(_console(), headers, rows, right=headers[1:], title=f"{agent_id}: {len(points)} point{'' if len(points) == 1 else 's'}")


def alerts_table(events, since: float | None = None) -> None:
    if not events:  # (a title and a header over nothing read as a broken table)
        window = f" in the last {format_duration(since)}" if since else ""
        _console().file.write(f"no alert events{window}\n")
        return
    rows = []
    for e in events:
        value = "-" if e.value is None else (format_size(e.value) if e.resource == "memory" else f"{e.value:.1f}" if e.resource == "cpu" else _plain(e.value))
        threshold = format_size(e.threshold) if e.resource == "memory" else _plain(e.threshold)
        state = e.state + (f" ({e.reason})" if e.reason else "")
        rows.append((e.timestamp, e.agent_id, e.resource, (state, STATE_STYLE.get(e.state)), value, threshold, e.since))
    write_table(
        _console(), ("TIMESTAMP", "AGENT", "RESOURCE", "STATE", "VALUE", "THRESHOLD", "SINCE"), rows,
        title=f"{len(events)} alert event{'' if len(events) == 1 else 's'}",
    )


def limits_text(t) -> str:
    """``cpu > 80%, memory off for 5m``: what one source of thresholds (a registry entry's, a type's,
    the default) sets, an explicit 0 as off (it turns a less specific source's limit off); "" when it
    sets nothing."""
    parts = []
    if t.cpu_threshold is not None:
        parts.append(f"cpu > {_plain(t.cpu_threshold)}%" if t.cpu_threshold else "cpu off")
    if t.memory_threshold is not None:
        parts.append(f"memory > {format_size(t.memory_threshold)}" if t.memory_threshold else "memory off")
    if t.open_files_threshold is not None:
        parts.append(f"open files > {t.open_files_threshold}" if t.open_files_threshold else "open files off")
    text = ", ".join(parts)
    if t.threshold_duration is not None:
        text = f"{text} for {format_duration(float(t.threshold_duration))}".lstrip()
    return text


def agents_table(entries, errors) -> None:
    console = _console()
    table = []
    for agent_id in sorted(entries):
        e = entries[agent_id]
        limits = limits_text(e.thresholds) if e.thresholds is not None else ""
        table.append((e.id, e.type, str(e.pid) if e.pid else e.pidfile, limits or "-"))
    write_table(console, ("ID", "TYPE", "PID / PIDFILE", "THRESHOLDS"), table)
    for name, why in sorted(errors.items()):
        console.print(f"[red]invalid registry file {name}: {escape(why)}[/]")
