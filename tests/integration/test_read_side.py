"""The read side against what DESIGN.md and the README promise: bad input is exit 2 / 400, integer
columns print in full, user text is never markup, a bad alerts line is skipped (found by a review)."""

from __future__ import annotations

import json
import os
import time

import pytest
from rich.console import Console

from fleetmon.store import http, queries
from fleetmon.store.layout import StateDir
from fleetmon.store.ring import Point, Ring
from fleetmon.supervisor import registry as reg
from fleetmon.supervisor import top
from fleetmon.units import rfc3339
from tests.helpers import cli
from tests.http._fakes import big_fleet, daemon_info, fake_writer
from tests.http.test_endpoint import get

HUGE = "9" * 400  # a plain number of seconds that float() turns into inf


def _agent_with_history(root, agent_id="a", points=()):
    state = StateDir(root).create()
    reg.write_entry(state.registry, reg.RegistryEntry(agent_id, "default", pid=os.getpid()))
    ring = Ring.open(state.ring_file(agent_id), 100)
    for p in points:
        ring.append(p)
    ring.close()
    return state


def _pt(ts, cpu=1.0):
    return Point(ts, cpu, 100, 200, 0, 0, 5, 1)


# 1. A duration too large for a float: NaN bucket -> traceback (CLI) / 500 (HTTP) instead of bad input.


def test_history_every_overflowing_duration_is_bad_input_exit_2(tmp_path):
    now = time.time()
    state = _agent_with_history(tmp_path / "s", points=[_pt(now - 10)])
    proc = cli("history", "a", "--every", HUGE, state_dir=state.root)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1 and "--every" in proc.stderr


def test_http_history_every_overflowing_duration_is_400(tmp_path):
    now = time.time()
    state = _agent_with_history(tmp_path / "s", points=[_pt(now - 10)])
    ep = http.start("127.0.0.1:0", fake_writer(big_fleet(1), state_root=state.root, daemon=daemon_info()))
    try:
        host, port = ep.server_address[:2]
        code, _, body = get(f"http://{host}:{port}/api/agents/a/history?every={HUGE}")
    finally:
        ep.close()
    assert code == 400, (code, body)  # README: an invalid duration answers 400


# 2. Sub-second --every: a point exactly on a bucket edge goes to the bucket before (float division).


def test_every_100ms_point_on_a_bucket_edge_starts_its_own_bucket(tmp_path):
    t0 = 1_764_400_199.0
    on_edge = t0 + 0.6  # shown by `history` as ...:59.600000Z
    state = _agent_with_history(tmp_path / "s", points=[_pt(on_edge, 10.0)])
    raw = queries.history(state, "a", 3600, None, now=t0 + 10)
    assert raw.points[0].timestamp == "2025-11-29T07:09:59.600000Z"
    bucketed = queries.history(state, "a", 3600, 0.1, now=t0 + 10)
    # Go's Truncate(100ms) of 07:09:59.600000 is 07:09:59.600000 itself (not .500000).
    assert [p.timestamp for p in bucketed.points] == ["2025-11-29T07:09:59.600000Z"]


# 3. Integer columns printed with "{:g}": a pid of 1,000,000 or more shows as 4e+06.


def test_status_table_prints_a_7_digit_pid_as_is(tmp_path):
    state = StateDir(tmp_path / "s").create()
    reg.write_entry(state.registry, reg.RegistryEntry("web-1", "default", pid=3_999_999))  # pid_max is 4194304
    proc = cli("status", state_dir=state.root)
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("web-1"))
    assert "3999999" in row.split(), row


def test_alerts_table_prints_open_files_value_and_threshold_as_counts(tmp_path):
    state = StateDir(tmp_path / "s").create()
    now = time.time()
    line = {"timestamp": rfc3339(now - 5), "agent_id": "web-1", "resource": "open_files", "state": "warning",
            "value": 1_048_000, "threshold": 1_000_000, "since": rfc3339(now - 5), "reason": None}
    state.alerts.write_text(json.dumps(line) + "\n")
    proc = cli("alerts", state_dir=state.root)
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if "web-1" in line)
    assert "1048000" in row.split() and "1000000" in row.split(), row


# 4. top renders agent types as rich markup: a type "[/x]" (valid: 1-128 printable) crashes it.


