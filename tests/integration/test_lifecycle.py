"""Agents and the daemon over time: exits, missing pids, restarts of agents and of the daemon."""

from __future__ import annotations

import os
import signal

import pytest

from tests.helpers import cli, pid_alive, register, wait_until
from tests.integration.common import agent, alerts, history, parse_ts, wait_points, wait_status

FAST = ("--interval", "250ms", "--workers", "2")


def test_killed_agent_becomes_exited_and_its_alerts_close(procs, state_dir, daemons):
    p = procs.sleeper()
    register(state_dir, "victim", p.pid, open_files=1, **{"for": "1h"})
    d = daemons(state_dir, *FAST)
    a = wait_status(state_dir, "victim", lambda a: a["alerts"], what="open alert")
    assert a["status"] == "running" and a["pid"] == p.pid
    assert a["alerts"][0]["resource"] == "open_files" and a["alerts"][0]["state"] == "warning"
    p.kill()
    p.wait(timeout=10)
    a = wait_status(state_dir, "victim", lambda a: a["status"] == "exited", what="exited")
    assert a["alerts"] == []
    events = alerts(state_dir)
    assert [(e["state"], e.get("reason")) for e in events] == [("warning", None), ("ok", "exited")]
    assert events[1]["value"] is None and events[1]["since"] == events[0]["since"]
    assert "exited" in d.log()
    n = len(history(state_dir, "victim"))
    d.wait_tick(d.daemon_json()["tick"] + 2)
    assert len(history(state_dir, "victim")) == n  # nothing recorded for a dead agent
    assert agent(state_dir, "victim")["status"] == "exited"
    assert d.stop() == 0


def test_registered_pid_that_does_not_exist_is_not_running(procs, state_dir, daemons):
    gone = procs.start(["true"])
    gone.wait(timeout=10)
    assert not pid_alive(gone.pid)
    live = procs.sleeper()
    register(state_dir, "ghost", gone.pid)
    register(state_dir, "live", live.pid)
    d = daemons(state_dir, *FAST)
    wait_points(state_dir, "live", 3)
    d.wait_tick(3)
    ghost = agent(state_dir, "ghost")
    assert ghost["status"] == "not_running"
    assert ghost["last_sample"] is None and ghost["start_time"] is None and ghost["restart_count"] == 0
    assert history(state_dir, "ghost") == []
    assert agent(state_dir, "live")["status"] == "running"
    assert d.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_drains_and_exits_0(procs, state_dir, daemons, sig):
    p = procs.sleeper()
    register(state_dir, "a", p.pid)
    d = daemons(state_dir, *FAST)
    info = d.wait_tick(2)
    children = [info["writer_pid"]] + [w["pid"] for w in info["workers"]]
    assert all(pid_alive(c) for c in children)
    # each role named in ps and top (their command lines are the supervisor's)
    names = [open(f"/proc/{c}/comm").read().strip() for c in children]
    assert names == ["fleetmon-writer", *(f"fleetmon-w{w['index']}" for w in info["workers"])]
    assert d.stop(sig=sig) == 0
    assert not any(pid_alive(c) for c in children), "a child outlived the daemon"
    assert not pid_alive(d.pid)
    final = d.daemon_json()
    assert final["running"] is False
    n = len(history(state_dir, "a"))
    assert n >= 2 and final["persisted_tick"] >= 2
    assert "fleetmon stopped" in d.log()


def test_history_and_alert_state_survive_a_daemon_restart(procs, state_dir, daemons):
    p = procs.sleeper()
    register(state_dir, "keeper", p.pid, open_files=1, **{"for": "1h"})
    first = daemons(state_dir, *FAST)
    a = wait_status(state_dir, "keeper", lambda a: a["alerts"], what="pending warning")
    (brief,) = a["alerts"]
    assert brief["state"] == "warning"
    wait_points(state_dir, "keeper", 4)
    assert first.stop() == 0
    before = history(state_dir, "keeper")
    events_before = alerts(state_dir)
    assert [e["state"] for e in events_before] == ["warning"]

    second = daemons(state_dir, *FAST)
    after = wait_points(state_dir, "keeper", len(before) + 4)
    assert after[: len(before)] == before  # nothing lost, nothing rewritten
    assert after[len(before)]["timestamp"] > before[-1]["timestamp"]
    second.wait_tick(3)
    a = agent(state_dir, "keeper")
    assert a["alerts"] == [brief]  # still the same pending warning: same since
    assert a["status"] == "running" and a["restart_count"] == 0  # the same process: no restart counted
    assert alerts(state_dir) == events_before  # no second warning opened
    assert second.stop() == 0


