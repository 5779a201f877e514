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
