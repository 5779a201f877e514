"""kill -9 of the supervisor: its children notice and exit, and a restart recovers every point of
history and the alert state (a pending warning keeps its ``since``)."""

from __future__ import annotations

import json

import pytest

from tests.faults._util import check_state_files, daemon_json, gone_within, timestamps, write_config
from tests.helpers import cli_json, register, wait_until

pytestmark = pytest.mark.slow


def test_supervisor_killed_takes_children_down_and_restart_recovers_state(daemons, procs, state_dir, tmp_path):
    agents = {f"s{i}": procs.sleeper(900).pid for i in range(6)}
    for agent_id, pid in agents.items():
        # memory over 1 byte for an hour: a warning that stays pending across the restart
        register(state_dir, agent_id, pid, memory="1", **({"for": "1h"} if agent_id == "s0" else {}))
    cfg = write_config(tmp_path / "fleetmon.toml", workers=2, interval="250ms", stall_timeout="3s")
    d = daemons(state_dir, "--config", str(cfg))
    d.wait_tick(6, timeout=30)
    info = daemon_json(state_dir)
    children = [info["writer_pid"], *(w["pid"] for w in info["workers"])]
    warning = wait_until(
        lambda: [a for a in cli_json("status", state_dir=state_dir)["agents"] if a["id"] == "s0" and a["alerts"]],
        10, what="s0's pending warning",
    )[0]["alerts"][0]
    assert warning["state"] == "warning"

    d.kill()
    gone = gone_within(children, 5.0)
    before = {a: timestamps(state_dir, a) for a in agents}
    alert_events = cli_json("alerts", "--since", "1h", state_dir=state_dir)["events"]
    problems = check_state_files(state_dir)
    print(f"\n[fault] kill -9 supervisor: writer and {len(children) - 1} workers gone within {gone:.2f}s")
    assert not problems, problems
    assert json.loads((state_dir / "daemon.json").read_text())["supervisor_pid"] == d.pid

    d2 = daemons(state_dir, "--config", str(cfg))
    info2 = wait_until(lambda: (j := daemon_json(state_dir)) and j["supervisor_pid"] == d2.pid and j, 20,
                       what="the new daemon to record itself")
    d2.wait_tick(info2["tick"] + 4, timeout=20)
    for agent_id, old in before.items():
        now = timestamps(state_dir, agent_id)
        assert set(old) <= set(now), f"{agent_id}: points lost across the restart"
        assert len(now) > len(old), f"{agent_id}: history did not continue"
    st = cli_json("status", state_dir=state_dir)
    s0 = next(a for a in st["agents"] if a["id"] == "s0")
    assert s0["alerts"] == [warning], "the pending warning must keep its since"
    events = cli_json("alerts", "--since", "1h", state_dir=state_dir)["events"]
    s0_events = [e for e in events if e["agent_id"] == "s0"]
    assert len(s0_events) == 1 and s0_events[0]["state"] == "warning", s0_events  # no second warning
    assert len(events) == len(alert_events)  # the others went straight to error before; nothing new
    assert d2.stop() == 0


