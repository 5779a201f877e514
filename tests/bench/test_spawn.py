"""A fleet interrupted while it is being spawned leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from benchmarks import harness as H


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_while_spawning_leaves_no_process(monkeypatch, sig):
    real = subprocess.Popen
    started: list[subprocess.Popen] = []

    def popen(*args, **kwargs):
        p = real(*args, **kwargs)
        started.append(p)
        if len(started) == 3:
            os.kill(os.getpid(), sig)  # Ctrl-C (or SIGTERM) while the third one is being started
        return p

    monkeypatch.setattr(H.subprocess, "Popen", popen)
    fleet = H.Fleet()
    try:
        with pytest.raises(KeyboardInterrupt), H.sigterm_as_interrupt():
            fleet.spawn(10)
    finally:
        fleet.stop()
        left = [p for p in started if p.poll() is None]
        for p in left:
            p.kill()
            p.wait()
    assert len(started) == 3
    assert not left, "a process started while the interrupt came was not stopped"
