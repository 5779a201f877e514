"""Small helpers shared by the integration tests (on top of tests/helpers.py)."""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path

from tests.helpers import cli, cli_json, wait_until

PY = sys.executable


def history(state_dir: Path, agent_id: str, *args) -> list[dict]:
    return cli_json("history", agent_id, *args, state_dir=state_dir)["points"]


def status(state_dir: Path) -> dict:
    return cli_json("status", state_dir=state_dir)


def agent(state_dir: Path, agent_id: str) -> dict | None:
    return next((a for a in status(state_dir)["agents"] if a["id"] == agent_id), None)


def alerts(state_dir: Path, *args) -> list[dict]:
    return cli_json("alerts", *args, state_dir=state_dir)["events"]


def wait_points(state_dir: Path, agent_id: str, n: int, timeout: float = 30, where=None) -> list[dict]:
    """Wait until the agent has at least ``n`` points (satisfying ``where`` when given)."""

    def enough():
        pts = history(state_dir, agent_id)
        ok = [p for p in pts if where is None or where(p)]
        return pts if len(ok) >= n else None

    return wait_until(enough, timeout, interval=0.2, what=f"{n} points of {agent_id}")


def wait_status(state_dir: Path, agent_id: str, predicate, timeout: float = 30, what: str = "status") -> dict:
    return wait_until(lambda: (a := agent(state_dir, agent_id)) and predicate(a) and a, timeout, interval=0.2, what=f"{agent_id}: {what}")


def proc_status(pid: int, key: str) -> int:
    """A field of /proc/<pid>/status as an int (kB fields in bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            parts = value.split()
            return int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    raise KeyError(key)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def parse_ts(text: str) -> float:
    """RFC 3339 UTC (``...Z``) -> epoch seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def exits_2_and_writes_nothing(args, state_dir: Path) -> str:
    """Run a CLI command that must be refused: exit 2, one line on stderr; returns that line."""
    proc = cli(*args, state_dir=state_dir)
    assert proc.returncode == 2, (args, proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert proc.stdout == ""
    return lines[0]


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its content (None for directories)."""
    if not root.exists():
        return {}
    out: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = None if p.is_dir() else p.read_bytes()
    return out
