"""Faults of the sampling workers: SIGSTOP, a blocking read, SIGKILL, failing at boot.

Reliability contract: a stuck worker is replaced within ``stall_timeout``, other shards keep their
ticks, the pid it was reading is quarantined and reported ``stalled``; a killed worker is restarted,
with backoff when it keeps failing at boot, and its restarts are counted.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from fleetmon.supervisor.sharding import shard_for
from tests.faults._util import (
    agent_status,
    daemon_env,
    daemon_json,
    kill_quietly,
    log_lines,
    missed,
    proc_state,
    register_direct,
    sleepers,
    status_json,
    timestamps,
    write_config,
)
from tests.helpers import children_of, wait_until

pytestmark = pytest.mark.slow

INTERVAL = 1.0
STALL = 3.0


def _start(daemons, procs, state_dir, tmp_path, n: int, workers: int, hook: str | None = None, env=None, **cfg):
    pids = sleepers(procs, n)
    ids = [f"a{i:03d}" for i in range(n)]
    for agent_id, pid in zip(ids, pids, strict=True):
        register_direct(state_dir, agent_id, pid)
    config = {"workers": workers, "interval": f"{INTERVAL}s", "stall_timeout": f"{STALL}s", **cfg}
    if hook:
        config["sampler_hook"] = hook
    write_config(tmp_path / "fleetmon.toml", **config)
    d = daemons(state_dir, "--config", str(tmp_path / "fleetmon.toml"), env=env or daemon_env())
    d.wait_tick(2, timeout=20)
    return d, ids, pids


def _worker_pid(state_dir, index: int) -> int:
    return next(w["pid"] for w in daemon_json(state_dir)["workers"] if w["index"] == index)


def test_sigstopped_worker_is_replaced_and_other_shards_keep_every_tick(daemons, procs, state_dir, tmp_path):
    d, ids, _ = _start(daemons, procs, state_dir, tmp_path, n=40, workers=4)
    target = max(range(4), key=lambda i: sum(shard_for(a, 4) == i for a in ids))
    victims = [a for a in ids if shard_for(a, 4) == target]
    others = [a for a in ids if a not in victims]
    old_pid = _worker_pid(state_dir, target)

    before = set(children_of(d.pid))
    t_stop_wall, t_stop = time.time(), time.monotonic()
    os.kill(old_pid, signal.SIGSTOP)
    try:
        new = wait_until(lambda: set(children_of(d.pid)) - before, STALL + 6, 0.02, what="a replacement worker")
        replaced_after = time.monotonic() - t_stop
        replaced_wall = time.time()
        assert proc_state(old_pid) in ("-", "Z")
        info = wait_until(
            lambda: (j := daemon_json(state_dir)) and any(w["index"] == target and w["pid"] in new for w in j["workers"]) and j,
            2 * INTERVAL + 3, 0.05, what="daemon.json to show the replacement",
        )
        # Every agent of the replaced shard is sampled again right after (its next tick).
        wait_until(lambda: all(any(t > replaced_wall for t in timestamps(state_dir, a)) for a in victims),
                   2 * INTERVAL + 3, what="the replaced shard to be sampled again")
        resampled_after = time.monotonic() - t_stop
        time.sleep(INTERVAL)
        end_wall = time.time() - INTERVAL  # leave the tick in flight out of the count
    finally:
        kill_quietly(old_pid, signal.SIGCONT)
    lost = {a: missed(timestamps(state_dir, a), INTERVAL, t_stop_wall - 1.0, end_wall) for a in others}
    worker = next(w for w in info["workers"] if w["index"] == target)
    print(f"\n[fault] SIGSTOP worker {target} ({len(victims)} agents): replaced after {replaced_after:.2f}s "
          f"(stall_timeout {STALL}s), shard sampled again after {resampled_after:.2f}s; "
          f"missed samples of the {len(others)} other agents: {sum(lost.values())}; restarts {worker['restarts']}")
    assert replaced_after <= STALL + 2.0
    assert sum(lost.values()) == 0, lost
    assert worker["restarts"] >= 1
    assert len(log_lines(d.log(), "made no progress")) >= 1
    # A stopped worker is not blocked on the agent it holds: nobody is quarantined.
    assert "stalled" not in set(agent_status(state_dir).values())


BLOCK_HOOK = "tests.faults.hooks:block"


def test_blocking_read_quarantines_the_agent_and_releases_it_when_it_reads_again(daemons, procs, state_dir, tmp_path):
    flag = tmp_path / "block"
    flag.touch()
    env = daemon_env(FLEETMON_TEST_BLOCK=str(flag))
    pids = sleepers(procs, 13)
    ids = [f"a{i:03d}" for i in range(12)]
    for agent_id, pid in zip(ids, pids, strict=False):
        register_direct(state_dir, agent_id, pid)
    write_config(tmp_path / "fleetmon.toml", workers=3, interval=f"{INTERVAL}s", stall_timeout=f"{STALL}s", sampler_hook=BLOCK_HOOK)
    d = daemons(state_dir, "--config", str(tmp_path / "fleetmon.toml"), env=env)
    d.wait_tick(2, timeout=20)
    stuck_shard = shard_for("stuck-1", 3)
    others = [a for a in ids if shard_for(a, 3) != stuck_shard]
    old_pid = _worker_pid(state_dir, stuck_shard)

    t0_wall, t0 = time.time(), time.monotonic()
    register_direct(state_dir, "stuck-1", pids[12])
    wait_until(lambda: agent_status(state_dir).get("stuck-1") == "stalled", STALL + 8, 0.2, what="stuck-1 to be stalled")
    detected = time.monotonic() - t0
    # (daemon.json takes the supervisor's next DaemonInfo: it can come a flush after status.json)
    wait_until(lambda: pids[12] in status_json(state_dir)["daemon"]["stalled_pids"], 2 * INTERVAL + 5, 0.2,
               what="the stuck pid in the daemon's stalled_pids")
    meta = (state_dir / "agents" / "stuck-1.json").read_text()
    assert '"status":"stalled"' in meta.replace(" ", "")
    wait_until(lambda: _worker_pid(state_dir, stuck_shard) != old_pid, 5, what="the blocked worker to be replaced")
    # Shard-mates of the stuck agent are sampled again by the replacement.
    mates = [a for a in ids if shard_for(a, 3) == stuck_shard]
    after = time.time()
    wait_until(lambda: all(any(t > after for t in timestamps(state_dir, a)) for a in mates), 3 * INTERVAL + 2,
               what="the stuck agent's shard-mates to be sampled again")
    # The quarantine retries with backoff and stalls again while the read still blocks.
    time.sleep(2 * INTERVAL)
    assert agent_status(state_dir)["stuck-1"] == "stalled"
    flag.unlink()
    t_unblock = time.monotonic()
    wait_until(lambda: agent_status(state_dir).get("stuck-1") == "running", 20, 0.2, what="stuck-1 to read normally again")
    released = time.monotonic() - t_unblock
    later = time.time()
    wait_until(lambda: any(t > later for t in timestamps(state_dir, "stuck-1")), 3 * INTERVAL + 2,
               what="stuck-1 to be sampled again in the pool")
    end_wall = time.time() - INTERVAL
    lost = {a: missed(timestamps(state_dir, a), INTERVAL, t0_wall, end_wall) for a in others}
    log = d.log()
    print(f"\n[fault] blocking read: stuck-1 stalled after {detected:.2f}s, released {released:.2f}s after the read "
          f"unblocked; missed samples of the {len(others)} agents of other shards: {sum(lost.values())}")
    assert sum(lost.values()) == 0, lost
    assert log_lines(log, "while reading agent stuck-1")
    assert log_lines(log, "stuck-1 reads normally again")
    assert len(log_lines(log, "agent stuck-1 (pid")) == 1  # quarantined once, retries are not re-announced


def test_a_stalled_pidfile_agent_is_named_right_after_its_shard_changed(daemons, procs, state_dir, tmp_path):
    """Every pidfile agent's heartbeat pid is -1: the supervisor used to name the agent at the
    heartbeat's index in its newest shard. An agent added in front of the stuck one meanwhile moved
    an innocent one to that index, and it was quarantined in the culprit's place. The heartbeat now
    says which shard (generation) the worker was reading."""
    from fleetmon.supervisor import registry as reg

    flag = tmp_path / "block"
    flag.touch()
    env = daemon_env(FLEETMON_TEST_BLOCK=str(flag))

    def add(agent_id: str) -> None:
        pidfile = tmp_path / f"{agent_id}.pid"
        pidfile.write_text(f"{procs.sleeper(900).pid}\n")
        reg.write_entry(state_dir / "registry", reg.RegistryEntry(agent_id, pidfile=str(pidfile)))

    for agent_id in ("p0", "p1", "p2", "p3"):
        add(agent_id)
    write_config(tmp_path / "fleetmon.toml", workers=1, interval=f"{INTERVAL}s", stall_timeout=f"{STALL}s", sampler_hook=BLOCK_HOOK)
    d = daemons(state_dir, "--config", str(tmp_path / "fleetmon.toml"), env=env)
    d.wait_tick(2, timeout=20)
    add("stuck-1")  # the shard p0 p1 p2 p3 stuck-1: the worker blocks at index 4
    wait_until(lambda: "stuck-1" in agent_status(state_dir), 10, 0.1, what="stuck-1 registered")
    time.sleep(INTERVAL)  # the next tick reaches it, and the worker blocks there
    add("a-new")  # the shard a-new p0 p1 p2 p3 stuck-1: p3 is at index 4 now
    wait_until(lambda: agent_status(state_dir).get("stuck-1") == "stalled", STALL + 10, 0.2, what="stuck-1 to be stalled")
    flag.unlink()
    log = d.log()
    assert log_lines(log, "while reading agent stuck-1"), log
    assert not log_lines(log, "while reading agent p3") and agent_status(state_dir)["p3"] == "running"


# A real-time signal (its default action ends the process too) has no name in signal.Signals: naming
# it in the log used to raise in the supervisor's loop, which then stopped the whole daemon.
@pytest.mark.parametrize("sig", [signal.SIGKILL, getattr(signal, "SIGRTMIN", 34) + 6], ids=["SIGKILL", "SIGRTMIN+6"])
def test_killed_worker_is_restarted_within_a_tick_and_counted(daemons, procs, state_dir, tmp_path, sig):
    d, ids, _ = _start(daemons, procs, state_dir, tmp_path, n=8, workers=2)
    old = _worker_pid(state_dir, 0)
    t0 = time.monotonic()
    before = set(children_of(d.pid))
    os.kill(old, sig)
    new = wait_until(lambda: set(children_of(d.pid)) - before, INTERVAL + 3, 0.02, what="worker 0 to be restarted")
    restarted = time.monotonic() - t0
    info = wait_until(lambda: (j := daemon_json(state_dir)) and j["workers"][0]["pid"] in new and j,
                      2 * INTERVAL + 3, 0.05, what="daemon.json to show the new worker 0")
    victims = [a for a in ids if shard_for(a, 2) == 0]
    after = time.time()
    wait_until(lambda: all(any(t > after for t in timestamps(state_dir, a)) for a in victims), 2 * INTERVAL + 2,
               what="worker 0's shard to be sampled again")
    st = status_json(state_dir)
    w0 = next(w for w in st["daemon"]["workers"] if w["index"] == 0)
    print(f"\n[fault] kill -9 worker: restarted after {restarted:.2f}s, restarts {w0['restarts']}")
    assert w0["restarts"] == 1
    assert restarted <= INTERVAL
    assert info["workers"][1]["restarts"] == 0
    name = "SIGKILL" if sig == signal.SIGKILL else "SIGRTMIN+6"
    assert len(log_lines(d.log(), f"worker-0 exited (signal {name})")) == 1
    assert d.proc.poll() is None


def test_worker_failing_at_boot_backs_off_and_recovers(daemons, procs, state_dir, tmp_path):
    flag = tmp_path / "bootfail"
    env = daemon_env(FLEETMON_TEST_BOOTFAIL=str(flag))
    d, ids, _ = _start(daemons, procs, state_dir, tmp_path, n=6, workers=2, hook="tests.faults.bootfail:hook", env=env)
    flag.touch()
    old = _worker_pid(state_dir, 0)
    os.kill(old, signal.SIGKILL)
    window = 7.0
    time.sleep(window)
    restarts = status_json(state_dir)["daemon"]["workers"][0]["restarts"]
    boots = len(log_lines(d.log(), "worker-0 exited"))
    flag.unlink()
    victims = [a for a in ids if shard_for(a, 2) == 0]
    t_fix = time.monotonic()
    after = time.time()
    wait_until(lambda: all(any(t > after for t in timestamps(state_dir, a)) for a in victims), 40,
               what="worker 0 to boot again and sample its shard")
    recovered = time.monotonic() - t_fix
    print(f"\n[fault] worker failing at boot: {restarts} restarts and {boots} exits in {window:.0f}s "
          f"(backoff 0.5s doubling), recovered {recovered:.1f}s after the fault was removed")
    # 0.5 + 1 + 2 + 4 s: four or five attempts in 7 s, not hundreds.
    assert 2 <= restarts <= 6, restarts
    assert d.proc.poll() is None


@pytest.mark.skipif(sys.platform != "linux", reason="prctl and /proc are Linux")
def test_restart_backoff_is_a_pure_decision():
    from fleetmon.supervisor import sharding

    assert sharding.restart_delay(0) == 0.0
    delays = [sharding.restart_delay(n) for n in range(1, 10)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert delays == sorted(delays) and delays[-1] == sharding.BACKOFF_MAX
    failures = 0
    for _ in range(5):
        failures = sharding.next_failures(failures, lived=0.1)
    assert failures == 5
    assert sharding.next_failures(failures, lived=sharding.BOOT_GRACE + 1) == 0
    # Quarantine retries double from one interval, capped.
    q = [sharding.quarantine_delay(s, 1.0) for s in range(1, 10)]
    assert q[:3] == [1.0, 2.0, 4.0] and max(q) == 64.0


def _exit_at_once(*args) -> None:
    os._exit(1)


def test_a_writer_that_died_in_service_is_restarted_at_once_one_that_cannot_boot_backs_off():
    """Backoff is for a child that cannot boot. A writer killed a few seconds after a restart had
    persisted ticks all the same; it waited 0.5, 1, 2 ... 16 s (no persisting, no HTTP meanwhile)."""
    from fleetmon.supervisor import children

    def die(in_service: bool, failures: int) -> float:
        c = children.Child("writer", -1)
        c.failures = failures
        c.start(_exit_at_once, (), 2)
        c.in_service = in_service  # (set by the arbiter when the writer's Persisted comes)
        c.proc.join(10)
        assert c.reap() == "exit code 1"
        return c.respawn_at - time.monotonic()

    assert die(in_service=True, failures=4) <= 0.1
    assert die(in_service=False, failures=4) >= 7.0  # dead young five times in a row: 8 s


def test_whole_daemon_stopped_and_continued_replaces_nobody(daemons, procs, state_dir, tmp_path):
    """Ctrl-Z and fg (or a paused container): every process was stopped, so a worker's silence is
    not its own fault; nobody is replaced when they all continue."""
    d, ids, _ = _start(daemons, procs, state_dir, tmp_path, n=6, workers=2)
    info = daemon_json(state_dir)
    everyone = [d.pid, info["writer_pid"], *(w["pid"] for w in info["workers"])]
    for pid in everyone:
        os.kill(pid, signal.SIGSTOP)
    time.sleep(STALL + 3)
    kill_quietly(d.pid, signal.SIGCONT)  # the worst order: the supervisor first, and it looks around
    time.sleep(0.3)
    for pid in everyone[1:]:
        kill_quietly(pid, signal.SIGCONT)
    after = time.time()
    wait_until(lambda: all(any(t > after for t in timestamps(state_dir, a)) for a in ids), 3 * INTERVAL + 3,
               what="every agent to be sampled again")
    time.sleep(2 * INTERVAL)
    now = daemon_json(state_dir)
    assert [w["pid"] for w in now["workers"]] == [w["pid"] for w in info["workers"]], d.log()
    assert now["writer_pid"] == info["writer_pid"]
    assert not log_lines(d.log(), "made no progress")


def test_a_pidfile_agent_whose_pidfile_is_gone_stays_followed_across_a_new_worker_and_daemon(daemons, procs, state_dir, tmp_path):
    """A tmp cleaner removes a running agent's pidfile. The worker that was sampling it keeps its
    process; a worker started after that (the old one killed), or a daemon started again, knew
    nothing of it and called the agent exited at once. They now follow the process the writer last
    recorded (status.json) while it runs, checked by its start time."""
    from fleetmon.supervisor import registry as reg

    agent = procs.sleeper(900)
    pidfile = tmp_path / "agent.pid"
    pidfile.write_text(f"{agent.pid}\n")
    reg.write_entry(state_dir / "registry", reg.RegistryEntry("p", pidfile=str(pidfile)))
    write_config(tmp_path / "fleetmon.toml", workers=1, interval=f"{INTERVAL}s", stall_timeout=f"{STALL}s")
    d = daemons(state_dir, "--config", str(tmp_path / "fleetmon.toml"), env=daemon_env())
    d.wait_tick(2, timeout=20)
    wait_until(lambda: status_json(state_dir)["agents"][0]["start_time"], 10, 0.1, what="status.json to record p's process")
    pidfile.unlink()
    old = _worker_pid(state_dir, 0)
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: _worker_pid(state_dir, 0) != old, 10, 0.1, what="worker 0 to be replaced")
    after = time.time()
    wait_until(lambda: any(t > after + INTERVAL for t in timestamps(state_dir, "p")), 4 * INTERVAL + 5, 0.1,
               what="p to be sampled by the new worker")
    assert agent_status(state_dir)["p"] == "running"
    assert log_lines(d.log(), f"sampling pid {agent.pid}, the process it ran as when last recorded"), d.log()
    assert d.stop() == 0
    d = daemons(state_dir, "--config", str(tmp_path / "fleetmon.toml"), env=daemon_env())
    d.wait_tick(3, timeout=20)
    after = time.time()
    wait_until(lambda: any(t > after for t in timestamps(state_dir, "p")), 3 * INTERVAL + 5, 0.1,
               what="p to be sampled by the new daemon")
    assert agent_status(state_dir)["p"] == "running"
    kill_quietly(agent.pid)
    agent.wait(timeout=10)
    wait_until(lambda: agent_status(state_dir)["p"] == "exited", 3 * INTERVAL + 5, 0.1, what="p to be exited with its process")


def test_an_agent_released_from_quarantine_is_sampled_at_the_tick_that_releases_it(daemons, procs, state_dir, tmp_path):
    """The release came after the tick's Tick had gone out: a worker that read the Tick alone
    skipped the agent at that tick, a one-tick hole in its history right after the release."""
    flag = tmp_path / "block"
    flag.touch()
    env = daemon_env(FLEETMON_TEST_BLOCK=str(flag))
    interval = 2.0
    register_direct(state_dir, "a000", procs.sleeper(900).pid)
    write_config(tmp_path / "f.toml", workers=1, interval=f"{interval}s", stall_timeout="3s", sampler_hook=BLOCK_HOOK)
    d = daemons(state_dir, "--config", str(tmp_path / "f.toml"), env=env)
    d.wait_tick(1, timeout=20)
    register_direct(state_dir, "stuck-1", procs.sleeper(900).pid)
    wait_until(lambda: agent_status(state_dir).get("stuck-1") == "stalled", 20, 0.2, what="stuck-1 quarantined")
    flag.unlink()
    wait_until(lambda: "stuck-1 reads normally again" in d.log(), 30, 0.2, what="stuck-1 released")
    released = time.time()
    wait_until(lambda: len([t for t in timestamps(state_dir, "stuck-1") if t > released]) >= 3, 20, 0.2, what="3 samples in the pool")
    ts = timestamps(state_dir, "stuck-1")
    gaps = [round(b - a, 2) for a, b in zip(ts, ts[1:], strict=False)]
    assert max(gaps) < 1.5 * interval, gaps
    assert d.stop() == 0
