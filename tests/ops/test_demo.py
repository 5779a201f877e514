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
    # Copied from a log, the commands it printed are whole lines (not cut at 80 columns).
    assert any(line.strip().endswith("--every 5s") and "history cpu-hog --state-dir" in line for line in p.stdout.splitlines()), p.stdout


def test_demo_refuses_too_many_agents_and_a_state_dir_in_use(daemons, state_dir, tmp_path):
    """--agents 1000000 forked Python processes until the host's limit; a state dir a daemon runs on
    got the demo's agents into its registry, and the demo's own daemon stopped at once."""
    p = cli("demo", "--agents", "1000000", "--duration", "5s", state_dir=tmp_path / "big")
    assert p.returncode == 2 and "--agents must be from 4" in p.stderr and not (tmp_path / "big").exists()
    d = daemons(state_dir, "--interval", "1s")
    d.wait_tick(1)
    p = cli("demo", "--agents", "4", "--duration", "5s", state_dir=state_dir)
    assert p.returncode == 2 and "in use by a running daemon" in p.stderr, p.stderr
    assert not list((state_dir / "registry").glob("*.json"))  # nothing of the demo's registered
    assert d.stop() == 0
