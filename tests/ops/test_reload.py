"""SIGHUP: the config file and the registry are reloaded without a restart."""

from __future__ import annotations

import signal
import time

import pytest

from fleetmon.supervisor import reload
from fleetmon.supervisor.config import load
from tests.helpers import cli_json, pid_alive, register, wait_until
from tests.ops._util import daemon_env, hog, write_config


def test_config_changes_names_every_reloadable_key(tmp_path):
    old = load(write_config(tmp_path / "a.toml", "[thresholds.default]\ncpu_threshold = 90\n", workers=2, interval="60s"))
    new = load(
        write_config(
            tmp_path / "b.toml",
            "[thresholds.default]\ncpu_threshold = 50\n[thresholds.types.web]\nmemory_threshold = \"1GiB\"\n",
            workers=4, interval="1s", alert_repeat="0",
        )
    )
    assert reload.config_changes(old, new) == [
        ("workers", 2, 4),
        ("interval", 60.0, 1.0),
        ("alert_repeat", 600.0, 0.0),
        ("thresholds.default.cpu_threshold", 90.0, 50.0),
        ("thresholds.types.web.memory_threshold", None, 1 << 30),
    ]
    assert reload.config_changes(old, old) == []
    assert "history_size" in reload.restart_only() and "interval" not in reload.restart_only()
    quiet = load(write_config(tmp_path / "c.toml", "[thresholds.default]\ncpu_threshold = 90\n", workers=2, interval="60s", log_level="warning"))
    assert reload.config_changes(old, quiet) == [("log_level", "INFO", "WARNING")]
    assert "log_level" not in reload.restart_only() and "log_format" in reload.restart_only()
    # retention applies without a restart, and is shown as written, not as bytes or seconds
    assert not {"alerts_max_size", "keep_removed"} & set(reload.restart_only())
    kept = load(write_config(tmp_path / "d.toml", "[thresholds.default]\ncpu_threshold = 90\n", workers=2, interval="60s",
                             alerts_max_size="1MiB", keep_removed="1d"))
    assert reload.config_changes(old, kept) == [("keep_removed", 604800.0, 86400.0), ("alerts_max_size", 64 << 20, 1 << 20)]
    assert (reload._show("keep_removed", 604800.0), reload._show("alerts_max_size", 64 << 20)) == ("7d", "64.0MiB")


def _events(state_dir, agent_id: str) -> list[dict]:
    return [e for e in cli_json("alerts", "--since", "1h", state_dir=state_dir)["events"] if e["agent_id"] == agent_id]


@pytest.mark.slow
def test_sighup_applies_a_new_threshold_without_a_restart(daemons, procs, state_dir, tmp_path):
    register(state_dir, "busy", pid=hog(procs).pid)  # no thresholds of its own: the config's apply
    config = tmp_path / "fleetmon.toml"
    table = "[thresholds.default]\ncpu_threshold = {}\nthreshold_duration = 0\n"
    write_config(config, table.format(100000), interval="500ms", workers=1)
    d = daemons(state_dir, "--config", str(config), env=daemon_env())
    d.wait_tick(4)
    assert _events(state_dir, "busy") == []
    write_config(config, table.format(20), interval="500ms", workers=1)
    d.proc.send_signal(signal.SIGHUP)
    events = wait_until(lambda: _events(state_dir, "busy"), 15, what="a cpu alert after SIGHUP")
    assert events[0]["resource"] == "cpu" and events[0]["state"] == "error"
    assert events[0]["threshold"] == 20
    assert d.proc.poll() is None
    assert "thresholds.default.cpu_threshold 100000 -> 20" in d.log()
    # Turning it off again closes the episode (reason threshold_off), still without a restart.
    write_config(config, table.format(0), interval="500ms", workers=1)
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: _events(state_dir, "busy")[-1]["state"] == "ok", 15, what="the alert closed")
    assert d.proc.poll() is None


