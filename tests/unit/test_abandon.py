"""A child that SIGKILL does not end (blocked in the kernel: a read on a dead NFS or FUSE mount) is
given up on and replaced, not waited for: its shard would go unsampled for as long as the kernel
holds it, and a stop would never finish. Real child processes; only SIGKILL's effect is held back
(``os.kill`` in the children module drops it), as the kernel holds it back from a process in D."""

from __future__ import annotations

import os
import signal
import time

import multiprocess.process
import pytest
from loguru import logger

from fleetmon import wire
from fleetmon.store.layout import StateDir
from fleetmon.supervisor import children
from fleetmon.supervisor.arbiter import Arbiter, _agent_in_hand
from fleetmon.supervisor.config import load
from tests.helpers import wait_until


def _spin(ready) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready.set()
    while True:
        time.sleep(0.05)


@pytest.fixture
def deaf(monkeypatch):
    """SIGKILL from the children module reaches nobody until ``release`` (then it does, for real)."""
    real = os.kill
    held: list[int] = []

    def kill(pid, sig):
        if sig == signal.SIGKILL:
            held.append(pid)
            return
        real(pid, sig)

    monkeypatch.setattr(os, "kill", kill)  # (children.os is os: the tests use ``real`` below)
    monkeypatch.setattr(children, "KILL_GRACE", 0.3)
    started: list = []

    def start(child: children.Child) -> None:
        ready = children.MP.Event()
        child.proc = children.MP.Process(target=_spin, args=(ready,), daemon=False)
        child.proc.start()
        assert ready.wait(10)
        started.append(child.proc)

    def release() -> None:
        for p in started:
            try:
                if p.exitcode is None:
                    real(p.pid, signal.SIGKILL)
                    p.join(10)
            except ValueError:
                pass  # closed: reaped already (by the arbiter)

    yield start, held, release, real
    release()


@pytest.fixture
def logs():
    records = []
    sink = logger.add(lambda m: records.append(m.record["message"]), level="DEBUG")
    yield records
    logger.remove(sink)


@pytest.mark.timeout(30)
def test_stop_all_leaves_behind_a_child_sigkill_does_not_end(deaf, logs):
    start, held, release, _ = deaf
    c = children.Child("worker-0", 0)
    start(c)
    proc = c.proc
    t0 = time.monotonic()
    left = children.stop_all([c], grace=0.2)  # before: waited for ever
    took = time.monotonic() - t0
    print(f"\nstop_all returned after {took:.2f}s")
    assert c.proc is None and proc.exitcode is None and held == [proc.pid]
    assert left == [(proc, "worker-0", [])]  # for the caller to reap (a reload that shrinks the pool)
    assert proc not in multiprocess.process._children  # so the supervisor's exit does not wait for it either
    assert any("did not die after SIGKILL: left behind" in m for m in logs)
    release()
    assert proc.exitcode == -signal.SIGKILL


def _arbiter(tmp_path, workers: int) -> Arbiter:
    a = Arbiter(load(None, {"workers": workers, "stall_timeout": 60}), StateDir(tmp_path / "state"))
    a.workers = [children.Child(f"worker-{i}", i) for i in range(workers)]
    a.writer.proc = None
    a.writer.respawn_at = float("inf")  # no writer in this test
    a.link = None
    a.judge_after = float("inf")  # no stall verdicts: the tests kill by hand
    return a


@pytest.mark.timeout(30)
def test_a_worker_sigkill_does_not_end_is_replaced_and_reaped_when_it_ends(tmp_path, deaf, logs, monkeypatch):
    start, held, release, real_kill = deaf
    a = _arbiter(tmp_path, 2)
    monkeypatch.setattr(a, "_start_worker", start)
    for w in a.workers:
        start(w)
    stuck = a.workers[1]
    old = stuck.proc
    stuck.kill()  # as _check_stall does for a worker that made no progress
    a._check_children()
    assert stuck.proc is old  # within KILL_GRACE: still waited for
    # replaced at once once KILL_GRACE (0.3 s here) is past: well within 3 s
    wait_until(lambda: a._check_children() or stuck.proc is not old, 3, 0.05, what="the stuck worker replaced")
    assert stuck.proc is not None and stuck.proc.exitcode is None  # replaced at once, past KILL_GRACE
    assert [(p, name) for p, name, _ in a.abandoned] == [(old, "worker-1")]
    assert a.workers[0].killing_since is None  # the other worker untouched
    assert any(f"worker-1 (pid {old.pid}" in m and "left behind and replaced" in m for m in logs)
    real_kill(old.pid, signal.SIGKILL)  # the mount comes back: the read returns and SIGKILL lands
    old.join(10)
    a._check_children()
    assert a.abandoned == [] and any("has ended" in m for m in logs)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("holding, retried", [("stuck-1", ["innocent"]), (None, [])])
def test_a_stuck_quarantine_worker_keeps_its_agent_out_of_the_next_quarantine_pass(tmp_path, deaf, monkeypatch, holding, retried):
    """The agent it is stuck on is not tried again until it ends (each try would leave another
    worker behind); the rest of its batch is. Not knowing which one it is stuck on: none of them."""
    from fleetmon.supervisor import registry as reg
    from fleetmon.supervisor.arbiter import Quarantined

    start, _held, _release, _ = deaf
    a = _arbiter(tmp_path, 1)
    monkeypatch.setattr(a, "_start_worker", start)
    monkeypatch.setattr(a, "_send_tick", lambda w: None)
    a.registry.entries = {i: reg.RegistryEntry(i, None, 100 + n) for n, i in enumerate(("innocent", "stuck-1"))}
    a.quarantine = {i: Quarantined(i, 100 + n) for n, i in enumerate(("innocent", "stuck-1"))}
    qw = a.quarantine_worker
    start(qw)
    a.q_batch = ["innocent", "stuck-1"]
    qw.kill()  # as _check_stall does
    qw.holding = holding
    qw.killing_since -= 1.0
    a._check_children()
    assert qw.proc is None and a.abandoned[0][2] == ([holding] if holding else ["innocent", "stuck-1"]) and a.q_batch == []
    for q in a.quarantine.values():
        q.retry_at = 0.0
    a._tick_quarantine()
    assert a.q_batch == retried
    if retried:
        assert [r.id for r in a.shards[qw.index]] == retried and qw.alive  # a new quarantine worker for them


def test_the_agent_in_hand_is_found_in_the_shard_the_worker_was_reading():
    """A pidfile agent's heartbeat pid is -1, like every pidfile agent's: matching on it named the
    agent at that index of the newest shard, an innocent one when the shard changed meanwhile."""
    ref = wire.AgentRef
    old = [ref("pf-a", None, "/run/a.pid"), ref("pf-stall", None, "/run/s.pid")]
    new = [ref("pf-a", None, "/run/a.pid"), ref("pf-new", None, "/run/n.pid"), ref("pf-stall", None, "/run/s.pid")]
    sent = [(7, old), (9, new)]
    assert _agent_in_hand(sent, 7, 1, -1, new) == "pf-stall"  # reading shard 7 at index 1
    assert _agent_in_hand(sent, 9, 1, -1, new) == "pf-new"
    assert _agent_in_hand(sent, 3, 1, -1, new) is None  # a shard no longer remembered: a pidfile agent is not guessed
    byp = [ref("p1", 101, None), ref("p2", 102, None)]
    assert _agent_in_hand([], 3, 0, 102, byp) == "p2"  # by its pid, when unique
