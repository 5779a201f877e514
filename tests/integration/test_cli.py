"""The real CLI in a subprocess: bad input, the state dir's modes, history/status/alerts shapes."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import stat
import time

import pytest

from tests.helpers import cli, cli_json, pid_alive, register, wait_until
from tests.integration.common import exits_2_and_writes_nothing, history, parse_ts, snapshot, wait_points

BAD_IDS = ["", "a/b", "../etc", "x" * 129, "a b", "é", "a\n", ".hidden", "_x", "a:b"]
BAD_PIDS = ["0", "-1", "abc", "1.5", "", "true", "99999999999999999999", "0x10", "1_0", "١٢"]
FIELDS = ["timestamp", "cpu", "memory_rss", "memory_vms", "disk_read_bytes", "disk_write_bytes", "open_files", "num_threads"]


def bad_add_commands(tmp_path):
    for agent_id in BAD_IDS:
        yield ["agents", "add", agent_id, "--pid", str(os.getpid())]
    for pid in BAD_PIDS:
        yield ["agents", "add", "good", "--pid", pid]
    yield ["agents", "add", "good", "--pid", "5", "--pidfile", str(tmp_path / "x.pid")]
    yield ["agents", "add", "good"]
    yield ["agents", "add", "good", "--pid", "5", "--cpu", "-5"]
    for limit in ("inf", "nan", "1e999"):  # a limit nothing crosses: off, without a word
        yield ["agents", "add", "good", "--pid", "5", "--cpu", limit]
    # too large for the wire and the disk (they crashed the daemon's greeting to the writer)
    yield ["agents", "add", "good", "--pid", "5", "--open-files", "9" * 26]
    yield ["agents", "add", "good", "--pid", "5", "--memory", "9" * 26 + "TiB"]
    yield ["agents", "add", "good", "--pid", "5", "--memory", "1" + "0" * 400]
    yield ["agents", "add", "good", "--pid", "5", "--memory", "lots"]
    yield ["agents", "add", "good", "--pid", "5", "--for", "forever"]
    yield ["agents", "add", "good", "--pid", "5", "--open-files", "-1"]


def test_bad_ids_and_pids_exit_2_and_write_nothing(state_dir, tmp_path):
    register(state_dir, "good", os.getpid())
    before = snapshot(state_dir)
    assert "registry/good.json" in before
    for args in bad_add_commands(tmp_path):
        line = exits_2_and_writes_nothing(args, state_dir)
        assert "error" in line
        assert snapshot(state_dir) == before, f"{args} changed the state dir"
    (entry,) = cli_json("agents", "ls", state_dir=state_dir)["agents"]
    assert entry["id"] == "good" and entry["pid"] == os.getpid() and entry.get("type", "default") == "default"


def test_bad_input_on_a_fresh_state_dir_creates_nothing(state_dir, tmp_path):
    for args in bad_add_commands(tmp_path):
        exits_2_and_writes_nothing(args, state_dir)
        assert not state_dir.exists(), f"{args} created {snapshot(state_dir)}"


def test_bad_id_messages_name_the_problem(state_dir):
    line = exits_2_and_writes_nothing(["agents", "add", "a/b", "--pid", "1"], state_dir)
    assert "invalid agent id" in line
    line = exits_2_and_writes_nothing(["agents", "add", "ok", "--pid", "0"], state_dir)
    assert "pid" in line
    line = exits_2_and_writes_nothing(["history", "a/b"], state_dir)
    assert "invalid agent id" in line
    line = exits_2_and_writes_nothing(["agents", "rm", "nobody"], state_dir)
    assert "nobody" in line


def test_state_dir_is_private_whatever_the_umask(procs, state_dir, daemons):
    p = procs.sleeper()
    old = os.umask(0)
    try:
        register(state_dir, "a", p.pid, open_files=1, **{"for": "0"})
        d = daemons(state_dir, "--interval", "250ms", "--workers", "1")
        wait_points(state_dir, "a", 2)
        wait_until(lambda: (state_dir / "alerts.jsonl").exists(), 10, what="alerts.jsonl")
        assert d.stop() == 0
    finally:
        os.umask(old)
    seen = {"dirs": 0, "files": 0}
    for root, _dirs, files in os.walk(state_dir):
        assert stat.S_IMODE(os.lstat(root).st_mode) == 0o700, root
        seen["dirs"] += 1
        for name in files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            assert not stat.S_ISLNK(st.st_mode)
            assert stat.S_IMODE(st.st_mode) == 0o600, f"{path}: {oct(st.st_mode)}"
            seen["files"] += 1
    assert seen["dirs"] >= 4 and seen["files"] >= 6  # registry, agents, history, status, daemon, alerts ...
    for name in ("registry/a.json", "agents/a.json", "history/a.ring", "status.json", "daemon.json", "alerts.jsonl"):
        assert (state_dir / name).is_file(), name


def test_history_unknown_agent_exits_2_registered_without_samples_is_empty(state_dir):
    line = exits_2_and_writes_nothing(["history", "nobody"], state_dir)
    assert "unknown agent" in line and "nobody" in line
    exits_2_and_writes_nothing(["history", "nobody", "--csv"], state_dir)
    register(state_dir, "quiet", os.getpid())
    assert cli_json("history", "quiet", state_dir=state_dir) == {"agent_id": "quiet", "points": []}
    proc = cli("history", "quiet", "--csv", state_dir=state_dir)
    assert proc.returncode == 0 and proc.stdout == ",".join(FIELDS) + "\n"
    proc = cli("history", "quiet", state_dir=state_dir)
    assert proc.returncode == 0
    # removed before it was ever sampled: its metadata file is left, but it has no history
    (state_dir / "agents" / "quiet.json").write_text('{"id": "quiet"}')
    cli("agents", "rm", "quiet", state_dir=state_dir, check=True)
    line = exits_2_and_writes_nothing(["history", "quiet"], state_dir)
    assert "unknown agent" in line and "quiet" in line


def test_history_csv_header_and_empty_cells_for_null(procs, state_dir, daemons):
    p = procs.sleeper()
    register(state_dir, "c", p.pid)
    d = daemons(state_dir, "--interval", "250ms", "--workers", "1")
    wait_points(state_dir, "c", 3)
    assert d.stop() == 0
    points = history(state_dir, "c")
    proc = cli("history", "c", "--csv", state_dir=state_dir, check=True)
    lines = proc.stdout.splitlines()
    assert lines[0] == ",".join(FIELDS)
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert len(rows) == len(points) >= 3
    assert points[0]["cpu"] is None and rows[0]["cpu"] == ""  # null -> empty cell, never 0
    for row, point in zip(rows, points, strict=True):
        assert row["timestamp"] == point["timestamp"]
        for f in FIELDS[1:]:
            if point[f] is None:
                assert row[f] == ""
            else:
                assert float(row[f]) == pytest.approx(point[f])
    # unregistering keeps the history queryable
    assert cli("agents", "rm", "c", state_dir=state_dir).returncode == 0
    assert history(state_dir, "c") == points
    assert cli_json("status", state_dir=state_dir)["agents"] == []


def test_history_every_buckets_are_the_means_of_the_raw_points(procs, state_dir, daemons):
    # varying cpu and a growing RSS, so that a wrong mean cannot pass by accident
    p = procs.python(
        "import time\nchunks = []\nwhile True:\n"
        "    chunks.append(bytearray(b'x' * (1 << 20)))\n"
        "    end = time.time() + 0.05 * (len(chunks) % 3)\n"
        "    while time.time() < end: pass\n"
        "    time.sleep(0.1)\n"
    )
    register(state_dir, "v", p.pid)
    d = daemons(state_dir, "--interval", "250ms", "--workers", "1")
    wait_points(state_dir, "v", 14)
    now = time.time()
    recent = history(state_dir, "v", "--since", "1s")
    assert recent and all(parse_ts(pt["timestamp"]) >= now - 1.0 for pt in recent)
    assert d.stop() == 0
    raw = history(state_dir, "v")
    buckets = history(state_dir, "v", "--every", "1s")
    expected: dict[float, list[dict]] = {}
    for pt in raw:
        expected.setdefault(math.floor(parse_ts(pt["timestamp"])), []).append(pt)
    assert [parse_ts(b["timestamp"]) for b in buckets] == sorted(expected)
    assert len(buckets) >= 3
    assert len({b["memory_rss"] for b in buckets}) > 1
    for b in buckets:
        group = expected[parse_ts(b["timestamp"])]
        for f in FIELDS[1:]:
            values = [pt[f] for pt in group if pt[f] is not None]
            if values:
                assert b[f] == pytest.approx(sum(values) / len(values), rel=1e-9), (f, b, group)
            else:
                assert b[f] is None
    two = history(state_dir, "v", "--every", "2s")
    assert all(parse_ts(b["timestamp"]) % 2 == 0 for b in two)  # aligned to the epoch
    assert sum(1 for _ in two) == len({math.floor(parse_ts(pt["timestamp"]) / 2) for pt in raw})


def test_status_json_daemon_object(procs, state_dir, daemons):
    p = procs.sleeper()
    register(state_dir, "s1", p.pid)
    for i in range(2, 6):
        register(state_dir, f"s{i}", p.pid)
    st = cli_json("status", state_dir=state_dir)
    assert st["daemon"] is None  # no daemon ever ran here
    assert [a["id"] for a in st["agents"]] == ["s1", "s2", "s3", "s4", "s5"]
    assert all(a["status"] == "not_running" and a["last_sample"] is None for a in st["agents"])

    d = daemons(state_dir, "--interval", "250ms", "--workers", "2")
    d.wait_tick(3)
    started = time.time()
    # (status.json, which status reads, is rewritten at most once a second at a 250ms interval: it
    # may still show an earlier tick than daemon.json, which wait_tick reads)
    st = wait_until(lambda: (j := cli_json("status", state_dir=state_dir))["daemon"]["tick"] >= 3 and j, 10,
                    what="status.json to show tick 3")
    daemon = st["daemon"]
    assert {"supervisor_pid", "writer_pid", "workers", "tick", "updated", "running"} <= set(daemon)
    assert daemon["supervisor_pid"] == d.pid and daemon["running"] is True
    assert pid_alive(daemon["writer_pid"]) and daemon["writer_pid"] != d.pid
    assert [w["index"] for w in daemon["workers"]] == [0, 1]
    assert all(pid_alive(w["pid"]) for w in daemon["workers"])
    assert len({w["pid"] for w in daemon["workers"]} | {daemon["writer_pid"], d.pid}) == 4
    assert sum(w["agents"] for w in daemon["workers"]) == 5
    assert isinstance(daemon["tick"], int) and daemon["tick"] >= 3
    assert abs(parse_ts(daemon["updated"]) - started) < 5
    for a in st["agents"]:
        assert set(a) >= {"id", "type", "pid", "status", "restart_count", "start_time", "last_sample", "alerts"}
        assert a["status"] == "running" and a["pid"] == p.pid and a["alerts"] == []
        assert set(a["last_sample"]) == set(FIELDS)
    # kept current: the tick advances while it runs
    wait_until(lambda: cli_json("status", state_dir=state_dir)["daemon"]["tick"] > daemon["tick"], 10, what="tick advances")
    assert d.stop() == 0
    stopped = cli_json("status", state_dir=state_dir)["daemon"]
    assert stopped["running"] is False and stopped["supervisor_pid"] == d.pid


def test_status_filters_for_a_large_fleet(procs, state_dir, daemons, tmp_path):
    """--problems (not running or alerting), --type, --sort and --limit pick the rows, in the table
    and in the JSON alike; the table ends with the whole fleet's counts."""
    idle = [procs.sleeper() for _ in range(3)]
    big = procs.python("import time; b = bytearray(64 << 20); time.sleep(600)")
    dead = procs.sleeper()
    for i, p in enumerate(idle):
        register(state_dir, f"idle{i}", p.pid)
    register(state_dir, "big", big.pid, type="db", memory="16MiB", **{"for": "1h"})  # a warning
    register(state_dir, "dead", dead.pid, type="db")
    d = daemons(state_dir, "--interval", "250ms", "--workers", "1")
    wait_until(lambda: all(a["last_sample"] for a in cli_json("status", state_dir=state_dir)["agents"]), 30, what="samples")
    dead.kill()
    dead.wait(timeout=10)

    def ids(*flags) -> list[str]:
        return [a["id"] for a in cli_json("status", *flags, state_dir=state_dir)["agents"]]

    wait_until(lambda: ids("--problems") == ["big", "dead"], 30, what="big warning, dead exited")
    assert ids("--type", "db") == ["big", "dead"]
    assert ids("--type", "default", "--type", "db") == ["big", "dead", "idle0", "idle1", "idle2"]
    assert ids("--sort", "memory", "--limit", "1") == ["big"]
    by_memory = cli_json("status", "--sort", "memory", state_dir=state_dir)["agents"]
    assert by_memory[-1]["id"] == "dead"  # its last sample is no current usage: last, whatever it was
    rss = [a["last_sample"]["memory_rss"] for a in by_memory[:-1]]
    assert rss == sorted(rss, reverse=True) and len(rss) == 4
    assert ids("--problems", "--type", "default") == []
    # a monitoring check: exit 1 when a problem is shown, 0 when none
    assert cli("status", "--problems", "--exit-code", state_dir=state_dir).returncode == 1
    assert cli("status", "--problems", "--type", "default", "--exit-code", state_dir=state_dir).returncode == 0
    assert cli("status", "--problems", state_dir=state_dir).returncode == 0  # (without it, always 0)
    proc = cli("status", "--problems", "--exit-code", state_dir=tmp_path / "nowhere")
    assert proc.returncode == 1 and "no daemon is recording" in proc.stderr
    text = cli("status", "--problems", state_dir=state_dir, check=True).stdout
    rows = [line.split()[0] for line in text.splitlines()[2:-1]]
    assert rows == ["big", "dead"]
    summary = text.splitlines()[-1]
    assert summary.startswith("5 agents: 4 running, 1 exited; alerts: 0 error, 1 warning"), summary
    assert summary.endswith("(2 shown: --problems)"), summary
    assert d.stop() == 0
    proc = cli("status", "--problems", "--type", "default", "--exit-code", state_dir=state_dir)
    assert proc.returncode == 1 and "no daemon is recording" in proc.stderr  # stopped: stale rows fail the check


