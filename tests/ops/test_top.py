"""``fleetmon top``: the pure renderer on a string console, the keys, and the real command in a pty."""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import termios
import time

import pytest
from rich.console import Console

from fleetmon.store.queries import StatusJSON
from fleetmon.store.records import AgentRecord, AlertBrief, DaemonJSON, PointJSON, WorkerJSON
from fleetmon.supervisor import top
from fleetmon.units import rfc3339
from tests.helpers import CLI, register
from tests.ops._util import daemon_env

NOW = 1_800_000_000.0


def _agent(i: int, cpu, rss, fds, alerts=()):
    sample = PointJSON(rfc3339(NOW - 1), cpu, rss, rss * 2 if rss else None, 0, 0, fds, 4)
    return AgentRecord(f"agent-{i:05d}", "default", 1000 + i, "running", 0, rfc3339(NOW - 100), sample, list(alerts))


def _status(agents, tick=42, persisted=42):
    daemon = DaemonJSON(
        supervisor_pid=10, writer_pid=11, workers=[WorkerJSON(0, 12, len(agents)), WorkerJSON(1, 13, 0)],
        tick=tick, updated=rfc3339(NOW - 2), running=True, interval=10.0, persisted_tick=persisted,
    )
    return StatusJSON(daemon, agents)


def _text(renderable, width=140, height=40, color=False) -> str:
    console = Console(width=width, height=height, record=True, color_system="standard" if color else None, force_terminal=color, file=open(os.devnull, "w"))
    console.print(renderable)
    return console.export_text(styles=color)


def _ids(text: str) -> list[str]:
    return [line.split()[0] for line in text.splitlines() if line.startswith("agent-")]


def test_render_sorts_by_cpu_memory_and_fds():
    agents = [
        _agent(1, 5.0, 300 << 20, 10),
        _agent(2, 90.0, 100 << 20, 500),
        _agent(3, None, 200 << 20, None),  # first sample: cpu null
        _agent(4, 40.0, 50 << 20, 20),
    ]
    st = _status(agents)
    assert _ids(_text(top.render(st, "cpu", 40, now=NOW))) == ["agent-00002", "agent-00004", "agent-00001", "agent-00003"]
    assert _ids(_text(top.render(st, "memory", 40, now=NOW))) == ["agent-00001", "agent-00003", "agent-00002", "agent-00004"]
    assert _ids(_text(top.render(st, "fds", 40, now=NOW))) == ["agent-00002", "agent-00004", "agent-00001", "agent-00003"]


def test_render_header_shows_the_pools_health():
    text = _text(top.render(_status([_agent(1, 1.0, 1 << 20, 3)], tick=50, persisted=47), "cpu", 40, now=NOW))
    assert "daemon: running" in text and "workers 2" in text
    assert "tick 50" in text and "persisted 47" in text and "lag 3 ticks" in text and "updated 2s ago" in text
    stopped = _status([])
    stopped = StatusJSON(DaemonJSON(1, 2, [], 5, rfc3339(NOW - 3600), False, 10.0, 5), [])
    assert "daemon: stopped" in _text(top.render(stopped, "cpu", 40, now=NOW))
    assert "none has run" in _text(top.render(StatusJSON(None, []), "cpu", 40, now=NOW))
    silent = StatusJSON(DaemonJSON(1, 2, [], 5, rfc3339(NOW - 3600), True, 10.0, 5), [])
    assert "daemon: stopped" in _text(top.render(silent, "cpu", 40, now=NOW))  # (no lock held: killed)


def test_render_header_counts_writer_and_worker_restarts_apart():
    """13 writer restarts were shown as "workers 2 (13 restarts)" though no worker had restarted."""
    d = DaemonJSON(10, 11, [WorkerJSON(0, 12, 1, restarts=2), WorkerJSON(1, 13, 0)], 42, rfc3339(NOW - 2), True, 10.0, 42,
                   writer_restarts=13)
    text = _text(top.render(StatusJSON(d, [_agent(1, 1.0, 1 << 20, 3)]), "cpu", 40, now=NOW))
    assert "writer 11 (13 restarts)" in text and "workers 2 (2 restarts)" in text


def test_render_shows_only_the_rows_that_fit_thousands_of_agents():
    agents = [_agent(i, float(i % 997), (i % 503) << 20, i % 101) for i in range(5000)]
    text = _text(top.render(_status(agents), "cpu", 30, now=NOW), height=30)
    lines = text.rstrip("\n").splitlines()
    assert len(lines) <= 30
    ids = _ids(text)
    assert len(ids) == 30 - 3 - 1 - 1
    assert f"{len(ids)} of 5000 agents by cpu" in text
    cpus = [float(line.split()[4]) for line in lines if line.startswith("agent-")]
    assert cpus == sorted(cpus, reverse=True) and cpus[0] == 996.0


def test_render_colours_alert_states():
    agents = [
        _agent(1, 95.0, 1 << 20, 3, [AlertBrief("cpu", "error", rfc3339(NOW - 60))]),
        _agent(2, 50.0, 1 << 20, 3, [AlertBrief("memory", "warning", rfc3339(NOW - 60))]),
        _agent(3, 1.0, 1 << 20, 3),
    ]
    text = _text(top.render(_status(agents), "cpu", 40, now=NOW), color=True)
    rows = {line.split("agent-")[1][:5]: line for line in text.splitlines() if "agent-" in line}
    assert "\x1b[1;31m" in rows["00001"] and "cpu:error" in rows["00001"]  # bold red
    assert "\x1b[33m" in rows["00002"] and "memory:warning" in rows["00002"]  # yellow
    assert "\x1b[1;31m" not in rows["00003"] and "\x1b[33m" not in rows["00003"]
    assert "1 error" in text and "1 warning" in text


