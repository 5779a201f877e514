"""The benchmark scripts stop everything they started when interrupted, also when a second signal
comes while they are stopping it."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.slow


def _descendants(root: int, known: dict[int, bytes]) -> None:
    """Add every live descendant of ``root`` (and of any pid already known) to ``known``, with its
    start time, so that it can be told from a later process with the same pid."""
    from pathlib import Path

    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            parents.setdefault(int(fields[1]), []).append(int(entry.name))  # ppid
    todo = [root, *known]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in known:
                known[child] = _start_time(child)
                todo.append(child)


def _start_time(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == b"Z" else fields[19]  # state, start time


@pytest.mark.timeout(180)
@pytest.mark.parametrize("second", ["SIGINT", "SIGTERM"])
def test_fleet_interrupted_twice_stops_everything(tmp_path, second):
    """Ctrl-C while the daemon runs, and another signal while the harness stops it: the script still
    stops every process it started and removes its state dirs, and exits 130 (a second signal used to
    cut the cleanup short, leave the interleaved probe running, and hang the script at exit)."""
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "benchmarks.fleet", "--agents", "50", "--workers", "1", "--interval", "0.5s",
           "--duration", "30", "--warmup", "1", "--baseline-seconds", "0.3", "--workdir", str(tmp_path),
           "--out", str(tmp_path / "fleet.json")]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    known: dict[int, bytes] = {}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
            b"fleetmon\x00run" in _cmdline(pid) for pid in known
        ):
            _descendants(proc.pid, known)
            time.sleep(0.05)
        time.sleep(2.0)  # the window is open, the probe running
        _descendants(proc.pid, known)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.02)  # the harness is stopping the daemon now
        proc.send_signal(getattr(signal, second))
        t = time.monotonic()
        while proc.poll() is None and time.monotonic() - t < 60:
            _descendants(proc.pid, known)
            time.sleep(0.02)
        assert proc.poll() == 130, f"the script did not exit 130 within 60 s: {proc.poll()}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        time.sleep(0.5)
        left = [pid for pid, start in known.items() if start is not None and _start_time(pid) == start]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    assert len(known) >= 50
    assert not left, f"processes left running: {left}"
    assert not list(tmp_path.glob("fleetmon-bench-*")), "state dirs left behind"


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def test_a_signal_during_cleanup_is_raised_when_it_is_done():
    import signal
    import time

    from benchmarks import harness

    steps = []
    with pytest.raises(KeyboardInterrupt):
        with harness.sigterm_as_interrupt():
            with harness.cleanup():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                steps.append("after SIGINT")
                os.kill(os.getpid(), signal.SIGTERM)  # a second signal is ignored
                time.sleep(0.05)
                steps.append("after SIGTERM")
    assert steps == ["after SIGINT", "after SIGTERM"]
    assert signal.getsignal(signal.SIGTERM) is not None