def test_alerts_json_empty_and_agents_ls(state_dir):
    assert cli_json("alerts", state_dir=state_dir) == {"events": []}
    register(state_dir, "b", os.getpid(), cpu=80, memory="1GiB", **{"for": "5m"})
    register(state_dir, "a", pidfile="/run/a.pid")
    # a registry entry as written: "type" may be left out when it is the default
    ls = [{"type": "default", **e} for e in cli_json("agents", "ls", state_dir=state_dir)["agents"]]
    assert ls == [
        {"id": "a", "type": "default", "pidfile": "/run/a.pid"},
        {"id": "b", "type": "default", "pid": os.getpid(),
         "thresholds": {"cpu_threshold": 80.0, "memory_threshold": 2**30, "threshold_duration": 300.0}},
    ]
    assert cli("agents", "rm", "b", state_dir=state_dir).returncode == 0
    assert [a["id"] for a in cli_json("agents", "ls", state_dir=state_dir)["agents"]] == ["a"]


def test_agents_add_warns_when_no_process_has_the_pid(procs, state_dir):
    gone = procs.sleeper()
    gone.kill()
    gone.wait(timeout=10)
    proc = cli("agents", "add", "typo", "--pid", str(gone.pid), state_dir=state_dir)
    assert proc.returncode == 0 and (state_dir / "registry" / "typo.json").exists()  # registered all the same
    assert f"no process has pid {gone.pid} now" in proc.stderr
    proc = cli("agents", "add", "here", "--pid", str(os.getpid()), state_dir=state_dir)
    assert proc.returncode == 0 and proc.stderr == ""
    proc = cli("agents", "add", "later", "--pidfile", str(state_dir / "nope.pid"), state_dir=state_dir)
    assert proc.returncode == 0 and f"the pidfile {state_dir / 'nope.pid'} is missing (a typo?)" in proc.stderr
    # the same diagnosis as the workers log: garbage, a pid nobody has, and a good one (silent)
    (state_dir / "bad.pid").write_text("hello\n")
    proc = cli("agents", "add", "bad", "--pidfile", str(state_dir / "bad.pid"), state_dir=state_dir)
    assert proc.returncode == 0 and "does not hold a pid: b'hello'" in proc.stderr
    (state_dir / "old.pid").write_text(f"{gone.pid}\n")
    proc = cli("agents", "add", "old", "--pidfile", str(state_dir / "old.pid"), state_dir=state_dir)
    assert proc.returncode == 0 and f"holds pid {gone.pid}, which no process has now" in proc.stderr
    (state_dir / "ok.pid").write_text(f"{os.getpid()}\n")
    proc = cli("agents", "add", "ok", "--pidfile", str(state_dir / "ok.pid"), state_dir=state_dir)
    assert proc.returncode == 0 and proc.stderr == ""
    # a relative pidfile is registered as the absolute path it names where the command ran
    proc = cli("agents", "add", "rel", "--pidfile", "run/rel.pid", state_dir=state_dir, cwd=state_dir)
    assert proc.returncode == 0
    assert json.loads((state_dir / "registry" / "rel.json").read_text())["pidfile"] == str(state_dir / "run" / "rel.pid")