def test_top_survives_an_agent_type_that_looks_like_markup(tmp_path):
    state = StateDir(tmp_path / "s").create()
    proc = cli("agents", "add", "web-1", "--pid", str(os.getpid()), "--type", "[/x]", state_dir=state.root)
    assert proc.returncode == 0, proc.stderr  # accepted as a valid type
    proc = cli("agents", "add", "web-2", "--pid", str(os.getpid()), "--type", "[bold]web", state_dir=state.root)
    assert proc.returncode == 0, proc.stderr
    console = Console(record=True, width=120, color_system=None)
    console.print(top.render(queries.status(state), "cpu", height=20))  # MarkupError here
    text = console.export_text()
    assert "[/x]" in text and "[bold]web" in text


# 5. alerts: one well-formed line with an unparseable timestamp takes the whole command down.


def test_alerts_skips_a_line_with_an_unparseable_timestamp(tmp_path):
    state = StateDir(tmp_path / "s").create()
    now = time.time()

    def ev(t):
        return json.dumps({"timestamp": rfc3339(t), "agent_id": "a", "resource": "cpu", "state": "warning",
                           "value": 5, "threshold": 1, "since": rfc3339(t), "reason": None})

    bad = json.dumps({"timestamp": "garbage", "agent_id": "a", "resource": "cpu", "state": "ok",
                      "value": 1, "threshold": 1, "since": "x", "reason": None})
    state.alerts.write_text("\n".join([ev(now - 600), bad, ev(now - 60)]) + "\n")
    proc = cli("alerts", "--json", state_dir=state.root)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0
    assert len(json.loads(proc.stdout)["events"]) == 2


# 6. Durations take other scripts' digits ("١h"), unlike pids and counts (units.whole_number).


@pytest.mark.parametrize("text", ["١h", "٣٠s", "５m"])
def test_history_since_refuses_non_ascii_digits(tmp_path, text):
    now = time.time()
    state = _agent_with_history(tmp_path / "s", points=[_pt(now - 10)])
    proc = cli("history", "a", "--since", text, "--json", state_dir=state.root)
    assert proc.returncode == 2, (text, proc.stdout[:200])


def test_status_type_filter_with_a_markup_like_type_does_not_crash(tmp_path):
    state = StateDir(tmp_path / "s").create()
    proc = cli("agents", "add", "w1", "--pid", str(os.getpid()), "--type", "[/x]", state_dir=state.root)
    assert proc.returncode == 0, proc.stderr
    proc = cli("status", "--type", "[/x]", state_dir=state.root)
    assert "Traceback" not in proc.stderr, proc.stderr[-300:]
    assert proc.returncode == 0
    assert "(1 shown: --type [/x])" in proc.stdout, proc.stdout


def test_empty_and_single_answers_read_as_sentences(tmp_path):
    """`alerts` with nothing printed "0 alert events" over an empty header; one point was "1 points"."""
    now = time.time()
    state = _agent_with_history(tmp_path / "s", points=[_pt(now - 10)])
    proc = cli("alerts", "--since", "2h", state_dir=state.root)
    assert proc.returncode == 0 and proc.stdout == "no alert events in the last 2h\n"
    proc = cli("history", "a", state_dir=state.root)
    assert proc.returncode == 0 and proc.stdout.splitlines()[0] == "a: 1 point"


def test_status_keeps_an_agent_whose_registry_file_stopped_parsing(tmp_path):
    """The daemon keeps watching such an agent (the file's last valid entry), /metrics shows it, but
    status and /api/status left it out, and with it its open alerts."""
    import msgspec

    from fleetmon.store.records import AgentRecord, AlertBrief, StatusSnapshot

    state = _agent_with_history(tmp_path / "state", "a")
    reg.write_entry(state.registry, reg.RegistryEntry("b", "web", pid=os.getpid()))
    now = rfc3339(time.time())
    records = [
        AgentRecord(i, "web", os.getpid(), "running", 0, now, None, [AlertBrief("cpu", "error", now)] if i == "b" else [])
        for i in ("a", "b")
    ]
    (state.root / "status.json").write_bytes(msgspec.json.encode(StatusSnapshot(now, records)))
    state.registry_file("b").write_text('{"id": "b", "pid": ')  # an edit gone wrong
    state.registry_file("c").write_text("{not json")  # never valid: the daemon does not watch it
    shown = queries.status(state).agents
    assert [(r.id, r.status, [x.state for x in r.alerts]) for r in shown] == [("a", "running", []), ("b", "running", ["error"])]
    proc = cli("status", "--json", state_dir=state.root, timeout=30)
    assert proc.returncode == 0 and [r["id"] for r in json.loads(proc.stdout)["agents"]] == ["a", "b"]
