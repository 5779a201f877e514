"""``fleet.run_daemon`` stops the interleaved probe however the daemon's start fails."""

from __future__ import annotations

import os
import subprocess

import pytest

from benchmarks import fleet
from benchmarks import harness as H
from tests.helpers import children_of


@pytest.mark.timeout(60)
@pytest.mark.parametrize("exc", [KeyboardInterrupt, OSError])
def test_a_daemon_that_cannot_start_leaves_no_probe(tmp_path, monkeypatch, exc):
    def fail(*args, **kwargs):
        raise exc("Ctrl-C while the daemon was being started, or its config could not be written")

    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(5)]
    try:
        monkeypatch.setattr(H, "DaemonRun", fail)
        with pytest.raises(exc):
            fleet.run_daemon([p.pid for p in procs], 1, 0.5, 1.0, 0.5, 10, tmp_path, interleave=True)
        mine = {p.pid for p in procs}
        left = [pid for pid in children_of(os.getpid()) if pid not in mine and os.path.exists(f"/proc/{pid}")]
        for pid in left:
            os.kill(pid, 9)
        assert not left, f"the interleaved probe was left running: {left}"
    finally:
        for p in procs:
            p.kill()
            p.wait(5)


@pytest.mark.timeout(30)
def test_stop_kills_only_processes_still_the_ones_seen(tmp_path):
    """A pid seen in the daemon's tree and given to a stranger since is not killed at the end; one
    still the process seen is."""
    ours = subprocess.Popen(["sleep", "60"])
    stranger = subprocess.Popen(["sleep", "60"])
    done = subprocess.Popen(["true"])
    done.wait()
    try:
        run = object.__new__(H.DaemonRun)
        run.proc, run.pid = done, done.pid
        run._log = open(tmp_path / "log", "ab")
        run.seen = {done.pid: None, ours.pid: _started(ours.pid), stranger.pid: _started(stranger.pid) - 1}
        run.stop(timeout=1)
        assert ours.wait(timeout=10) == -9
        assert stranger.poll() is None
    finally:
        for p in (ours, stranger):
            if p.poll() is None:
                p.kill()
                p.wait()


def _started(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[19])
