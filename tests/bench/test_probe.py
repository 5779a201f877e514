"""The interleaved psutil probe cannot outlive the harness, and a probe that died does not break it."""

from __future__ import annotations

import os

import pytest

from benchmarks import baselines
from tests.helpers import children_of


@pytest.mark.timeout(60)
def test_bare_probe_does_not_outlive_the_harness():
    """A probe never told to stop (the harness interrupted before ``close()``) sees the harness's end
    of the pipe go and exits, and multiprocessing's exit handler ends it rather than joining it
    forever; a probe that died mid-pass leaves ``result()`` and ``close()`` working."""
    import signal
    import subprocess

    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    try:
        pids = [p.pid for p in procs]
        probe = baselines.BareProbe(pids)
        assert probe.proc.daemon
        probe.conn.close()  # what the harness's exit does to its end
        probe.proc.join(10)
        assert not probe.proc.is_alive(), "the probe outlives the harness's end of its pipe"

        probe = baselines.BareProbe(pids)
        probe.busy = True  # a pass in flight ...
        os.kill(probe.proc.pid, signal.SIGKILL)  # ... when the probe dies
        probe.proc.join(10)
        assert probe.result()["bare"]["samples"] == 0
        probe.close()
    finally:
        for p in procs:
            p.kill()
            p.wait(5)
    assert not [pid for pid in children_of(os.getpid()) if os.path.exists(f"/proc/{pid}")]