def test_queries_of_a_state_dir_that_does_not_exist_say_so(tmp_path):
    missing = tmp_path / "typo"
    for args in (["status"], ["status", "--json"], ["alerts"], ["agents", "ls"]):
        proc = cli(*args, state_dir=missing)
        assert proc.returncode == 0 and f"there is no state dir at {missing}" in proc.stderr, args
    proc = cli("history", "a", state_dir=missing)
    assert proc.returncode == 2 and f"there is no state dir at {missing}" in proc.stderr
    assert not missing.exists()  # and nothing created


def test_alerts_filters_by_agent_and_state(state_dir):
    from fleetmon.units import rfc3339

    now = time.time()
    lines = []
    for i, (agent, state) in enumerate([("a", "warning"), ("b", "error"), ("a", "error"), ("a", "ok"), ("c", "error")]):
        ts = rfc3339(now - 60 + i)
        value = None if state == "ok" else 99.0
        lines.append(f'{{"timestamp":"{ts}","agent_id":"{agent}","resource":"cpu","state":"{state}",'
                     f'"value":{"null" if value is None else value},"threshold":50.0,"since":"{rfc3339(now - 60)}"}}')
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (state_dir / "alerts.jsonl").write_text("\n".join(lines) + "\n")

    def picked(*flags) -> list[tuple[str, str]]:
        return [(e["agent_id"], e["state"]) for e in cli_json("alerts", *flags, state_dir=state_dir)["events"]]

    assert len(picked()) == 5
    assert picked("--agent", "a") == [("a", "warning"), ("a", "error"), ("a", "ok")]
    assert picked("--state", "error") == [("b", "error"), ("a", "error"), ("c", "error")]
    assert picked("--agent", "a", "--agent", "c", "--state", "error") == [("a", "error"), ("c", "error")]
    assert picked("--agent", "nobody") == []
    text = cli("alerts", "--agent", "b", state_dir=state_dir, check=True).stdout
    assert " b " in f" {text} " and " a " not in text.replace("\n", " ")
    assert cli("alerts", "--state", "bogus", state_dir=state_dir).returncode == 2
    assert picked("--limit", "2") == [("a", "ok"), ("c", "error")]
    assert "oldest alert change kept" not in cli("alerts", state_dir=state_dir, check=True).stderr
    (state_dir / "alerts.jsonl.1").write_text(lines[0] + "\n")  # rotated once: older ones may be gone
    proc = cli("alerts", "--json", state_dir=state_dir, check=True)
    assert "note: the oldest alert change kept is from" in proc.stderr and json.loads(proc.stdout)["events"]


