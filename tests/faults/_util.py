"""Helpers of the fault suite: config files, hook environment, reading the state dir as a checker."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path

from fleetmon.store.ring import CorruptRing, read_points
from fleetmon.supervisor import registry as reg
from tests.helpers import Processes, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]


def daemon_env(**extra: str) -> dict[str, str]:
    """The environment for a daemon whose workers import ``tests.faults.*`` hooks."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def write_config(path: Path, **values) -> Path:
    """A TOML config file of top-level keys (strings quoted, numbers as they are)."""
    lines = []
    for key, value in values.items():
        lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def register_direct(state_dir: Path, agent_id: str, pid: int, **kw) -> None:
    """Register without a CLI subprocess (fast for many agents): the same atomic file write."""
    reg.write_entry(state_dir / "registry", reg.RegistryEntry(agent_id, pid=pid, **kw))


def sleepers(procs: Processes, n: int) -> list[int]:
    return [procs.sleeper(900).pid for _ in range(n)]


def timestamps(state_dir: Path, agent_id: str) -> list[float]:
    try:
        return [p.timestamp for p in read_points(state_dir / "history" / f"{agent_id}.ring")]
    except (FileNotFoundError, CorruptRing):
        return []


def points(state_dir: Path, agent_id: str) -> list:
    try:
        return read_points(state_dir / "history" / f"{agent_id}.ring")
    except (FileNotFoundError, CorruptRing):
        return []


def missed(ts: list[float], interval: float, start: float, end: float) -> int:
    """Ticks missing from a series between ``start`` and ``end``: a gap of k intervals is k-1 missed
    (a tick may come up to 0.8 interval late without counting: scheduling jitter, not a loss), and
    the edges count against a series that starts late or stops early."""
    inside = sorted(t for t in ts if start <= t <= end)
    if not inside:
        return max(0, round((end - start) / interval))
    edges = [start - interval / 2, *inside, end + interval / 2]
    total = 0
    for a, b in zip(edges, edges[1:], strict=False):
        total += max(0, int((b - a) / interval + 0.2) - 1)
    return total


def daemon_json(state_dir: Path) -> dict | None:
    try:
        return json.loads((state_dir / "daemon.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def wait_own_tick(d, tick: int, timeout: float = 30) -> dict:
    """Like ``Daemon.wait_tick``, but ignores a daemon.json left by an earlier daemon on the dir."""
    return wait_until(
        lambda: (j := daemon_json(d.state_dir)) and j["supervisor_pid"] == d.pid and (j.get("persisted_tick") or 0) >= tick and j,
        timeout, what=f"daemon {d.pid} to persist tick {tick} (log: {d.log_path})",
    )


def status_json(state_dir: Path) -> dict:
    from tests.helpers import cli_json

    return cli_json("status", state_dir=state_dir)


def agent_status(state_dir: Path) -> dict[str, str]:
    return {a["id"]: a["status"] for a in status_json(state_dir)["agents"]}


def check_state_files(state_dir: Path) -> list[str]:
    """Every JSON file under the state dir parses, every line of alerts.jsonl but a torn last one
    parses, every ring reads. Returns the problems found (empty when all is well)."""
    problems: list[str] = []
    for path in sorted(state_dir.rglob("*")):
        name = path.name
        if ".corrupt-" in name or path.is_symlink() or not path.is_file():
            continue
        if name.endswith(".tmp"):
            continue  # a writer's temp file in flight; never read as state
        try:
            if name.endswith(".json"):
                if path.parent.name == "registry":
                    continue  # operators' files: the tests plant garbage there on purpose
                json.loads(path.read_bytes())
            elif name.endswith(".ring"):
                read_points(path)
            elif name == "alerts.jsonl":
                for line in path.read_bytes().splitlines():
                    if line.strip():
                        json.loads(line)
        except (ValueError, CorruptRing, OSError) as exc:
            problems.append(f"{path}: {exc}")
    return problems


def modes(root: Path) -> dict[str, int]:
    """Permission bits of everything under ``root`` (symlinks excluded), root included."""
    out = {str(root): stat.S_IMODE(os.lstat(root).st_mode)}
    for path in root.rglob("*"):
        st = os.lstat(path)
        if not stat.S_ISLNK(st.st_mode):
            out[str(path)] = stat.S_IMODE(st.st_mode)
    return out


def proc_state(pid: int) -> str:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return "-"
    return data[data.rfind(b")") + 2 : data.rfind(b")") + 3].decode()


def gone_within(pids: list[int], timeout: float) -> float:
    """Seconds until none of ``pids`` is alive (zombies count as gone); fails after ``timeout``."""
    start = time.monotonic()
    wait_until(lambda: all(proc_state(p) in ("-", "Z", "X") for p in pids), timeout, 0.02,
               what=f"processes {pids} to exit")
    return time.monotonic() - start


def kill_quietly(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def log_lines(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]
