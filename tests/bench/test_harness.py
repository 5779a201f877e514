"""The benchmark scripts run end to end at a small size, so the harness cannot rot: each writes sane
JSON (every agent sampled, ratios present) and leaves no process behind."""

from __future__ import annotations

import json
import os
import statistics

import pytest

from benchmarks import baselines, fleet, pipeline, scaling, scrapes, storage
from tests.helpers import children_of

pytestmark = pytest.mark.slow


def _no_children_left() -> None:
    left = [pid for pid in children_of(os.getpid()) if os.path.exists(f"/proc/{pid}")]
    assert not left, f"benchmark left processes running: {left}"


@pytest.mark.timeout(300)
def test_fleet_harness_small_run(tmp_path):
    out = tmp_path / "fleet.json"
    result = fleet.main(
        [
            "--agents",
            "200",
            "--workers",
            "2",
            "--interval",
            "0.5s",
            "--duration",
            "5",
            "--warmup",
            "2",
            "--baseline-seconds",
            "1",
            "--workdir",
            str(tmp_path),
            "--out",
            str(out),
            "--reader",
            "procfs,psutil",
        ]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert [r["reader"] for r in result["runs"]] == ["procfs", "psutil"]
    for run in result["runs"]:
        _check_fleet_run(run)
    assert result["baselines"]["200"]["bare_before"]["samples"] >= 600
    _no_children_left()


def _check_fleet_run(run: dict) -> None:
    assert run["agents"] == 200 and run["workers"] == 2
    assert run["ticks"] >= 5 and run["samples"] >= 200 * 5
    assert run["agents_with_points"] == 200, "every agent sampled"
    assert run["min_points_per_agent"] >= run["ticks"]
    assert run["missed_ticks"] <= run["ticks"] // 2
    assert 0 < run["tick_latency_p50_s"] <= run["tick_latency_p99_s"] < 30
    assert run["samples_per_s"] > 0 and run["cpu_per_sample_us"] > 0
    assert set(run["cpu_per_sample_us_by_role"]) == {"supervisor", "writer", "workers"}
    assert run["writer_rss_mb"] > 0 and run["total_rss_mb"] >= run["writer_rss_mb"]
    assert run["baseline_source"] == "interleaved" and run["baselines_interleaved"]["bare"]["samples"] > 0
    for key in ("cpu_vs_bare", "cpu_vs_naive", "bare_cpu_per_sample_us", "naive_cpu_per_sample_us"):
        assert run[key] is not None and run[key] > 0, key
    assert run["daemon_exit_code"] == 0


@pytest.mark.timeout(180)
def test_storage_benchmark_small_run(tmp_path):
    out = tmp_path / "storage.json"
    result = storage.main(
        [
            "--agents",
            "200",
            "--history-size",
            "1440",
            "--ticks",
            "3",
            "--persist-agents",
            "100",
            "--persist-rounds",
            "2",
            "--workdir",
            str(tmp_path),
            "--out",
            str(out),
        ]
    )
    assert json.loads(out.read_text())["benchmark"] == "storage"
    assert result["disk_bytes"]["history"] >= 200 * 1441 * 64
    assert result["writer_rss_mb"] > 0 and result["startup_s"] > 0 and result["recovery_s"] > 0
    assert result["recovery_points_lost_agents"] == 0
    assert result["history_points"] >= 1440
    assert set(result["persist"]["cpu_per_sample_us"]) == {"10", "1440"}
    assert result["persist"]["ratio_longest_vs_shortest"] > 0
    assert result["status_cli"]["output_bytes"] > 0 and result["history_cli"]["median_s"] > 0
    _no_children_left()


@pytest.mark.timeout(120)
def test_pipeline_benchmark_small_run(tmp_path):
    out = tmp_path / "pipeline.json"
    result = pipeline.main(
        [
            "--agents",
            "500",
            "--workers",
            "2",
            "--ticks",
            "5",
            "--warmup",
            "1",
            "--workdir",
            str(tmp_path),
            "--out",
            str(out),
        ]
    )
    assert json.loads(out.read_text())["benchmark"] == "pipeline"
    modes = {r["mode"]: r for r in result["runs"]}
    assert set(modes) == {"sink", "writer"}
    for r in modes.values():
        assert r["samples"] == 500 * 5 and r["samples_per_s"] > 0
        assert r["writer_cpu_per_sample_us"] >= 0 and r["worker_cpu_per_sample_us"] >= 0  # /proc: 10 ms ticks
    assert modes["writer"]["writer_cpu_per_sample_us"] > 0
    assert modes["writer"]["samples_per_s_vs_sink"] > 0
    _no_children_left()


@pytest.mark.timeout(300)
def test_scaling_benchmark_small_run(tmp_path):
    out = tmp_path / "scaling.json"
    result = scaling.main(
        [
            "--agents",
            "200",
            "--rounds",
            "2",
            "--reader",
            "procfs",
            "--duration",
            "3",
            "--warmup",
            "2",
            "--loop-seconds",
            "0.5",
            "--workdir",
            str(tmp_path),
            "--out",
            str(out),
        ]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert [r["order"] for r in result["rounds"]] == [[1, 2], [2, 1]]
    for rnd in result["rounds"]:
        assert [p["what"] for p in rnd["pairs"]] == ["bare psutil loop", "bare procfs loop", "fleetmon, procfs reader"]
        for pair in rnd["pairs"]:
            assert pair["samples_per_s"]["1"] > 0 and pair["samples_per_s"]["2"] > 0
            assert pair["ratio"] == pytest.approx(pair["samples_per_s"]["2"] / pair["samples_per_s"]["1"], rel=1e-3)
        fm = rnd["pairs"][-1]
        # 200 agents at 0.02s: at most 10,000 samples/s; a run that came within 10% of it is flagged
        near_cap = [fm["samples_per_s"][k] >= 0.9 * 200 / 0.02 for k in ("1", "2")]
        assert fm["interval_bound"] is any(near_cap)
        assert set(fm["cpu_per_sample_us_by_role"]["2"]) == {"supervisor", "writer", "workers"}
        roles = fm["cpu_per_sample_us_by_role"]["1"]
        cores = len(os.sched_getaffinity(0))
        w, r = roles["workers"], roles["writer"] + roles["supervisor"]
        assert fm["bound"] == pytest.approx(min(2.0, cores * w / (w + r)), abs=1e-3) and 0 < fm["bound"] <= 2
        assert all(p["bound"] is None for p in rnd["pairs"][:-1])  # the bare loops have no writer
    summary = {row["what"]: row for row in result["summary"]}
    assert set(summary) == {"bare psutil loop", "bare procfs loop", "fleetmon, procfs reader"}
    row = summary["fleetmon, procfs reader"]
    assert row["min_ratio"] <= row["median_ratio"] <= row["max_ratio"]
    assert row["vs_bare_loop"] == pytest.approx(row["median_ratio"] / summary["bare procfs loop"]["median_ratio"], rel=1e-2)
    assert "vs_bare_loop" not in summary["bare procfs loop"]
    assert row["median_bound"] == pytest.approx(statistics.median(r["pairs"][-1]["bound"] for r in result["rounds"]), abs=1e-3)
    _no_children_left()


def test_scaling_cpu_bound():
    """Workers at 30 us per sample, writer and supervisor 6 us: 2 workers and the rest share 2 cores,
    so 2 x 30 / 36 = 1.67x at best; with cores to spare, 2x; and no roles (a bare loop): no bound."""
    roles = {"workers": 30.0, "writer": 5.0, "supervisor": 1.0}
    assert scaling.cpu_bound(roles, cpus=2) == pytest.approx(60 / 36, abs=1e-3)
    assert scaling.cpu_bound(roles, cpus=4) == 2.0
    assert scaling.cpu_bound({"workers": 30.0}, cpus=2) == 2.0
    assert scaling.cpu_bound({}, cpus=2) is None and scaling.cpu_bound(None) is None


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", baselines.PARALLEL_KINDS)
def test_parallel_bare_loop_covers_every_pid_once_per_pass(kind):
    """Two processes over half the pids each: every pass of each reads its whole slice, so the total
    is a whole number of slice passes (a pid read twice, or skipped, would break that)."""
    import subprocess

    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(10)]
    try:
        pids = [p.pid for p in procs]
        one = baselines.parallel_baseline(kind, pids, 0.2, 1)
        two = baselines.parallel_baseline(kind, pids, 0.2, 2)
        assert one["procs"] == 1 and two["procs"] == 2
        assert one["samples"] > 0 and one["samples"] % 10 == 0
        assert two["samples"] > 0 and two["samples"] % 5 == 0
        assert one["samples_per_s"] > 0 and two["cpu_per_sample_us"] > 0
        with pytest.raises(ValueError):
            baselines.parallel_baseline("nope", pids, 0.1, 1)
    finally:
        for p in procs:
            p.kill()
            p.wait(5)
    _no_children_left()


@pytest.mark.timeout(120)
def test_writer_paths_small_run(tmp_path):
    """Today's writer and the columnar prototype both write every record (read back), and each has
    a cost per sample; 12 ticks into rings of 10 also wraps both around."""
    pytest.importorskip("numpy")  # the test extra has it; only the prototype needs it
    from benchmarks import writer_paths

    out = tmp_path / "writer_paths.json"
    result = writer_paths.main(
        ["--agents", "200", "--ticks", "5", "--repeat", "2", "--history-size", "10", "--workdir", str(tmp_path), "--out", str(out)]
    )
    assert json.loads(out.read_text())["benchmark"] == "writer_paths"
    assert result["today"]["every_record_written"] and result["prototype"]["every_record_written"]
    assert result["today"]["min_us"] > 0 and result["prototype"]["min_us"] > 0 and result["prototype_vs_today"] > 0
    assert len(result["today"]["runs_us"]) == 2 and result["worker_encode"]["msgpack"]["min_us"] > 0
    assert result["today"]["flush"]["min_us"] >= 0


@pytest.mark.timeout(300)
def test_scrapes_benchmark_small_run(tmp_path):
    out = tmp_path / "scrapes.json"
    result = scrapes.main(["--agents", "50", "--duration", "3", "--warmup", "1", "--scrapers", "3", "--pollers", "1",
                           "--out", str(out)])
    assert json.loads(out.read_text())["benchmark"] == "scrapes"
    quiet, storm = result["windows"]
    assert (quiet["window"], storm["window"]) == ("quiet", "storm")
    for w in (quiet, storm):
        assert w["ticks"] >= 2 and w["missed_ticks"] == 0 and w["tick_latency_p99_s"] is not None
        assert set(w["healthz"]) == {"200"}
    assert quiet["metrics"] is None and storm["metrics"]["served"] > 0 and storm["status"]["served"] > 0
    assert result["storm_over_quiet_tick_p99"] is not None
    _no_children_left()