def test_status_exit_code_fails_on_a_status_json_the_daemon_no_longer_writes(state_dir):
    """daemon.json fresh, status.json an hour old (the daemon cannot write it: a full disk, say):
    the rows are stale, so the check fails, whatever they say."""
    import msgspec

    from fleetmon.store.records import AgentRecord, DaemonJSON, StatusSnapshot
    from fleetmon.units import rfc3339

    register(state_dir, "a", os.getpid())
    now = time.time()
    daemon = DaemonJSON(1, 2, [], 10, rfc3339(now), True, 10.0, 10)
    (state_dir / "daemon.json").write_bytes(msgspec.json.encode(daemon))

    def status_json(updated: float) -> None:
        rec = AgentRecord("a", "default", os.getpid(), "running", 0, None, None, [], rfc3339(updated))
        (state_dir / "status.json").write_bytes(msgspec.json.encode(StatusSnapshot(rfc3339(updated), [rec])))

    status_json(now - 3600)
    proc = cli("status", "--problems", "--exit-code", state_dir=state_dir)
    assert proc.returncode == 1 and "status.json" in proc.stderr and "is stale" in proc.stderr
    status_json(now)
    proc = cli("status", "--problems", "--exit-code", state_dir=state_dir)
    assert proc.returncode == 0, proc.stderr


