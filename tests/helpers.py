"""Shared helpers for integration tests: real processes, the real CLI, deadlines everywhere."""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-m", "fleetmon"]


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` seconds pass (then fail,
    after dumping every thread's stack so a hang explains itself)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            faulthandler.dump_traceback(file=sys.stderr)
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def cli(
    *args, state_dir: Path | None = None, timeout: float = 60, check: bool = False, env=None, cwd=None,
) -> subprocess.CompletedProcess:
    """Run ``fleetmon ARGS`` in a subprocess (in ``cwd``); returns the CompletedProcess (text mode)."""
    cmd = [*CLI, *map(str, args)]
    if state_dir is not None:
        cmd += ["--state-dir", str(state_dir)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=env, cwd=cwd,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}: {proc.stderr}")
    return proc


def cli_json(*args, state_dir: Path, timeout: float = 60):
    proc = cli(*args, "--json", state_dir=state_dir, timeout=timeout, check=True)
    return json.loads(proc.stdout)


class Processes:
    """Starts processes for a test and ends every one of them, by pid, at teardown."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], **kw) -> subprocess.Popen:
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(args, **kw)
        self.procs.append(p)
        return p

    def python(self, code: str, **kw) -> subprocess.Popen:
        return self.start([sys.executable, "-c", code], **kw)

    def sleeper(self, seconds: int = 600) -> subprocess.Popen:
        return self.start(["sleep", str(seconds)])

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.kill()
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


class Daemon:
    """``fleetmon run`` in a subprocess, logging to a file; stopped by pid (TERM, then KILL)."""

    def __init__(self, state_dir: Path, *args: str, log: Path | None = None, env=None):
        self.state_dir = state_dir
        self.log_path = log or state_dir.parent / f"{state_dir.name}-daemon.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*CLI, "run", "--state-dir", str(state_dir), *args],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, env=env,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def daemon_json(self) -> dict | None:
        try:
            return json.loads((self.state_dir / "daemon.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def wait_tick(self, tick: int, timeout: float = 30) -> dict:
        """Wait until the daemon reports having persisted tick ``tick`` or later."""
        return wait_until(
            lambda: (d := self.daemon_json()) and (d.get("persisted_tick") or 0) >= tick and d,
            timeout, what=f"persisted tick {tick} (log: {self.log_path})",
        )

    def stop(self, timeout: float = 30, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def register(state_dir: Path, agent_id: str, pid: int | None = None, pidfile: str | None = None, **thresholds) -> None:
    """Register through the real CLI."""
    args = ["agents", "add", agent_id]
    args += ["--pid", str(pid)] if pid is not None else ["--pidfile", pidfile]
    for flag, value in thresholds.items():
        args += [f"--{flag.replace('_', '-')}", str(value)]
    cli(*args, state_dir=state_dir, check=True)


def children_of(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return False
    return data[data.rfind(b")") + 2 : data.rfind(b")") + 3] != b"Z"


# --- a writer in the test process, fed by hand ------------------------------------------------------


def in_process_writer(state, listener):
    """A ``Writer`` built as the supervisor builds it (history of 50), driven by calling its methods."""
    from fleetmon.store.writer import Writer
    from fleetmon.supervisor.config import Config

    return Writer(state, Config(history_size=50), listener, "tok", [0.0, 0.0], os.getppid())


def writer_connection(w, role: int):
    """A connection the writer knows as worker ``role`` (-1: the supervisor), already past its Hello:
    (the writer's end, the peer's end)."""
    import socket

    from fleetmon import channel, wire

    a, b = socket.socketpair()
    conn = channel.FramedConn(a)
    w.conns[conn.fileno()] = conn
    w.roles[conn.fileno()] = None
    w._dispatch(conn, wire.Hello(role, 1, "tok"))
    return conn, channel.FramedConn(b)
