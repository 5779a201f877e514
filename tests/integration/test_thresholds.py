"""Thresholds end to end: warning, then error after the duration, then ok on recovery, in the daemon
log and in ``alerts --json``; sources from the config file."""

from __future__ import annotations

import json
from itertools import pairwise

from tests.helpers import cli, register, wait_until
from tests.integration.common import PY, agent, alerts, fd_count, parse_ts
from tests.integration.common import status as status_json

EXTRA = 20
LIMIT = 15
# Holds EXTRA extra fds while the file argv[1] exists, none otherwise.
FD_TOGGLE = f"""
import os, sys, time
hold = sys.argv[1]
fds = []
while True:
    if os.path.exists(hold) and not fds:
        fds = [os.open("/dev/null", os.O_RDONLY) for _ in range({EXTRA})]
    elif not os.path.exists(hold) and fds:
        for fd in fds:
            os.close(fd)
        fds = []
    time.sleep(0.02)
"""


def json_log(daemon) -> list[dict]:
    out = []
    for line in daemon.log().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def test_warning_then_error_after_duration_then_ok(procs, state_dir, tmp_path, daemons):
    hold = tmp_path / "hold"
    hold.touch()
    p = procs.start([PY, "-c", FD_TOGGLE, str(hold)])
    wait_until(lambda: fd_count(p.pid) > LIMIT, 30, what="fds held")
    register(state_dir, "leaky", p.pid, open_files=LIMIT, **{"for": "1s"})
    d = daemons(state_dir, "--interval", "250ms", "--workers", "1", "--log-format", "json")

    events = wait_until(lambda: len(e := alerts(state_dir)) >= 2 and e, 30, what="warning and error")
    warning, error = events[:2]
    assert (warning["state"], error["state"]) == ("warning", "error")
    for e in (warning, error):
        assert e["agent_id"] == "leaky" and e["resource"] == "open_files" and e["threshold"] == LIMIT
        assert e["value"] > LIMIT
    assert warning["since"] == warning["timestamp"] == error["since"]
    held = parse_ts(error["timestamp"]) - parse_ts(error["since"])
    assert 1.0 <= held < 3.0, held  # the duration, then at the first sample after it
    a = agent(state_dir, "leaky")
    assert a["alerts"] == [{"resource": "open_files", "state": "error", "since": warning["since"]}]

    hold.unlink()
    wait_until(lambda: fd_count(p.pid) <= LIMIT, 30, what="fds released")
    events = wait_until(lambda: len(e := alerts(state_dir)) >= 3 and e, 30, what="ok")
    assert [e["state"] for e in events] == ["warning", "error", "ok"]
    ok = events[2]
    assert ok["value"] <= LIMIT and ok["since"] == warning["since"] and ok.get("reason") is None
    assert parse_ts(ok["timestamp"]) > parse_ts(error["timestamp"])
    wait_until(lambda: agent(state_dir, "leaky")["alerts"] == [], 10, what="status without alerts")
    assert d.stop() == 0

    lines = [r for r in json_log(d) if r.get("agent_id") == "leaky" and r.get("resource") == "open_files"]
    assert [(r["level"], r.get("state")) for r in lines] == [("WARNING", "warning"), ("ERROR", "error"), ("INFO", "ok")]
    for r in lines:
        assert r["threshold"] == LIMIT and "value" in r and "duration" in r
    assert lines[1]["duration"] >= 1.0


def test_config_type_thresholds_and_duration_zero(procs, state_dir, tmp_path, daemons):
    """``[thresholds.types.big]`` applies to agents of that type only; duration 0 is error at once."""
    big = procs.python("import time; time.sleep(600)")
    small = procs.python("import time; time.sleep(600)")
    config = tmp_path / "fleetmon.toml"
    config.write_text('[thresholds.types.big]\nmemory_threshold = "5MiB"\nthreshold_duration = 0\n')
    register(state_dir, "big", big.pid, type="big")
    register(state_dir, "small", small.pid)
    d = daemons(state_dir, "--config", str(config), "--interval", "250ms", "--workers", "1")
    wait_until(lambda: alerts(state_dir), 30, what="an alert")
    d.wait_tick(d.daemon_json()["tick"] + 2)
    assert d.stop() == 0
    events = alerts(state_dir)
    assert [(e["agent_id"], e["resource"], e["state"]) for e in events] == [("big", "memory", "error")]
    assert events[0]["threshold"] == 5 * 2**20 and events[0]["value"] > 5 * 2**20
    assert events[0]["since"] == events[0]["timestamp"]
    assert [a["alerts"] for a in status_json(state_dir)["agents"] if a["id"] == "small"] == [[]]