def test_status_tells_a_daemon_that_cannot_write_from_one_that_stopped(procs, state_dir):
    """daemon.json 10 minutes old and saying it runs: killed, or alive but unable to write the state
    dir (a full disk). An SRE on a full disk was told 'stopped' by status and the check while the
    daemon ran on; a daemon holds the state dir's lock as long as it runs."""
    import subprocess
    import sys

    import msgspec

    from fleetmon.store import queries
    from fleetmon.store.layout import StateDir
    from fleetmon.store.records import DaemonJSON
    from fleetmon.supervisor import top
    from fleetmon.units import rfc3339

    register(state_dir, "a", os.getpid())
    (state_dir / "run").mkdir(mode=0o700, exist_ok=True)
    lock = state_dir / "run" / "lock"
    holder = procs.start([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT, 0o600)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(120)\n"
    )], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    daemon = DaemonJSON(holder.pid, holder.pid, [], 10, rfc3339(time.time() - 600), True, 10.0, 10)
    (state_dir / "daemon.json").write_bytes(msgspec.json.encode(daemon))

    def told() -> tuple[str, str]:
        out = cli("status", state_dir=state_dir, check=True).stdout
        proc = cli("status", "--exit-code", state_dir=state_dir)
        assert proc.returncode == 1
        return out, proc.stderr

    out, err = told()
    assert out.startswith(f"daemon: not recording - supervisor {holder.pid}") and "can it write there?" in out, out
    assert "can it write there?" in err
    st = queries.status(StateDir(state_dir))  # top says the same
    assert "not recording" in "".join(str(t) for t in top.health_lines(st, time.time(), state_dir / "run"))
    holder.kill()
    holder.wait(timeout=10)
    out, err = told()
    assert out.startswith(f"daemon: stopped - supervisor {holder.pid}") and "daemon stopped?" in out, out
    assert "can it write" not in err