def test_pidfile_rewritten_to_a_new_process_counts_a_restart(procs, state_dir, tmp_path, daemons):
    old, new = procs.sleeper(), procs.sleeper()
    pidfile = tmp_path / "agent.pid"
    pidfile.write_text(f"{old.pid}\n")
    register(state_dir, "pf", pidfile=str(pidfile))
    d = daemons(state_dir, *FAST)
    a = wait_status(state_dir, "pf", lambda a: a["status"] == "running", what="running")
    assert a["pid"] == old.pid and a["restart_count"] == 0
    tmp = tmp_path / "agent.pid.tmp"
    tmp.write_text(f"{new.pid}\n")
    os.replace(tmp, pidfile)
    a = wait_status(state_dir, "pf", lambda a: a["pid"] == new.pid, what="follows the new pid")
    assert a["restart_count"] == 1 and a["status"] == "running"
    n = len(history(state_dir, "pf"))
    wait_points(state_dir, "pf", n + 2)
    assert agent(state_dir, "pf")["restart_count"] == 1  # counted once, not per tick
    assert d.stop() == 0
    # a daemon restart does not count it again
    again = daemons(state_dir, *FAST)
    n = len(history(state_dir, "pf"))
    wait_points(state_dir, "pf", n + 3)
    a = agent(state_dir, "pf")
    assert (a["pid"], a["restart_count"], a["status"]) == (new.pid, 1, "running")
    assert again.stop() == 0


def test_pidfile_appearing_later_is_followed(procs, state_dir, tmp_path, daemons):
    pidfile = tmp_path / "late.pid"
    register(state_dir, "late", pidfile=str(pidfile))
    d = daemons(state_dir, *FAST)
    d.wait_tick(3)
    assert agent(state_dir, "late")["status"] == "not_running"
    p = procs.sleeper()
    pidfile.write_text(f"{p.pid}\n")
    a = wait_status(state_dir, "late", lambda a: a["status"] == "running", what="running")
    assert a["pid"] == p.pid and a["restart_count"] == 0  # the first process seen is no restart
    pidfile.unlink()  # removed before its process exits (or caught mid-rewrite): still the agent while it runs
    d.wait_tick(d.daemon_json()["tick"] + 3)
    assert agent(state_dir, "late")["status"] == "running"
    p.kill()
    wait_status(state_dir, "late", lambda a: a["status"] == "exited", what="exited with its process")
    assert d.stop() == 0


def test_reregistered_pid_counts_a_restart(procs, state_dir, daemons):
    old, new = procs.sleeper(), procs.sleeper()
    register(state_dir, "re", old.pid)
    d = daemons(state_dir, *FAST)
    wait_status(state_dir, "re", lambda a: a["status"] == "running", what="running")
    register(state_dir, "re", new.pid)
    a = wait_status(state_dir, "re", lambda a: a["pid"] == new.pid and a["restart_count"] == 1, what="restart counted")
    assert a["status"] == "running"
    assert d.stop() == 0


def test_history_is_bounded_by_history_size(procs, state_dir, tmp_path, daemons):
    p = procs.sleeper()
    register(state_dir, "b", p.pid)
    config = tmp_path / "fleetmon.toml"
    config.write_text("history_size = 5\n")
    d = daemons(state_dir, "--config", str(config), *FAST)
    d.wait_tick(9)
    assert d.stop() == 0
    points = history(state_dir, "b")
    ticks = d.daemon_json()["tick"]
    assert ticks >= 9
    assert len(points) == 5  # the newest five of ``ticks`` samples
    stamps = [pt["timestamp"] for pt in points]
    assert stamps == sorted(stamps)
    assert (state_dir / "history" / "b.ring").stat().st_size == 64 * (5 + 1)
    last = agent(state_dir, "b")["last_sample"]
    assert last == points[-1]


