"""benchmarks/competitors.py end to end on a tiny fleet: fleetmon's row is sane and every installed
competitor measured (those missing are skipped rows that say so); no process it started is left."""

from __future__ import annotations

import json
import os

import pytest

from benchmarks import competitors
from tests.bench.test_harness import _no_children_left

pytestmark = pytest.mark.slow


def _cmdlines() -> dict[int, str]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    out[int(name)] = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                pass
    return out


@pytest.mark.timeout(300)
def test_competitors_small_run(tmp_path):
    out = tmp_path / "competitors.json"
    result = competitors.main(
        ["--agents", "20", "--duration", "3", "--warmup", "1", "--baseline-seconds", "1", "--workdir", str(tmp_path),
         "--out", str(out)]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    rows = {r["tool"]: r for r in result["tools"]}
    assert list(rows) == list(competitors.TOOLS)
    measured = [r for r in result["tools"] if "skipped" not in r]
    assert len(result["bare_runs"]) == len(measured) + 1, "the bare loop before each tool and after the last"
    assert all(b["samples"] >= 3 * 20 and b["cpu_per_sample_us"] > 0 for b in result["bare_runs"])

    fm = rows["fleetmon"]
    assert "skipped" not in fm
    assert fm["watched"] == 20 and fm["intervals"] >= 3
    assert abs(fm["intervals"] - fm["window_s"]) <= 1.5, "one tick a second"
    assert fm["detail"]["samples"] == 20 * fm["intervals"] and fm["detail"]["missed_ticks"] == 0
    assert fm["detail"]["agents_with_points"] == 20 and fm["detail"]["daemon_exit_code"] == 0
    assert fm["cpu_s"] >= 0 and fm["peak_rss_mb"] > 0  # 20 idle agents for 3 s can stay under /proc's 10 ms tick
    assert fm["cpu_per_process_interval_us"] == pytest.approx(fm["cpu_s"] / (20 * fm["intervals"]) * 1e6, abs=0.01)
    bare = [b["cpu_per_sample_us"] for b in result["bare_runs"][:2]]  # fleetmon runs first: the 1st and 2nd
    assert fm["bare_cpu_per_sample_us"] == pytest.approx(sum(bare) / 2, abs=0.01)
    assert fm["cpu_vs_bare"] == pytest.approx(fm["cpu_per_process_interval_us"] / fm["bare_cpu_per_sample_us"], rel=1e-2)

    for tool in competitors.TOOLS[1:]:
        r = rows[tool]
        if competitors.missing(tool):
            assert competitors.BINARIES[tool][0] in r["skipped"]
            continue
        assert "skipped" not in r, r
        assert r["watched"] == 20 and r["intervals"] >= 2 and r["cpu_s"] >= 0 and r["peak_rss_mb"] > 0
        assert r["cpu_per_process_interval_us"] is not None and r["gives"]
        assert r["package"] and r["pids"]
    if "skipped" not in rows["process-exporter"]:
        pe = rows["process-exporter"]
        assert pe["detail"]["groups_in_last_scrape"] == 20, "one group per process of the fleet, no other"
        assert pe["detail"]["failed_scrapes"] == 0 and pe["helper_cpu_per_process_interval_us"] is not None
    if "skipped" not in rows["monit"]:
        assert rows["monit"]["detail"]["not_running_logged"] == 0, "monit found every pid alive"
        # (it sleeps the whole interval after a cycle; the bursts are seen to within a poll)
        monit = rows["monit"]["detail"]
        assert monit["cycle_s"] >= 1.0 - monit["cycle_resolution_s"]

    _no_children_left()
    token, workdir = result["fleet_command"], str(tmp_path)
    left = {pid: c for pid, c in _cmdlines().items() if token in c or workdir in c}
    assert not left, f"processes left behind: {left}"
    for r in result["tools"]:
        for pid in r.get("pids", []):
            try:
                exe = os.readlink(f"/proc/{pid}/exe")
            except OSError:
                continue
            assert exe != competitors.BINARIES[r["tool"]][0], f"{r['tool']} left running: {pid}"


def test_unknown_tool_is_refused():
    with pytest.raises(SystemExit):
        competitors.parse_args(["--tools", "fleetmon,telegraf"])
