"""Bad input loses nothing: garbage registry files while running, corrupted metadata and history."""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.faults._util import (
    agent_status,
    check_state_files,
    daemon_json,
    log_lines,
    register_direct,
    sleepers,
    timestamps,
    wait_own_tick,
)
from tests.helpers import cli_json, register, wait_until

pytestmark = pytest.mark.slow


def test_garbage_registry_files_are_named_once_and_reread_when_they_change(daemons, procs, state_dir, tmp_path):
    pids = sleepers(procs, 4)
    for i, pid in enumerate(pids[:3]):
        register_direct(state_dir, f"good{i}", pid)
    d = daemons(state_dir, "--workers", "2", "--interval", "250ms")
    d.wait_tick(3, timeout=20)
    registry = state_dir / "registry"
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"id": "link", "pid": pids[3]}))
    bad = {
        "badjson.json": b"{not json",
        "-dash.json": json.dumps({"id": "-dash", "pid": pids[3]}).encode(),  # invalid id
        "mismatch.json": json.dumps({"id": "other", "pid": pids[3]}).encode(),
        "zero.json": json.dumps({"id": "zero", "pid": 0}).encode(),
        "negative.json": json.dumps({"id": "negative", "pid": -5}).encode(),
        "both.json": json.dumps({"id": "both", "pid": pids[3], "pidfile": "/x"}).encode(),
        "unknown.json": json.dumps({"id": "unknown", "pid": pids[3], "rm -rf": 1}).encode(),
        "huge.json": b"[" + b"9," * (3 * 1024 * 1024) + b"9]",
        "latin1.json": b'{"id": "latin1", "pid": 1, "type": "caf\xe9"}',  # not UTF-8: killed the supervisor once
    }
    for name, data in bad.items():
        (registry / name).write_bytes(data)
    (registry / "dir.json").mkdir()  # unreadable as a file (root ignores chmod 000)
    os.mkfifo(registry / "fifo.json")  # opening it for reading would block a naive reader forever
    os.symlink(target, registry / "link.json")
    names = [*bad, "dir.json", "fifo.json", "link.json"]
    t0 = time.time()
    # Several ticks (and a SIGHUP rescan) later, each bad file has been named exactly once.
    time.sleep(2.0)
    d.proc.send_signal(__import__("signal").SIGHUP)
    d.wait_tick(daemon_json(state_dir)["tick"] + 6, timeout=20)
    log = d.log()
    counts = {n: len(log_lines(log, f"registry/{n}")) for n in names}
    print(f"\n[fault] garbage registry: {len(names)} bad files, log mentions per file: {counts}")
    assert d.proc.poll() is None
    assert all(c == 1 for c in counts.values()), counts
    for i in range(3):
        assert max(timestamps(state_dir, f"good{i}")) > t0 + 1.0, "a valid agent stopped being sampled"
    statuses = agent_status(state_dir)
    assert set(statuses) == {"good0", "good1", "good2"}
    assert not (state_dir / "history" / "link.ring").exists()
    # A fixed file is read again and the agent joins (replaced atomically, as tools should; a file
    # edited in place is caught by the scanner's periodic stat pass, within FULL_RESCAN seconds).
    _replace(registry / "zero.json", json.dumps({"id": "zero", "pid": pids[3]}).encode())
    wait_until(lambda: timestamps(state_dir, "zero"), 5, what="the fixed registry file to be picked up")
    # A file that changes but stays bad is named once more.
    _replace(registry / "badjson.json", b"{still not json, longer now")
    d.wait_tick(daemon_json(state_dir)["tick"] + 4, timeout=20)
    assert len(log_lines(d.log(), "registry/badjson.json")) == 2
    assert len(log_lines(d.log(), "registry/zero.json")) == 1


def _replace(path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_corrupt_metadata_and_history_are_moved_aside_and_rebuilt(daemons, procs, state_dir, tmp_path):
    pids = sleepers(procs, 3)
    for i, pid in enumerate(pids):
        register(state_dir, f"c{i}", pid, memory="1", **{"for": "1h"})
    d = daemons(state_dir, "--workers", "1", "--interval", "250ms")
    d.wait_tick(4, timeout=20)
    wait_until(lambda: (state_dir / "thresholds.json").exists(), 10, what="thresholds.json")
    assert d.stop() == 0
    since = {a["id"]: a["alerts"] for a in cli_json("status", state_dir=state_dir)["agents"]}

    garbage = b"\x00\xffnot json at all{{{"
    (state_dir / "agents" / "c0.json").write_bytes(garbage)
    (state_dir / "agents" / "c1.json").write_text(json.dumps({"id": "wrong-name", "type": "x"}))
    (state_dir / "status.json").write_bytes(garbage)
    (state_dir / "thresholds.json").write_bytes(b'{"c0": {"memory": {"state": 7}}}')
    ring = state_dir / "history" / "c2.ring"
    with open(ring, "r+b") as f:
        f.write(b"GARBAGE!" * 8)  # the header
    d2 = daemons(state_dir, "--workers", "1", "--interval", "250ms")
    wait_own_tick(d2, 4, timeout=20)
    time.sleep(0.5)
    log = d2.log()
    aside = sorted(p.name for p in state_dir.rglob("*.corrupt-*"))
    print(f"\n[fault] corrupted files moved aside: {aside}")
    for name in ("c0.json", "c1.json", "status.json", "thresholds.json", "c2.ring"):
        assert any(a.startswith(name + ".corrupt-") for a in aside), name
        assert len([line for line in log_lines(log, name) if "ERROR" in line or '"level":"ERROR"' in line]) == 1, name
    assert not check_state_files(state_dir)
    # Rebuilt: every file exists again and reads; the alert state survived through the other copy.
    for name in ("agents/c0.json", "agents/c1.json", "status.json", "thresholds.json", "history/c2.ring"):
        assert (state_dir / name).is_file(), name
    assert json.loads((state_dir / "agents" / "c1.json").read_text())["id"] == "c1"
    assert timestamps(state_dir, "c2")
    assert set(agent_status(state_dir).values()) == {"running"}
    st = {a["id"]: a["alerts"] for a in cli_json("status", state_dir=state_dir)["agents"]}
    # c2's own metadata survived: its episode keeps its since. c0 and c1 lost every copy of theirs
    # (metadata, status.json and thresholds.json all corrupt): a new episode opens.
    assert st["c2"] == since["c2"]
    for agent_id in ("c0", "c1"):
        assert [a["state"] for a in st[agent_id]] == ["warning"]