def test_keys():
    assert top.handle_key("m", "cpu") == ("memory", False)
    assert top.handle_key("f", "memory") == ("fds", False)
    assert top.handle_key("C", "fds") == ("cpu", False)
    assert top.handle_key("x", "fds") == ("fds", False)
    assert top.handle_key("q", "memory") == ("memory", True)


def _read_until(fd: int, needle: bytes, buf: bytearray, timeout: float) -> bytearray:
    deadline = time.monotonic() + timeout
    while needle not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{needle!r} not shown within {timeout}s; screen so far: {bytes(buf[-2000:])!r}")
        ready, _, _ = select.select([fd], [], [], min(left, 0.2))
        if ready:
            try:
                buf += os.read(fd, 65536)
            except OSError:
                break
    return buf


@pytest.mark.slow
def test_top_in_a_terminal_sorts_on_keys_and_quits_on_q(daemons, procs, state_dir):
    register(state_dir, "sleepy", pid=procs.sleeper().pid)
    register(state_dir, "spinner", pid=procs.python("while True: pass").pid)
    d = daemons(state_dir, "--interval", "500ms", "--workers", "1", env=daemon_env())
    d.wait_tick(3)
    master, slave = os.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
        before = termios.tcgetattr(slave)
        env = daemon_env(TERM="xterm-256color", COLUMNS="120", LINES="24")
        p = procs.start([*CLI, "top", "--state-dir", str(state_dir), "--refresh", "500ms"], stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
        buf = bytearray()
        _read_until(master, b"by cpu", buf, 30)
        _read_until(master, b"spinner", buf, 10)
        os.write(master, b"m")
        _read_until(master, b"by memory", buf, 10)
        os.write(master, b"f")
        _read_until(master, b"by open fds", buf, 10)
        os.write(master, b"q")
        assert p.wait(timeout=10) == 0
        after = termios.tcgetattr(slave)
        assert after[3] & termios.ICANON and after[3] & termios.ECHO  # the terminal is restored
        assert after == before
        assert b"\x1b[?1049h" in buf
        _read_until(master, b"\x1b[?1049l", buf, 5)  # and out of the alternate screen
    finally:
        os.close(master)
        os.close(slave)


def test_top_without_a_terminal_or_a_state_dir_refuses(state_dir):
    p = subprocess.run([*CLI, "top", "--state-dir", str(state_dir)], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert p.returncode == 2 and "there is no state dir at" in p.stderr  # (a typo showed an empty fleet)
    state_dir.mkdir()
    p = subprocess.run([*CLI, "top", "--state-dir", str(state_dir)], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert p.returncode == 2 and "needs a terminal" in p.stderr


def test_read_keys_drops_escape_sequences_and_times_out():
    r, w = os.pipe()
    try:
        started = time.monotonic()
        assert top.read_keys(r, 0.2) == ""
        assert 0.15 <= time.monotonic() - started < 2.0
        os.write(w, b"\x1b[C\x1b[Am")  # right and up arrows, then m: only m is a key
        assert top.read_keys(r, 1.0) == "m"
        os.close(w)
        w = -1
        with pytest.raises(EOFError):
            top.read_keys(r, 1.0)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_status_says_when_its_rows_are_as_of_a_stopped_daemon():
    """After the daemon stops, status.json still says "running" for the agents it last saw: the
    human view says the rows are as of its last tick. The JSON is unchanged (the contract)."""
    from fleetmon.supervisor import render

    def view(st) -> str:
        console = Console(width=200, record=True, color_system=None, file=open(os.devnull, "w"))
        render.status_view(st, console)
        return console.export_text()

    now = time.time()
    agent = _agent(1, 1.0, 1 << 20, 3)
    running = StatusJSON(DaemonJSON(1, 2, [], 5, rfc3339(now - 1), True, 10.0, 5), [agent])
    stopped = StatusJSON(DaemonJSON(1, 2, [], 5, rfc3339(now - 600), False, 10.0, 5), [agent])
    assert "no tick recorded" not in view(running)
    text = view(stopped)
    assert "daemon: stopped" in text and "no tick recorded for 10m (daemon stopped?): statuses and alerts are as of then" in text


def test_status_rows_reach_a_recording_console_and_the_demo_view(tmp_path):
    """write_table writes straight to a terminal; a recording console (the demo's live view renders
    one) must still get the rows, with their styles."""
    from fleetmon.supervisor import render

    console = Console(width=200, record=True, color_system=None, file=open(os.devnull, "w"))
    agents = [_agent(1, 5.0, 1 << 20, 3), _agent(2, 1.0, 2 << 20, 4)]
    st = StatusJSON(DaemonJSON(1, 2, [], 5, rfc3339(time.time()), True, 10.0, 5), agents)
    render.status_view(st, console)
    lines = console.export_text().splitlines()
    assert lines[1].split() == ["ID", "TYPE", "PID", "STATUS", "CPU%", "RSS", "FDS", "THR", "RESTARTS", "ALERTS", "LAST", "SAMPLE"]
    assert [line.split()[0] for line in lines[2:4]] == [a.id for a in agents]
    assert lines[4].startswith("2 agents: 2 running")