def test_run_check_validates_and_starts_nothing(state_dir, tmp_path):
    register(state_dir, "ok", os.getpid())
    (state_dir / "registry" / "broken.json").write_text('{"id": "broken", "pid": ')
    config = tmp_path / "fleetmon.toml"
    config.write_text('workers = 3\ninterval = "10s"\nkeep_removed = 0\nhttp = 9464\n'
                      '[thresholds.default]\ncpu_threshold = 80\nthreshold_duration = "5m"\n'
                      '[thresholds.types.web]\nmemory_threshold = "1GiB"\n')
    proc = cli("run", "--check", "--config", str(config), state_dir=state_dir, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"config {config}: ok: 3 workers, interval 10s, history 1440 points, keep_removed off")
    assert lines[1].startswith("  stall_timeout 10s, alert_repeat 10m, http 127.0.0.1:9464, reader ")
    assert lines[2] == "  thresholds: default cpu > 80% for 5m"
    assert lines[3] == "  thresholds: type web memory > 1.0GiB (the rest from default)"
    assert lines[4] == "registry: 1 agent, 1 invalid (skipped by the daemon; a running one keeps an entry it read valid before):" and lines[5].startswith("  broken.json: ")
    assert not (state_dir / "run" / "lock").exists() and not (state_dir / "daemon.json").exists()  # nothing started
    config.write_text("workers = -2\n")
    proc = cli("run", "--check", "--config", str(config), state_dir=state_dir, timeout=30)
    assert proc.returncode == 2 and "workers" in proc.stderr and proc.stdout == ""