@pytest.mark.slow
def test_sighup_changes_the_number_of_workers_and_reshards(daemons, procs, state_dir, tmp_path):
    for i in range(6):
        register(state_dir, f"idle-{i}", pid=procs.sleeper().pid)
    config = write_config(tmp_path / "fleetmon.toml", interval="500ms", workers=1)
    d = daemons(state_dir, "--config", str(config), env=daemon_env())
    first = d.wait_tick(2)
    assert [w["agents"] for w in first["workers"]] == [6]
    old_pid = first["workers"][0]["pid"]

    def pool(n: int):
        info = d.daemon_json()
        if info and len(info["workers"]) == n and sum(w["agents"] for w in info["workers"]) == 6:
            return info
        return None

    write_config(config, interval="500ms", workers=3)
    d.proc.send_signal(signal.SIGHUP)
    grown = wait_until(lambda: pool(3), 15, what="3 workers in daemon.json")
    assert grown["workers"][0]["pid"] == old_pid  # the existing worker kept running
    assert sum(w["agents"] > 0 for w in grown["workers"]) >= 2, grown["workers"]  # resharded
    d.wait_tick(grown["tick"] + 2)  # ticks keep being persisted by the bigger pool
    pids = [w["pid"] for w in grown["workers"]]

    write_config(config, interval="500ms", workers=1)
    d.proc.send_signal(signal.SIGHUP)
    shrunk = wait_until(lambda: pool(1), 15, what="1 worker in daemon.json")
    d.wait_tick(shrunk["tick"] + 2)
    wait_until(lambda: not any(pid_alive(p) for p in pids[1:]), 10, what="the surplus workers to exit")
    assert d.proc.poll() is None
    log = d.log()
    assert "workers 1 -> 3" in log and "workers 3 -> 1" in log
    status = cli_json("status", state_dir=state_dir)
    assert all(a["status"] == "running" for a in status["agents"]), status


@pytest.mark.slow
def test_sighup_interval_applies_at_once_and_flags_still_win(daemons, procs, state_dir, tmp_path):
    register(state_dir, "idle", pid=procs.sleeper().pid)
    config = write_config(tmp_path / "fleetmon.toml", interval="60s", workers=2)
    d = daemons(state_dir, "--config", str(config), "--workers", "1", env=daemon_env())
    d.wait_tick(1)
    write_config(config, interval="500ms", workers=3)  # --workers 1 on the command line wins
    sent = time.monotonic()
    d.proc.send_signal(signal.SIGHUP)
    d.wait_tick(4, timeout=15)
    assert time.monotonic() - sent < 10
    assert len(d.daemon_json()["workers"]) == 1
    assert "interval 1m -> 500ms" in d.log()


@pytest.mark.slow
def test_an_invalid_config_is_refused_and_the_old_one_kept(daemons, procs, state_dir, tmp_path):
    register(state_dir, "idle", pid=procs.sleeper().pid)
    config = write_config(tmp_path / "fleetmon.toml", interval="500ms", workers=1)
    d = daemons(state_dir, "--config", str(config), env=daemon_env())
    d.wait_tick(2)
    for n, bad in enumerate(('interval = "soon"\n', "workers = [\n", "no_such_key = 1\n"), 1):
        config.write_text(bad)
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda n=n: d.log().count("new config refused") >= n, 10, what=f"refusal {n}")
    tick = d.daemon_json()["tick"]
    d.wait_tick(tick + 3, timeout=10)  # still ticking every 500ms with the old config
    assert d.proc.poll() is None
    log = d.log()
    assert log.count("new config refused") == 3
    assert "interval: invalid duration 'soon'" in log
    assert "ERROR" in next(line for line in log.splitlines() if "new config refused" in line)
    # A registry entry added meanwhile was picked up by the same SIGHUPs.
    register(state_dir, "late", pid=procs.sleeper().pid)
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "late" in {a["id"] for a in cli_json("status", state_dir=state_dir)["agents"] if a["last_sample"]}, 10, what="the new agent sampled")


@pytest.mark.slow
def test_sighup_log_level_reaches_the_workers_and_the_writer(daemons, procs, state_dir, tmp_path):
    """``systemctl reload`` turns DEBUG logging on and off without a restart: every process applies
    it and says so at INFO (not at the new level: no ERROR line for "log_level = ERROR")."""
    import json

    register(state_dir, "idle", pid=procs.sleeper().pid)
    config = write_config(tmp_path / "fleetmon.toml", interval="500ms", workers=2, log_format="json")
    d = daemons(state_dir, "--config", str(config), env=daemon_env())
    info = d.wait_tick(2)
    pids = {w["pid"] for w in info["workers"]} | {info["writer_pid"]}

    def lines(level: str | None = None) -> list[dict]:
        out = []
        for text in d.log().splitlines():
            try:
                line = json.loads(text)
            except ValueError:
                continue
            if level is None or line.get("level") == level:
                out.append(line)
        return out

    def said(level: str) -> set[int] | None:
        s = {x["process"] for x in lines("INFO") if f"logs at {level} from now on" in x["message"]}
        return s if s >= pids else None

    assert lines("DEBUG") == []
    write_config(config, interval="500ms", workers=2, log_format="json", log_level="DEBUG")
    d.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: said("DEBUG"), 15, what="every worker and the writer at DEBUG") == pids
    assert any("log_level INFO -> DEBUG" in x["message"] for x in lines("INFO"))
    register(state_dir, "late", pid=procs.sleeper().pid)  # the supervisor's reshard logs at DEBUG
    wait_until(lambda: any(x["message"].startswith("shards: ") for x in lines("DEBUG")), 20, what="a supervisor DEBUG line")
    assert any(x["message"] == "registry: 2 agents: added late" for x in lines("INFO"))

    write_config(config, interval="500ms", workers=2, log_format="json", log_level="ERROR")
    d.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: said("ERROR"), 15, what="every worker and the writer at ERROR") == pids
    assert any("log_level DEBUG -> ERROR" in x["message"] for x in lines("INFO"))
    assert not [x for x in lines() if x["level"] in ("WARNING", "ERROR") and "log" in x["message"]]
    assert d.proc.poll() is None


