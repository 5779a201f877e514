"""Helpers of the operator suite: a test sd_notify socket, config files, a busy agent, daemon env."""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from pathlib import Path

from tests.helpers import Processes, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]

HOG = "import time\nend = time.monotonic() + 600\nwhile time.monotonic() < end: pass\n"


def daemon_env(**extra: str) -> dict[str, str]:
    """The environment for a daemon whose workers can import ``tests.ops.*`` hooks."""
    env = dict(os.environ)
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def write_config(path: Path, text: str = "", **values) -> Path:
    """A TOML config: top-level ``values`` (JSON-quoted) followed by raw ``text`` (tables)."""
    lines = [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n" + text)
    return path


def hog(procs: Processes):
    """A process that burns one CPU for up to 10 minutes."""
    return procs.python(HOG)


class NotifySocket:
    """A datagram socket standing in for systemd's notify socket; records (arrival, fields)."""

    def __init__(self, directory: Path | None = None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if directory is None:  # abstract: NOTIFY_SOCKET=@name
            name = f"fleetmon-test-{os.getpid()}-{secrets.token_hex(6)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            path = directory / "notify.sock"
            self.sock.bind(str(path))
            self.address = str(path)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def env(self, **extra: str) -> dict[str, str]:
        return daemon_env(NOTIFY_SOCKET=self.address, **extra)

    def receive(self, seconds: float) -> list[tuple[float, dict[str, str]]]:
        """Collect datagrams for ``seconds``; returns those that arrived meanwhile."""
        start = len(self.messages)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._recv_one()
        return self.messages[start:]

    def _recv_one(self) -> None:
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.messages.append((time.monotonic(), fields))

    def wait_for(self, key: str, timeout: float, value: str = "1") -> tuple[float, dict[str, str]]:
        """The first message (already received or arriving within ``timeout``) with ``key=value``."""
        seen = 0

        def check():
            nonlocal seen
            self._recv_one()
            for when, fields in self.messages[seen:]:
                if fields.get(key) == value:
                    return when, fields
            seen = len(self.messages)
            return None

        return wait_until(check, timeout, interval=0, what=f"{key}={value} on the notify socket")

    def times(self, key: str, after: float = 0.0, before: float = float("inf")) -> list[float]:
        return [t for t, f in self.messages if key in f and after <= t <= before]

    def close(self) -> None:
        self.sock.close()