def test_invalid_registry_entries_are_skipped_and_the_rest_keep_running(procs, state_dir, tmp_path, daemons):
    """Bad input loses nothing: each invalid file is named once in an error, the valid agents are
    sampled, and no child of the daemon dies over it (a pid too large for the wire, in a registry file
    or in a pidfile, once crashed the supervisor or a worker)."""
    p = procs.sleeper()
    register(state_dir, "good", p.pid)
    huge = tmp_path / "huge.pid"
    huge.write_text("99999999999999999999\n")
    register(state_dir, "hugepidfile", pidfile=str(huge))
    registry = state_dir / "registry"
    bad = {
        "huge.json": '{"id": "huge", "pid": 99999999999999999999}',
        "zero.json": '{"id": "zero", "pid": 0}',
        "mismatch.json": '{"id": "other", "pid": 1}',
        "torn.json": '{"id": "torn", "pi',
    }
    for name, text in bad.items():
        (registry / name).write_text(text)
    d = daemons(state_dir, *FAST)
    wait_points(state_dir, "good", 4)
    info = d.wait_tick(4)
    assert all(w["restarts"] == 0 for w in info["workers"]), info
    assert info["writer_restarts"] == 0
    assert agent(state_dir, "hugepidfile")["status"] == "not_running"
    log = d.log()
    for name in bad:
        assert sum(name in line and "ERROR" in line for line in log.splitlines()) == 1, (name, log)
    assert "Traceback" not in log
    assert d.stop() == 0


def test_a_removed_agent_is_forgotten_after_keep_removed(procs, state_dir, tmp_path, daemons):
    """`agents rm`, then ``keep_removed`` later (here 3 s) its history and metadata are deleted and
    it is unknown; the agent still registered keeps everything."""
    gone, stays = procs.sleeper(), procs.sleeper()
    register(state_dir, "gone", gone.pid)
    register(state_dir, "stays", stays.pid)
    config = tmp_path / "fleetmon.toml"
    config.write_text('keep_removed = "3s"\n')
    d = daemons(state_dir, "--config", str(config), *FAST)
    wait_points(state_dir, "gone", 2)
    cli("agents", "rm", "gone", state_dir=state_dir, check=True)
    ring, meta = state_dir / "history" / "gone.ring", state_dir / "agents" / "gone.json"
    wait_until(lambda: not ring.exists() and not meta.exists(), 30, what="gone's files deleted")
    proc = cli("history", "gone", state_dir=state_dir)
    assert proc.returncode == 2 and "unknown agent" in proc.stderr
    assert "agent gone forgotten: removed from the registry over 3s ago (keep_removed)" in d.log()
    assert "agent stays forgotten" not in d.log()
    assert "keep_removed is 3s: an agent's history and metadata are deleted 3s after it leaves the registry" in d.log()
    n = len(history(state_dir, "stays"))
    d.wait_tick(d.daemon_json()["tick"] + 2)
    assert len(history(state_dir, "stays")) > n and (state_dir / "agents" / "stays.json").exists()
    assert d.stop() == 0


def test_a_registry_change_keeps_the_cpu_baseline_of_agents_that_stay(procs, state_dir, daemons):
    """An agent added (a new shard for the worker) must not cost the agents already there their
    kept process and cpu baseline: only an agent's first point has a null cpu."""
    register(state_dir, "a", procs.sleeper().pid)
    daemons(state_dir, "--interval", "250ms", "--workers", "1")
    wait_points(state_dir, "a", 3)
    register(state_dir, "b", procs.sleeper().pid)
    wait_points(state_dir, "b", 3)
    for agent_id in ("a", "b"):
        cpus = [p["cpu"] for p in history(state_dir, agent_id)]
        assert cpus[0] is None and None not in cpus[1:], (agent_id, cpus)