def test_a_writer_answering_without_the_lock_refuses_the_start(state_dir, procs):
    """A fleetmon from before run/lock (an upgrade started next to the old daemon) serves the state
    dir without holding the lock: the new one used to take its socket and lose samples silently."""
    import subprocess
    import sys

    from tests.helpers import CLI

    (state_dir / "run").mkdir(parents=True)
    sock = state_dir / "run" / "writer.sock"
    old = procs.start([sys.executable, "-c", (
        "import socket, sys, time\n"
        "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(8)\n"
        "print('listening', flush=True)\n"
        "while True: s.accept()[0].close()\n"
    ), str(sock)], stdout=subprocess.PIPE)
    assert old.stdout.readline().strip() == b"listening"
    second = subprocess.run(
        [*CLI, "run", "--state-dir", str(state_dir), "--interval", "250ms"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    assert second.returncode == 1, second.stderr
    assert "is in use by another fleetmon: a writer answers on" in second.stderr
    assert sock.exists() and old.poll() is None  # its socket left to it
    assert not (state_dir / "daemon.json").exists()


def test_a_second_daemon_on_the_same_state_dir_is_refused_and_the_first_keeps_working(daemons, procs, state_dir, tmp_path):
    """Two daemons on one state dir would be two writers, and the second's socket took the first's
    restarted workers away from its writer (nothing saved, no error). The second one is refused
    (exit 1, naming the first's pid); the first keeps persisting, also after a worker restart."""
    import os
    import signal
    import subprocess

    from tests.helpers import CLI, children_of

    for i in range(3):
        register(state_dir, f"a{i}", procs.sleeper(900).pid)
    cfg = write_config(tmp_path / "fleetmon.toml", workers=1, interval="250ms")
    d = daemons(state_dir, "--config", str(cfg))
    d.wait_tick(3, timeout=30)
    second = subprocess.run(
        [*CLI, "run", "--state-dir", str(state_dir), "--config", str(cfg)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    print(f"\n[fault] second daemon: exit {second.returncode}: {second.stderr.strip().splitlines()[-1]}")
    assert second.returncode == 1, second.stderr
    assert f"is in use by another fleetmon (pid {d.pid}, or its writer)" in second.stderr
    assert "waiting up to" in second.stderr  # it said so while it waited
    info = daemon_json(state_dir)
    worker = info["workers"][0]["pid"]
    lock_file = str(state_dir / "run" / "lock")
    holders = {pid for pid in (d.pid, info["writer_pid"], worker) if lock_file in _open_files(pid)}
    assert holders == {d.pid, info["writer_pid"]}  # a worker (stuck in a read, maybe) must not keep it
    before = set(children_of(d.pid))
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: set(children_of(d.pid)) - before, 10, what="the worker to be restarted")
    tick = daemon_json(state_dir)["persisted_tick"]
    d.wait_tick(tick + 4, timeout=20)  # the restarted worker reaches the first daemon's writer
    assert d.stop() == 0
    d2 = daemons(state_dir, "--config", str(cfg))  # let go at a clean stop: the next one starts at once
    info = wait_until(lambda: (j := daemon_json(state_dir)) and j["supervisor_pid"] == d2.pid and j, 20,
                      what="the next daemon to record itself")
    d2.wait_tick(info["tick"] + 2, timeout=20)
    assert "in use by another fleetmon" not in d2.log()
    assert d2.stop() == 0
    assert not (state_dir / "run" / "writer.sock").exists()  # a clean stop leaves no socket behind


def test_a_bug_in_the_supervisor_stops_the_daemon_instead_of_hanging_it(procs, state_dir, tmp_path):
    """An exception escaping the supervisor's loop used to leave a hung daemon: multiprocessing
    waited at exit for the children, which waited for their parent. Now the children are stopped,
    the error is logged at CRITICAL with its traceback, and the process exits non-zero."""
    import os
    import signal
    import subprocess
    import sys

    from tests.faults._util import REPO_ROOT
    from tests.helpers import children_of, pid_alive

    register(state_dir, "a0", procs.sleeper(900).pid)
    script = (
        "import sys\n"
        "from fleetmon.supervisor import arbiter\n"
        "def boom(self):\n"
        "    if self.tick_no >= 3:\n"
        "        raise RuntimeError('injected supervisor bug')\n"
        "    return tick(self)\n"
        "tick = arbiter.Arbiter.tick\n"
        "arbiter.Arbiter.tick = boom\n"
        "from fleetmon.supervisor.cli import main\n"
        f"sys.exit(main(['run', '--state-dir', {str(state_dir)!r}, '--interval', '250ms', '--workers', '1']))\n"
    )
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=REPO_ROOT)
    kids: list[int] = []
    try:
        kids = wait_until(lambda: len(children_of(proc.pid)) >= 2 and children_of(proc.pid), 20, what="the children")
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            for k in kids:  # (the test failed: its children are ended by pid, not left running)
                if pid_alive(k):
                    os.kill(k, signal.SIGKILL)
    text = log.read_text()
    assert code != 0, text
    assert "supervisor failed (injected supervisor bug): stopping every child" in text
    assert "RuntimeError" in text  # the traceback is in the log
    wait_until(lambda: not any(pid_alive(k) for k in kids), 10, what="the children to be gone")
    assert not (state_dir / "run" / "lock").exists() or _lock_is_free(state_dir)


def _lock_is_free(state_dir) -> bool:
    import os

    from fleetmon.supervisor import lock

    fd = lock.acquire(state_dir / "run", wait=0)
    os.close(fd)
    return True


def _open_files(pid: int) -> set[str]:
    import os

    fds = f"/proc/{pid}/fd"
    out = set()
    for name in os.listdir(fds):
        try:
            out.add(os.readlink(f"{fds}/{name}"))
        except OSError:
            pass
    return out
