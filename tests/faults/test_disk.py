"""A full disk: writes fail with an ERROR, sampling goes on, no file is left corrupt, and persisting
resumes by itself once space returns. The state dir is a 2 MiB tmpfs filled up with a junk file."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.faults._util import (
    check_state_files,
    daemon_json,
    log_lines,
    register_direct,
    sleepers,
    timestamps,
    write_config,
)
from tests.helpers import wait_until

pytestmark = pytest.mark.slow


def _fill(path: Path) -> None:
    """Write zeros to ``path`` until the filesystem is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        chunk = b"\0" * 4096
        while True:
            try:
                os.write(fd, chunk)
            except OSError:
                break
    finally:
        os.close(fd)


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mnt)],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def test_full_disk_fails_writes_keeps_files_valid_and_recovers(tmpfs, daemons, procs, tmp_path):
    # tmpfs first: it is unmounted last, after the daemon has stopped
    state_dir = tmpfs / "state"
    pids = sleepers(procs, 13)
    for i, pid in enumerate(pids[:12]):
        register_direct(state_dir, f"d{i:02d}", pid)
    cfg = write_config(tmp_path / "fleetmon.toml", workers=2, interval="250ms", history_size=200, stall_timeout="3s")
    from tests.http.test_daemon_http import fetch, free_port

    port = free_port()
    d = daemons(state_dir, "--config", str(cfg), "--http", f"127.0.0.1:{port}", log=tmp_path / "daemon.log")  # the log is off the tmpfs
    d.wait_tick(4, timeout=20)
    healthz = f"http://127.0.0.1:{port}/healthz"
    wait_until(lambda: fetch(healthz)[0] == 200, 10, what="/healthz 200 before the disk fills")

    junk = tmpfs / "junk"
    _fill(junk)
    # Make room for exactly one registry file, register a new agent, and fill the rest: its history
    # ring (13 KiB) cannot be created.
    reserve = tmpfs / "reserve"
    os.truncate(junk, max(0, os.path.getsize(junk) - 8192))
    register_direct(state_dir, "late", pids[12])
    _fill(reserve)
    t_full = time.time()
    wait_until(lambda: log_lines(d.log(), "ERROR") and "No space left" in d.log(), 10, what="an ENOSPC error logged")
    time.sleep(2.0)
    assert d.proc.poll() is None, "the daemon died on a full disk"
    problems = check_state_files(state_dir)
    assert not problems, problems
    assert json.loads((state_dir / "status.json").read_bytes()), "the old status.json must stay whole"
    # Sampling went on into the preallocated rings.
    assert all(max(timestamps(state_dir, f"d{i:02d}")) > t_full + 1.0 for i in range(12))
    assert not (state_dir / "history" / "late.ring").exists()
    assert not [p for p in state_dir.rglob("*.tmp")], "temp files left behind on the full disk"
    # Ticks still reach the writer (the watchdog stays fed), but /healthz says what is wrong.
    code, body = fetch(healthz)
    assert code == 503 and json.loads(body)["status"] == "write_failing", body
    errors = log_lines(d.log(), "ERROR")

    junk.unlink()
    reserve.unlink()
    t_free = time.monotonic()
    info = daemon_json(state_dir)
    wait_until(lambda: timestamps(state_dir, "late"), 10, what="the new agent's ring to be created")
    d.wait_tick(info["tick"] + 4, timeout=15)
    resumed = time.monotonic() - t_free
    status = json.loads((state_dir / "status.json").read_text())
    late = next(a for a in status["agents"] if a["id"] == "late")
    assert late["last_sample"] is not None
    assert not check_state_files(state_dir)
    final = daemon_json(state_dir)
    print(f"\n[fault] full disk: {len(errors)} ERROR lines while full (write errors counted: "
          f"{final.get('write_errors')}), no crash, no corrupt file; persisting resumed {resumed:.2f}s after space returned")
    assert final["write_errors"] > 0
    # (status.json, at most once a second at this interval, must be written again first)
    wait_until(lambda: "works again" in d.log(), 5, what="'writing to the state dir works again' logged")
    wait_until(lambda: fetch(healthz)[0] == 200, 10, what="/healthz 200 once writing works again")
    assert d.stop() == 0