def test_invalid_config_refuses_to_start_naming_the_key(state_dir, tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[thresholds.types.web]\nmemory_threshold = "lots"\n')
    proc = cli("run", "--config", str(config), state_dir=state_dir, timeout=30)
    assert proc.returncode == 2
    assert "thresholds.types.web.memory_threshold" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_alerts_jsonl_is_rotated_at_its_bound_and_alerts_reads_across(procs, state_dir, tmp_path, daemons):
    """An agent flapping over its limit: alerts.jsonl moves to alerts.jsonl.1 each time it reaches
    ``alerts_max_size``, so the two stay bounded, and ``alerts`` still lists the newest events in order."""
    hold = tmp_path / "hold"
    p = procs.start([PY, "-c", FD_TOGGLE, str(hold)])
    register(state_dir, "flappy", p.pid, open_files=LIMIT, **{"for": "0s"})
    config = tmp_path / "fleetmon.toml"
    config.write_text('alerts_max_size = "1KiB"\n')
    d = daemons(state_dir, "--config", str(config), "--interval", "100ms", "--workers", "1")
    d.wait_tick(1)
    for flap in range(8):  # error, then ok: 16 events of ~200 bytes, rotated every ~5
        hold.touch()
        wait_until(lambda: (e := alerts(state_dir)) and e[-1]["state"] == "error", 30, what=f"error {flap}")
        hold.unlink()
        wait_until(lambda: (e := alerts(state_dir)) and e[-1]["state"] == "ok", 30, what=f"ok {flap}")
    assert d.stop() == 0
    previous = state_dir / "alerts.jsonl.1"
    assert previous.exists()
    for f in (previous, state_dir / "alerts.jsonl"):
        assert f.stat().st_size < 1024 + 512, f  # the bound, plus at most the batch that crossed it
    events = alerts(state_dir)
    assert 5 <= len(events) < 16  # the oldest were dropped with the first generations
    assert [e["state"] for e in events[-2:]] == ["error", "ok"]
    stamps = [parse_ts(e["timestamp"]) for e in events]
    assert stamps == sorted(stamps)
    states = [e["state"] for e in events]
    assert all(a != b for a, b in pairwise(states))  # alternating: none lost or repeated at a seam
    assert "moved to alerts.jsonl.1" in d.log()


def test_an_agent_removed_while_no_daemon_ran_has_its_alerts_closed_at_the_next_start(procs, state_dir, daemons):
    """Its episode stayed open for ever (thresholds.json, status), and was resumed, old ``since``
    and all, when the agent was registered again. A broken registry file is not a removal."""
    holders = {}
    for agent_id in ("gone", "broken"):
        holders[agent_id] = procs.start([PY, "-c", f"import os, time\nfds = [os.open('/dev/null', 0) for _ in range({EXTRA})]\ntime.sleep(600)"])
        wait_until(lambda p=holders[agent_id]: fd_count(p.pid) > LIMIT, 30, what="fds held")
        register(state_dir, agent_id, holders[agent_id].pid, open_files=LIMIT, **{"for": "0s"})
    d = daemons(state_dir, "--interval", "250ms", "--workers", "1")
    wait_until(lambda: len(alerts(state_dir, "--state", "error")) == 2, 30, what="both in error")
    assert d.stop() == 0
    assert cli("agents", "rm", "gone", state_dir=state_dir, timeout=30).returncode == 0
    (state_dir / "registry" / "broken.json").write_text("{not json")
    d = daemons(state_dir, "--interval", "250ms", "--workers", "1")
    closed = wait_until(lambda: [e for e in alerts(state_dir) if e["state"] == "ok"], 30, what="the removal's ok")
    assert [(e["agent_id"], e["reason"], e["value"], e["threshold"]) for e in closed] == [("gone", "removed", None, LIMIT)]
    d.wait_tick(d.daemon_json()["tick"] + 2)
    assert len(alerts(state_dir)) == 3  # broken: still in error, nothing closed or reopened
    saved = json.loads((state_dir / "thresholds.json").read_text())["open"]
    assert list(saved) == ["broken"] and saved["broken"]["open_files"]["state"] == "error"
    register(state_dir, "gone", holders["gone"].pid, open_files=LIMIT, **{"for": "0s"})
    reopened = wait_until(lambda: [e for e in alerts(state_dir) if e["agent_id"] == "gone"][2:], 30, what="a new episode")
    assert reopened[0]["state"] == "error" and parse_ts(reopened[0]["since"]) > parse_ts(closed[0]["timestamp"]) - 0.001
