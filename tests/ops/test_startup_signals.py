"""Signals that arrive while ``fleetmon run`` starts: before its main loop runs (waiting for the
state dir's lock a previous daemon's writer still holds, for up to 10 s), SIGHUP must not kill it
and SIGTERM must stop it with exit 0, as they do once it runs."""

from __future__ import annotations

import signal
import time

import pytest

from tests.helpers import register, wait_until
from tests.ops._util import write_config

pytestmark = pytest.mark.slow


def _waiting_for_the_lock(d) -> bool:
    return "waiting up to" in d.log()


def _second_daemon_waiting_for_the_lock(daemons, procs, state_dir, tmp_path):
    """A daemon that runs, and a second one started on its state dir, waiting for the lock."""
    register(state_dir, "a", procs.sleeper(900).pid)
    cfg = write_config(tmp_path / "fleetmon.toml", workers=1, interval="250ms")
    first = daemons(state_dir, "--config", str(cfg))
    first.wait_tick(2, timeout=30)
    second = daemons(state_dir, "--config", str(cfg), log=tmp_path / "second.log")
    wait_until(lambda: _waiting_for_the_lock(second), 20, what="the second daemon to wait for the lock")
    return first, second


def test_sighup_while_waiting_for_the_lock_does_not_kill_the_daemon(daemons, procs, state_dir, tmp_path):
    first, second = _second_daemon_waiting_for_the_lock(daemons, procs, state_dir, tmp_path)
    second.proc.send_signal(signal.SIGHUP)  # a reload (supervisorctl signal HUP) while it starts
    time.sleep(0.5)  # (SIGHUP's default action kills at once; the lock is waited for 10 s at most)
    assert second.proc.poll() is None, f"killed by SIGHUP while starting: {second.proc.returncode}\n{second.log()}"
    assert first.stop() == 0  # the lock is let go: the second one starts, and takes the reload
    wait_until(lambda: "fleetmon started" in second.log(), 20, what="the second daemon to start")
    wait_until(lambda: "SIGHUP: " in second.log(), 10, what="the reload to be done")
    assert second.stop() == 0


def test_sigterm_while_waiting_for_the_lock_exits_0_at_once(daemons, procs, state_dir, tmp_path):
    first, second = _second_daemon_waiting_for_the_lock(daemons, procs, state_dir, tmp_path)
    second.proc.send_signal(signal.SIGTERM)
    assert second.proc.wait(timeout=3) == 0, second.log()
    assert "stopping before the daemon started" in second.log()
    first.wait_tick(first.daemon_json()["persisted_tick"] + 2, timeout=10)  # untouched
    assert first.stop() == 0


def test_signals_before_the_daemon_is_set_up_are_taken_once_it_runs(tmp_path):
    """The first few tenths of a second of ``fleetmon run`` (imports, the config) came before any
    handler: a SIGHUP then (a reload right after a start) killed the daemon, a SIGTERM ended it by
    the signal rather than with exit 0. Both sent here while the config is read: the reload is done
    once the daemon runs, then the stop, with exit 0."""
    import subprocess
    import sys

    code = (
        "import os, signal, sys\n"
        "from fleetmon.supervisor import cli, config\n"
        "load = config.load\n"
        "def signalled(*a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGHUP)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return load(*a, **k)\n"
        "config.load = signalled\n"
        "sys.exit(cli.main(['run', '--state-dir', sys.argv[1], '--interval', '1s', '--workers', '1']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "state")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "SIGHUP: " in proc.stderr and "fleetmon stopped" in proc.stderr
