"""Security: ids cannot escape the state dir, planted symlinks are not followed (and their targets
are never written), modes are 0700/0600 whatever the umask, and no registry value reaches a shell."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from tests.faults._util import (
    REPO_ROOT,
    agent_status,
    check_state_files,
    modes,
    register_direct,
    timestamps,
    write_config,
)
from tests.helpers import cli, wait_until

pytestmark = pytest.mark.slow

ESCAPES = ["../evil", "..", ".hidden", "a/b", "/etc/passwd", "a\\b", "a b", "", "x" * 129, "é"]


@pytest.mark.parametrize("agent_id", ESCAPES)
def test_ids_that_could_escape_are_refused(tmp_path, agent_id):
    state_dir = tmp_path / "state"
    for args in (["agents", "add", agent_id, "--pid", "1"], ["history", agent_id], ["agents", "rm", agent_id]):
        r = cli(*args, state_dir=state_dir)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.count("\n") == 1
    assert not (tmp_path / "evil.json").exists() and not (tmp_path / "evil").exists()


def test_symlinks_are_not_followed_and_targets_are_not_written(daemons, procs, state_dir, tmp_path):
    pids = [procs.sleeper(900).pid for _ in range(3)]
    for i, pid in enumerate(pids):
        register_direct(state_dir, f"s{i}", pid)
    for sub in ("agents", "history"):
        (state_dir / sub).mkdir(mode=0o700)
    secret = b"precious contents that must not change\n"
    targets = {name: tmp_path / f"target-{name}" for name in ("meta", "ring", "registry", "status")}
    for t in targets.values():
        t.write_bytes(secret)
    os.symlink(targets["meta"], state_dir / "agents" / "s0.json")
    os.symlink(targets["ring"], state_dir / "history" / "s1.ring")
    os.symlink(targets["status"], state_dir / "status.json")
    (tmp_path / "entry.json").write_text(json.dumps({"id": "s9", "pid": pids[0]}))
    os.symlink(tmp_path / "entry.json", state_dir / "registry" / "s9.json")
    os.symlink(targets["registry"], state_dir / "registry" / "s2.json.tmp")  # not a .json: ignored
    cfg = write_config(tmp_path / "fleetmon.toml", workers=1, interval="250ms")
    d = daemons(state_dir, "--config", str(cfg))
    d.wait_tick(6, timeout=20)
    wait_until(lambda: timestamps(state_dir, "s1"), 10, what="s1's history to be started afresh")
    for name, t in targets.items():
        assert t.read_bytes() == secret, f"the target of the {name} symlink was written"
    for path in (state_dir / "agents" / "s0.json", state_dir / "history" / "s1.ring", state_dir / "status.json"):
        assert not path.is_symlink() and path.is_file(), path
    assert (state_dir / "registry" / "s9.json").is_symlink()
    assert set(agent_status(state_dir)) == {"s0", "s1", "s2"}
    assert "s9" not in agent_status(state_dir)
    assert not check_state_files(state_dir)
    assert d.stop() == 0


def test_modes_are_private_whatever_the_umask(daemons, procs, state_dir, tmp_path):
    old = os.umask(0)
    try:
        pid = procs.sleeper(900).pid
        r = cli("agents", "add", "m0", "--pid", str(pid), "--memory", "1", state_dir=state_dir)
        assert r.returncode == 0, r.stderr
        cfg = write_config(tmp_path / "fleetmon.toml", workers=1, interval="250ms")
        d = daemons(state_dir, "--config", str(cfg))
        d.wait_tick(4, timeout=20)
        wait_until(lambda: (state_dir / "alerts.jsonl").exists() and (state_dir / "thresholds.json").exists(), 10,
                   what="alerts.jsonl and thresholds.json")
        found = modes(state_dir)
        sock = state_dir / "run" / "writer.sock"
        assert stat.S_ISSOCK(os.lstat(sock).st_mode)
        assert d.stop() == 0
    finally:
        os.umask(old)
    wrong = {}
    for path, mode in found.items():
        p = Path(path)
        want = 0o700 if p.is_dir() else 0o600
        if mode & 0o077 or (p.is_dir() and mode != want):
            wrong[path] = oct(mode)
    print(f"\n[fault] umask 000: {len(found)} paths under the state dir, group/other bits on {len(wrong)}")
    assert not wrong, wrong
    assert len(found) >= 8


def test_no_registry_value_reaches_a_shell(daemons, procs, state_dir, tmp_path):
    marker = tmp_path / "pwned"
    evil = f"/$(touch {marker}); `touch {marker}`; touch {marker} #"  # (absolute: a relative pidfile is an invalid entry)
    pidfile_agent = {"id": "p0", "pidfile": evil, "type": "t"}
    (state_dir / "registry").mkdir(parents=True, mode=0o700)
    (state_dir / "registry" / "p0.json").write_text(json.dumps(pidfile_agent))
    register_direct(state_dir, "p1", procs.sleeper(900).pid, type=f"x;touch {marker}")
    fifo = tmp_path / "agent.pid"
    os.mkfifo(fifo)  # a pidfile that would block a naive reader forever
    (state_dir / "registry" / "p2.json").write_text(json.dumps({"id": "p2", "pidfile": str(fifo)}))
    cfg = write_config(tmp_path / "fleetmon.toml", workers=1, interval="250ms")
    d = daemons(state_dir, "--config", str(cfg))
    d.wait_tick(4, timeout=20)
    st = agent_status(state_dir)
    assert st == {"p0": "not_running", "p1": "running", "p2": "not_running"}
    assert not marker.exists()
    assert "made no progress" not in d.log()
    assert d.stop() == 0
    # And nothing in fleetmon can start a shell.
    shelly = re.compile(r"shell\s*=\s*True|os\.system\(|os\.popen\(|subprocess\.getoutput|commands\.getoutput")
    offenders = [
        str(p.relative_to(REPO_ROOT))
        for p in (REPO_ROOT / "fleetmon").rglob("*.py")
        if shelly.search(p.read_text())
    ]
    assert not offenders, offenders