def test_agents_import_registers_many_at_once_all_or_nothing(procs, state_dir, tmp_path, daemons):
    d = daemons(state_dir, "--interval", "250ms", "--workers", "2")
    d.wait_tick(1)
    sleepers = [procs.sleeper() for _ in range(40)]
    lines = [json.dumps({"id": f"bulk-{i:02d}", "pid": p.pid, "type": "batch"}) for i, p in enumerate(sleepers)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines[:3] + ['{"id": "x", "pid": -1}']) + "\n")
    proc = cli("agents", "import", str(bad), state_dir=state_dir)
    assert proc.returncode == 2 and "line 4" in proc.stderr and "nothing imported" in proc.stderr
    assert cli_json("agents", "ls", state_dir=state_dir)["agents"] == []
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(lines) + "\n")
    proc = cli("agents", "import", str(good), state_dir=state_dir, check=True)
    assert "imported 40 agents" in proc.stdout and "(40 new, 0 replaced)" in proc.stdout
    wait_until(
        lambda: sum(a["status"] == "running" for a in cli_json("status", state_dir=state_dir)["agents"]) == 40,
        30, what="the daemon to sample every imported agent",
    )
    assert d.stop() == 0
    # what agents ls --json prints imports as is, into another state dir
    exported = tmp_path / "agents.json"
    exported.write_text(cli("agents", "ls", "--json", state_dir=state_dir, check=True).stdout)
    other = tmp_path / "other"
    cli("agents", "import", str(exported), state_dir=other, check=True)
    assert cli_json("agents", "ls", state_dir=other) == cli_json("agents", "ls", state_dir=state_dir)
    again = cli("agents", "import", "-", state_dir=other)  # stdin empty: a failed upstream command, say
    assert again.returncode == 2 and "no entries (nothing imported)" in again.stderr


def test_usage_errors_exit_2(state_dir):
    for args in (["history"], ["frobnicate"], ["run", "--interval", "0"], ["run", "--interval", "soon"],
                 ["run", "--workers", "-1"], ["history", "x", "--every", "0"], ["alerts", "--since", "x"]):
        proc = cli(*args, state_dir=state_dir, timeout=30)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not state_dir.exists()


def test_a_typo_is_named_by_the_command_it_was_for_with_a_suggestion(state_dir):
    """A mistyped flag after a subcommand was reported by the top-level parser ("see fleetmon
    --help", which does not list the subcommand's flags); no command at all printed the whole help."""
    proc = cli("agents", "add", "x", "--pid", "1", "--memroy", "1GiB", state_dir=state_dir, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "fleetmon agents add: error: unrecognized arguments: --memroy 1GiB (did you mean --memory?) "
        "(see fleetmon agents add --help)"
    )
    proc = cli("history", "x", "--evrey", "5s", state_dir=state_dir, timeout=30)
    assert proc.returncode == 2 and "(did you mean --every?) (see fleetmon history --help)" in proc.stderr
    proc = cli("--verison", timeout=30)  # no command, but a typo: the typo is what is said
    assert proc.returncode == 2 and "unrecognized arguments: --verison (did you mean --version?)" in proc.stderr
    proc = cli(timeout=30)
    assert proc.returncode == 2 and not proc.stdout
    assert proc.stderr.startswith("fleetmon: error: a command is required: run, agents, status") and len(proc.stderr.splitlines()) == 1
    assert not state_dir.exists()


def test_a_relative_state_dir_is_named_in_full_and_a_missing_one_is_hinted(tmp_path):
    env = {**os.environ, "FLEETMON_STATE_DIR": "rel"}
    proc = cli("agents", "add", "a", "--pid", os.getpid(), env=env, cwd=tmp_path, check=True)
    assert f"in {tmp_path / 'rel' / 'registry' / 'a.json'}" in proc.stdout  # not "in rel/registry/a.json"
    proc = cli("agents", "rm", "a", state_dir=tmp_path / "typo", timeout=30)
    assert proc.returncode == 2 and f"there is no state dir at {tmp_path / 'typo'}" in proc.stderr


def test_state_dir_before_the_command_works_and_after_wins(state_dir, tmp_path):
    """The contract puts --state-dir after the command; an operator who writes it first (as with
    most tools' global options) gets the same, and when both are given the one after wins."""
    elsewhere = tmp_path / "elsewhere"
    cli("--state-dir", state_dir, "agents", "add", "first", "--pid", os.getpid(), check=True)
    assert (state_dir / "registry" / "first.json").is_file()
    proc = cli("--state-dir", elsewhere, "agents", "ls", "--json", state_dir=state_dir, check=True)
    assert '"first"' in proc.stdout and not elsewhere.exists()


def test_a_bad_log_level_flag_is_named_as_the_flag(state_dir):
    line = exits_2_and_writes_nothing(["run", "--log-level", "LOUD"], state_dir)
    assert "--log-level" in line and "LOUD" in line and "config" not in line