def test_an_agent_added_between_ticks_is_sampled_at_once_not_at_the_next_tick(procs, state_dir, daemons):
    """At the default 60 s interval a new agent showed `not_running` (a problem to `status --problems
    --exit-code`) for up to a minute: the worker that gets it samples it at once. Such a sample is
    not a tick: timing and tick counts are left alone."""
    first = procs.sleeper()
    register(state_dir, "first", first.pid)
    d = daemons(state_dir, "--interval", "30s", "--workers", "2")
    d.wait_tick(1)
    wait_status(state_dir, "first", lambda a: a["status"] == "running", what="first running")
    tick = d.daemon_json()["tick"]
    late = procs.sleeper()
    register(state_dir, "late", late.pid)
    a = wait_status(state_dir, "late", lambda a: a["status"] == "running", timeout=10, what="late running before the next tick")
    assert a["pid"] == late.pid and a["last_sample"] is not None and a["last_sample"]["cpu"] is None
    assert d.daemon_json()["tick"] == tick  # no tick came: the 30 s interval is far off
    assert len(history(state_dir, "late")) == 1
    assert len(history(state_dir, "first")) == 1  # the others are not sampled again
    assert d.stop() == 0


def test_a_state_dir_too_long_for_a_socket_path_keeps_the_socket_in_it(procs, tmp_path, daemons):
    """run/writer.sock past 108 bytes cannot be bound by its path. It used to go to
    /tmp/fleetmon-<uid>-<digest>, a name anyone could take first (another user made the directory:
    the daemon could not start), left behind at every stop. It is named through a descriptor of
    run/ now (/proc/self/fd/N/writer.sock): the socket stays in the state dir."""
    import hashlib
    import stat
    import tempfile
    from pathlib import Path

    state_dir = tmp_path / ("s" * 120)
    sock = state_dir / "run" / "writer.sock"
    assert len(str(sock).encode()) > 108
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]
    old_place = Path(tempfile.gettempdir()) / f"fleetmon-{os.getuid()}-{digest}"
    p = procs.sleeper()
    register(state_dir, "a", p.pid)
    d = daemons(state_dir, *FAST)
    wait_points(state_dir, "a", 3)
    assert stat.S_ISSOCK(os.lstat(sock).st_mode)
    assert not old_place.exists()
    second = cli("run", "--interval", "250ms", state_dir=state_dir, timeout=60)  # the lock, then the socket, refuse it
    assert second.returncode == 1, second.stderr
    assert d.stop() == 0
    assert not sock.exists() and not old_place.exists()


def test_an_agent_added_at_a_tick_is_sampled_once_by_that_tick_not_twice(procs, state_dir, daemons):
    """A registry change found at a tick sent an Assign, then the Tick: a worker that read the Assign
    alone sampled the new agent early, then again for the tick a millisecond later, with a cpu
    computed over that millisecond (0 or 291% for a busy loop). Early sampling is for changes seen
    between ticks, over a second before the next."""
    first = procs.sleeper()
    register(state_dir, "first", first.pid)
    d = daemons(state_dir, "--interval", "1s", "--workers", "1")
    d.wait_tick(2)
    for i in range(12):
        register(state_dir, f"busy{i}", procs.python("while True: pass\n").pid)
    close = []
    for i in range(12):
        ts = [parse_ts(p["timestamp"]) for p in wait_points(state_dir, f"busy{i}", 3, timeout=30)]
        if min(b - a for a, b in zip(ts, ts[1:], strict=False)) < 0.3:
            close.append(f"busy{i}")
    assert not close, f"points far closer together than the 1s interval: {close}"
    assert d.stop() == 0


def test_an_agent_added_to_a_replaced_workers_shard_shows_running_at_once(procs, state_dir, daemons):
    """A worker started since the last tick (replaced after a crash) had no tick to put an early
    batch under: an agent added to its shard waited for the next tick."""
    import json

    from fleetmon.supervisor.sharding import shard_for

    def worker0() -> int:
        return next(w["pid"] for w in json.loads((state_dir / "daemon.json").read_text())["workers"] if w["index"] == 0)

    first = procs.sleeper()
    register(state_dir, "first", first.pid)
    d = daemons(state_dir, "--interval", "60s", "--workers", "2")
    d.wait_tick(1)
    wait_status(state_dir, "first", lambda a: a["status"] == "running", what="first running")
    old = worker0()
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: "worker-0 restarted" in d.log(), 15, 0.1, what="worker 0 replaced")
    late_id = next(f"late{i}" for i in range(100) if shard_for(f"late{i}", 2) == 0)
    late = procs.sleeper()
    register(state_dir, late_id, late.pid)
    a = wait_status(state_dir, late_id, lambda a: a["status"] == "running", timeout=10, what="running before the next tick")
    assert a["pid"] == late.pid
    assert d.stop() == 0
