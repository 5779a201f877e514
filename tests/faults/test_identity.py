"""Lifecycle truth: a process is ``(pid, create_time)``. A pid now held by a stranger is never sampled
as the agent, and a zombie counts as exited."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import pytest

from fleetmon.store.records import AgentRecord, StatusSnapshot
from fleetmon.units import rfc3339
from tests.faults._util import (
    agent_status,
    log_lines,
    points,
    proc_state,
    register_direct,
    write_config,
)
from tests.helpers import wait_until

pytestmark = pytest.mark.slow


def test_pid_reused_by_a_stranger_is_never_recorded_as_the_agent(daemons, procs, state_dir, tmp_path):
    stranger = procs.sleeper(900).pid
    honest = procs.sleeper(900).pid
    # A previous run recorded agent "reborn" at this pid, started a day ago: the process there now
    # is someone else.
    register_direct(state_dir, "reborn", stranger)
    register_direct(state_dir, "honest", honest)
    (state_dir / "agents").mkdir(mode=0o700)
    day_ago = time.time() - 86400
    record = AgentRecord("reborn", "default", stranger, "running", 0, rfc3339(day_ago), None, [], rfc3339(time.time() - 60))
    import msgspec

    (state_dir / "agents" / "reborn.json").write_bytes(msgspec.json.encode(record))
    (state_dir / "status.json").write_bytes(msgspec.json.encode(StatusSnapshot(rfc3339(time.time() - 60), [record])))
    cfg = write_config(tmp_path / "fleetmon.toml", workers=1, interval="250ms")
    d = daemons(state_dir, "--config", str(cfg))
    d.wait_tick(8, timeout=20)
    st = agent_status(state_dir)
    meta = json.loads((state_dir / "agents" / "reborn.json").read_text())
    print(f"\n[fault] pid reuse: reborn -> {st['reborn']} with {len(points(state_dir, 'reborn'))} points; "
          f"honest -> {st['honest']} with {len(points(state_dir, 'honest'))} points")
    assert st == {"reborn": "exited", "honest": "running"}
    assert meta["status"] == "exited" and meta["start_time"] == rfc3339(day_ago)
    assert points(state_dir, "reborn") == [], "the stranger's metrics were recorded as the agent's"
    assert len(points(state_dir, "honest")) >= 6
    assert len(log_lines(d.log(), "pid reuse")) == 1


def test_a_clock_step_between_two_daemons_does_not_make_agents_strangers(daemons, procs, state_dir, tmp_path):
    """The kernel's boot time (btime) moves with every step of the wall clock. A daemon started after
    one used to count start times from the moved btime: every agent's own process looked like a
    stranger at its pid (pid reuse) and was marked exited for good. The clock the last daemon of
    this boot recorded in daemon.json is what start times count from."""
    import msgspec
    import psutil

    from fleetmon.store.records import DaemonJSON
    from fleetmon.wire import BootClock
    from fleetmon.workers import procfs

    agent = procs.sleeper(900).pid
    newcomer = procs.sleeper(900).pid
    reader = procfs.Reader()
    # The previous daemon ran before the clock was stepped 1000 s forward: it counted from a boot
    # time 1000 s earlier than /proc/stat says now, and recorded the agent's start time so.
    recorded = BootClock(reader.boot_id(), reader.boot_time() - 1000)
    started = psutil.Process(agent).create_time() - 1000
    register_direct(state_dir, "agent", agent)
    register_direct(state_dir, "newcomer", newcomer)
    (state_dir / "agents").mkdir(mode=0o700)
    then = rfc3339(time.time() - 60)
    record = AgentRecord("agent", "default", agent, "running", 0, rfc3339(started), None, [], then)
    (state_dir / "agents" / "agent.json").write_bytes(msgspec.json.encode(record))
    (state_dir / "status.json").write_bytes(msgspec.json.encode(StatusSnapshot(then, [record])))
    (state_dir / "daemon.json").write_bytes(msgspec.json.encode(DaemonJSON(1, 2, [], 9, then, False, boot=recorded)))
    cfg = write_config(tmp_path / "fleetmon.toml", workers=1, interval="250ms")
    d = daemons(state_dir, "--config", str(cfg))
    d.wait_tick(6, timeout=20)
    meta = json.loads((state_dir / "agents" / "agent.json").read_text())
    assert agent_status(state_dir) == {"agent": "running", "newcomer": "running"}
    assert meta["restart_count"] == 0 and meta["start_time"] == rfc3339(started)
    assert len(points(state_dir, "agent")) >= 3
    assert log_lines(d.log(), "pid reuse") == []
    # a process seen for the first time counts from the same clock
    newcomer_meta = json.loads((state_dir / "agents" / "newcomer.json").read_text())
    assert newcomer_meta["start_time"] == rfc3339(psutil.Process(newcomer).create_time() - 1000)
    # and the next daemon of this boot will too
    assert json.loads((state_dir / "daemon.json").read_text())["boot"] == {
        "boot_id": recorded.boot_id, "boot_time": recorded.boot_time,
    }


def test_zombie_counts_as_exited(daemons, procs, state_dir, tmp_path):
    # A parent that forks a child and never reaps it: once the child is killed it stays a zombie.
    parent = procs.python(
        "import os, sys, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    time.sleep(900); os._exit(0)\n"
        "print(pid, flush=True)\n"
        "time.sleep(900)\n",
        stdout=__import__("subprocess").PIPE, text=True,
    )
    child = int(parent.stdout.readline())
    try:
        register_direct(state_dir, "zed", child)
        cfg = write_config(tmp_path / "fleetmon.toml", workers=1, interval="250ms")
        daemons(state_dir, "--config", str(cfg)).wait_tick(3, timeout=20)
        wait_until(lambda: agent_status(state_dir).get("zed") == "running", 10, what="zed running")
        os.kill(child, signal.SIGKILL)
        wait_until(lambda: proc_state(child) == "Z", 5, 0.02, what="the child to become a zombie")
        t0 = time.monotonic()
        wait_until(lambda: agent_status(state_dir).get("zed") == "exited", 10, what="zed to be exited")
        print(f"\n[fault] zombie: agent exited {time.monotonic() - t0:.2f}s after its process became a zombie")
        n = len(points(state_dir, "zed"))
        time.sleep(1.0)
        assert len(points(state_dir, "zed")) == n, "a zombie was sampled"
        assert proc_state(child) == "Z"
    finally:
        # The child is ours until its parent (ended at teardown) is gone: never reaped before, so
        # this pid is still the child's (a zombie takes the signal harmlessly). A failure above must
        # not leave it sleeping for 15 minutes.
        os.kill(child, signal.SIGKILL)


@pytest.mark.skipif(sys.platform != "linux", reason="/proc")
def test_sampler_refuses_a_stranger_it_was_told_about():
    """The writer tells workers who a pid belonged to (``known_start``); a worker that already tracks
    the agent must drop it as soon as it learns that, not keep sampling the stranger."""
    import psutil

    from fleetmon.wire import AgentRef, Gone, Sample
    from fleetmon.workers.sampler import Sampler

    s = Sampler()
    pid = os.getpid()
    assert type(s.sample(AgentRef("me", pid))) is Sample
    real = psutil.Process(pid).create_time()
    told = AgentRef("me", pid, None, pid, real - 3600)
    for _ in range(2):
        r = s.sample(told)
        assert type(r) is Gone and r.reason == "reused"
    # Told the truth, it samples again.
    assert type(s.sample(AgentRef("me", pid, None, pid, real))) is Sample