def test_since_filters_history_and_alerts_and_defaults_to_an_hour(state_dir):
    """``history`` and ``alerts`` keep what is newer than ``--since`` (default 1h): points and
    changes from 2 h and 30 min ago, asked for with no flag, 45m and 3h."""
    from fleetmon.store.layout import StateDir
    from fleetmon.store.ring import Point, RingStore
    from fleetmon.units import rfc3339

    now = time.time()
    register(state_dir, "a", os.getpid())
    state = StateDir(state_dir).create()
    rings = RingStore(state.history, 100)
    for age in (7200, 1800):
        rings.append("a", Point(now - age, 1.0, 1, 1, 0, 0, 1, 1))
    rings.close_all()
    state.alerts.write_text("".join(
        f'{{"timestamp":"{rfc3339(now - age)}","agent_id":"a","resource":"cpu","state":"warning",'
        f'"value":99.0,"threshold":50.0,"since":"{rfc3339(now - age)}"}}\n'
        for age in (7200, 1800)
    ))

    def ages(command: str, *flags) -> list[int]:
        if command == "history":
            stamps = [p["timestamp"] for p in history(state_dir, "a", *flags)]
        else:
            stamps = [e["timestamp"] for e in cli_json("alerts", *flags, state_dir=state_dir)["events"]]
        return [round((now - parse_ts(t)) / 60) * 60 for t in stamps]

    for command in ("history", "alerts"):
        assert ages(command) == [1800], command
        assert ages(command, "--since", "45m") == [1800], command
        assert ages(command, "--since", "20m") == [], command
        assert ages(command, "--since", "3h") == [7200, 1800], command


def test_default_state_dir_is_fleetmon_state_dir_then_xdg_then_home(tmp_path):
    """The contract's order, through the real CLI: $FLEETMON_STATE_DIR, else $XDG_STATE_HOME/fleetmon,
    else ~/.local/state/fleetmon."""
    base = {k: v for k, v in os.environ.items() if k not in ("FLEETMON_STATE_DIR", "XDG_STATE_HOME")}
    home = tmp_path / "home"
    cases = [
        ({"FLEETMON_STATE_DIR": str(tmp_path / "explicit"), "XDG_STATE_HOME": str(tmp_path / "xdg")},
         tmp_path / "explicit"),
        ({"XDG_STATE_HOME": str(tmp_path / "xdg")}, tmp_path / "xdg" / "fleetmon"),
        ({}, home / ".local" / "state" / "fleetmon"),
        ({"XDG_STATE_HOME": "relative/xdg"}, home / ".local" / "state" / "fleetmon"),  # invalid (XDG): ignored
        ({"FLEETMON_STATE_DIR": "~/fm"}, home / "fm"),  # quoted: no shell expanded it
        ({"XDG_STATE_HOME": "~/xdg-home"}, home / "xdg-home" / "fleetmon"),  # the same: not taken for relative
    ]
    for i, (extra, where) in enumerate(cases):
        env = {**base, "HOME": str(home), **extra}
        cli("agents", "add", f"a{i}", "--pid", str(os.getpid()), env=env, check=True)
        assert (where / "registry" / f"a{i}.json").is_file(), (extra, where)
        listed = json.loads(cli("agents", "ls", "--json", env=env, check=True).stdout)["agents"]
        assert [a["id"] for a in listed] == sorted(f"a{j}" for j, (_, w) in enumerate(cases[: i + 1]) if w == where)


def test_agents_ls_shows_an_explicit_zero_as_off(state_dir):
    """An entry's 0 turns its type's limit off: the table must say so, not hide it as if unset."""
    for args in (["a1", "--cpu", "0", "--memory", "1GiB", "--for", "5m"], ["a2"], ["a3", "--open-files", "100"]):
        proc = cli("agents", "add", *args, "--pid", str(os.getpid()), state_dir=state_dir)
        assert proc.returncode == 0, proc.stderr
    proc = cli("agents", "ls", state_dir=state_dir)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split(None, 3)[3] for line in proc.stdout.splitlines()[1:]}
    assert rows == {"a1": "cpu off, memory > 1.0GiB for 5m", "a2": "-", "a3": "open files > 100"}
