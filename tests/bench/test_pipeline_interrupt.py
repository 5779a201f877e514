"""Ctrl-C (SIGINT to the whole process group, fake workers included) stops the pipeline benchmark at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.timeout(120)
def test_ctrl_c_stops_the_pipeline_benchmark_promptly(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cmd = [sys.executable, "-m", "benchmarks.pipeline", "--agents", "300", "--ticks", "100000", "--warmup", "1",
           "--workdir", str(tmp_path), "--out", str(tmp_path / "pipeline.json")]
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        time.sleep(3.0)  # the closed loop runs
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        t = time.monotonic()
        proc.wait(timeout=60)
        took = time.monotonic() - t
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130
    assert took < 15, f"{took:.0f} s to stop after Ctrl-C"
    assert not list(tmp_path.glob("fleetmon-pipeline-*"))