@pytest.mark.slow
def test_a_shrunk_pool_hands_agents_over_without_their_last_sample_going_back_in_time(procs, tmp_path, state_dir, daemons):
    """SIGHUP shrinking the pool hands the surplus worker's agents to the others while it finishes its
    tick. Had they sampled them at once (as agents registered between ticks are), the surplus
    worker's batch, read earlier but delivered later, would have been appended after theirs: an
    older reading as the agent's last sample, and as its ring's newest (what a restarted writer
    dedupes resent batches against). They wait for the next tick, as before."""
    from fleetmon.supervisor.sharding import shard_for
    from tests.faults._util import timestamps
    from tests.integration.common import parse_ts, status

    fast = next(f"a{i}" for i in range(100) if shard_for(f"a{i}", 2) == 1)
    slow = [f"slow{i}" for i in range(200) if shard_for(f"slow{i}", 2) == 1][:16]
    for a in [fast, *slow]:
        register(state_dir, a, procs.sleeper().pid)
    hook = "tests.ops.hooks:slow_in_worker_1"
    cfg = write_config(tmp_path / "c.toml", workers=2, interval="8s", stall_timeout="60s", sampler_hook=hook)
    d = daemons(state_dir, "--config", str(cfg), env=daemon_env())
    wait_until(lambda: len(timestamps(state_dir, fast)) >= 1, 30, 0.05, what="first tick")
    tick1 = wait_until(lambda: (ts := timestamps(state_dir, slow[-1])) and ts, 30, 0.05, what="worker 1's first pass")
    time.sleep(max(0.0, tick1[-1] + 8.0 - time.time()) + 0.5)  # 0.5 s into the second tick: worker 1 still busy
    write_config(cfg, workers=1, interval="8s", stall_timeout="60s", sampler_hook=hook)
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "workers: stopped" in d.log(), 30, 0.1, what="pool shrunk")
    time.sleep(1.0)
    ts = timestamps(state_dir, fast)  # in the ring's order (sequence numbers)
    last = next(a for a in status(state_dir)["agents"] if a["id"] == fast)["last_sample"]
    assert ts == sorted(ts), [round(t - ts[0], 3) for t in ts]
    assert parse_ts(last["timestamp"]) >= max(ts) - 0.001
    assert d.stop() == 0


def test_an_agent_registered_then_a_reload_is_sampled_at_once(procs, state_dir, daemons):
    """`agents add X && systemctl reload fleetmon` between ticks: the reload's rescan took the
    change from the once-a-second poll, without sampling X at once: X waited for the next tick."""
    from fleetmon.supervisor import registry as reg
    from tests.integration.common import wait_status

    first = procs.sleeper()
    register(state_dir, "first", first.pid)
    d = daemons(state_dir, "--interval", "60s", "--workers", "1")
    d.wait_tick(1)
    wait_status(state_dir, "first", lambda a: a["status"] == "running", what="first running")
    time.sleep(2.5)  # well between ticks
    late = procs.sleeper()
    reg.write_entry(state_dir / "registry", reg.RegistryEntry("late", None, late.pid))
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "SIGHUP: registry rescanned" in d.log(), 10, 0.05, what="rescan")
    a = wait_status(state_dir, "late", lambda a: a["status"] == "running", timeout=10, what="running before the next tick")
    assert a["pid"] == late.pid
    assert d.stop() == 0


def test_a_reload_refuses_an_invalid_http_address(tmp_path):
    """http needs a restart, but an invalid one must be refused at the reload (as run refuses it),
    not kept quietly until the next restart exits 2."""
    from types import SimpleNamespace

    from loguru import logger

    path = write_config(tmp_path / "fleetmon.toml", interval="1s", workers=1)
    arbiter = SimpleNamespace(config=load(path), config_path=path, overrides=None)
    running = arbiter.config
    path.write_text('interval = "1s"\nworkers = 1\nhttp = "localhost:http"\n')
    lines: list[str] = []
    handler = logger.add(lines.append, level="INFO", format="{level} {message}")
    try:
        assert reload.reload_config(arbiter) is False
    finally:
        logger.remove(handler)
    assert arbiter.config is running
    refusal = [line for line in lines if "new config refused" in line]
    assert refusal and refusal[0].startswith("ERROR") and "http: invalid port in 'localhost:http'" in refusal[0], lines
