"""``fleetmon demo --duration``: runs unattended, exits 0, and leaves agents with alerts behind."""

from __future__ import annotations

import os
import stat

import pytest

from tests.helpers import cli, cli_json, pid_alive


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_demo_runs_unattended_and_leaves_alerts(state_dir):
    p = cli("demo", "--duration", "15s", "--agents", "4", state_dir=state_dir, timeout=75)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "daemon exited 0" in p.stdout
    log = state_dir / "demo.log"
    assert b"fleetmon" in log.read_bytes() and stat.S_IMODE(os.stat(log).st_mode) == 0o600  # as every state file
    events = cli_json("alerts", "--since", "1h", state_dir=state_dir)["events"]
    assert events, p.stdout
    assert {"cpu-hog"} <= {e["agent_id"] for e in events}
    assert any(e["state"] == "error" for e in events)
    status = cli_json("status", state_dir=state_dir)
    assert {a["id"] for a in status["agents"]} == {"cpu-hog", "mem-grower", "fd-leaker", "idle-1"}
    assert status["daemon"]["running"] is False  # stopped cleanly
    # Everything the demo started is gone: its daemon and its agents.
    assert not pid_alive(status["daemon"]["supervisor_pid"])
    assert not any(pid_alive(a["pid"]) for a in status["agents"] if a["pid"])
