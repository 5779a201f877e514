"""The collector's output over an in-memory fleet: rendered by prometheus_client, parsed back."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import CollectorRegistry, Counter, Info, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fleetmon import wire
from fleetmon.store import thresholds as th
from fleetmon.store.collector import BatchStats, FleetCollector, render_text
from fleetmon.store.fleet import Agent, Fleet
from fleetmon.store.http import health
from fleetmon.store.ring import Point, RingStore
from tests.http._fakes import T0, NullRings, big_fleet, daemon_info, fake_writer, sample

AGENT_METRICS = {
    "fleetmon_agent_cpu_percent": "gauge",
    "fleetmon_agent_cpu_seconds": "counter",
    "fleetmon_agent_memory_rss_bytes": "gauge",
    "fleetmon_agent_memory_vms_bytes": "gauge",
    "fleetmon_agent_disk_read_bytes": "counter",  # the parser names counter families without _total
    "fleetmon_agent_disk_write_bytes": "counter",
    "fleetmon_agent_open_files": "gauge",
    "fleetmon_agent_threads": "gauge",
    "fleetmon_agent_up": "gauge",
    "fleetmon_agent_restarts": "counter",
    "fleetmon_agent_alert_state": "gauge",
}
USAGE = [
    "fleetmon_agent_cpu_percent", "fleetmon_agent_cpu_seconds_total", "fleetmon_agent_memory_rss_bytes",
    "fleetmon_agent_memory_vms_bytes", "fleetmon_agent_disk_read_bytes_total", "fleetmon_agent_disk_write_bytes_total", "fleetmon_agent_open_files",
    "fleetmon_agent_threads",
]


def five_agents() -> Fleet:
    """full: every metric, over memory (warning), restarted once; nulls: cpu and fds unreadable;
    fresh: registered, never sampled; gone: over fds (error), then exited; hot: over cpu (error);
    removed: sampled, then taken out of the registry."""
    fleet = Fleet(NullRings(), lambda event: None)
    RA, TH = wire.RegisteredAgent, wire.Thresholds
    entries = [
        RA("full", "web", 101, None, TH(memory_threshold=1000, threshold_duration=60)),
        RA("nulls", "batch", 102, None, TH(cpu_threshold=10, threshold_duration=0)),
        RA("fresh", "default", 103, None, TH()),
        RA("gone", "default", 104, None, TH(open_files_threshold=1, threshold_duration=0)),
        RA("hot", "web", 106, None, TH(cpu_threshold=50, threshold_duration=0)),
        RA("removed", "default", 105, None, TH()),
    ]
    fleet.set_registry(entries, T0)
    fleet.on_sample(sample("full", 101, T0, cpu=3.25, rss=5000, vms=9000, rd=123, wr=456, fds=7, threads=3))
    fleet.on_sample(sample("full", 201, T0 + 1, cpu=3.25, rss=5000, vms=9000, rd=123, wr=456, fds=7, threads=3, cpu_seconds=7.75))  # new pid
    fleet.on_sample(sample("nulls", 102, T0, cpu=None, rss=2000, fds=None, denied=("open_files",)))
    fleet.on_sample(sample("gone", 104, T0, fds=5))
    fleet.on_gone(wire.Gone("gone", 104, T0 + 1, "no_process"))
    fleet.on_sample(sample("hot", 106, T0, cpu=99.5))
    fleet.on_sample(sample("removed", 105, T0))
    fleet.set_registry(entries[:-1], T0 + 2)
    return fleet


def scrape(collector) -> tuple[dict, dict]:
    """Render through prometheus_client and parse back: ({family: type}, {(sample name, labels): value})."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    types, values = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in values, f"duplicate series {key}"
            values[key] = s.value
    return types, values


def series(values: dict, name: str, **labels) -> float | None:
    return values.get((name, tuple(sorted(labels.items()))))


def agent_ids(values: dict) -> set[str]:
    return {dict(labels).get("agent_id") for _, labels in values} - {None}


def test_per_agent_names_types_labels_and_values():
    types, values = scrape(FleetCollector(five_agents()))
    for name, kind in AGENT_METRICS.items():
        assert types.get(name) == kind, name
    full = {"agent_id": "full", "agent_type": "web"}
    assert series(values, "fleetmon_agent_cpu_percent", **full) == 3.25
    assert series(values, "fleetmon_agent_cpu_seconds_total", **full) == 7.75
    assert series(values, "fleetmon_agent_memory_rss_bytes", **full) == 5000
    assert series(values, "fleetmon_agent_memory_vms_bytes", **full) == 9000
    assert series(values, "fleetmon_agent_disk_read_bytes_total", **full) == 123
    assert series(values, "fleetmon_agent_disk_write_bytes_total", **full) == 456
    assert series(values, "fleetmon_agent_open_files", **full) == 7
    assert series(values, "fleetmon_agent_threads", **full) == 3
    assert series(values, "fleetmon_agent_up", **full) == 1
    assert series(values, "fleetmon_agent_restarts_total", **full) == 1
    assert series(values, "fleetmon_agent_last_sample_timestamp_seconds", **full) == T0 + 1
    assert series(values, "fleetmon_agent_memory_threshold_bytes", **full) == 1000
    assert series(values, "fleetmon_agent_threshold_duration_seconds", **full) == 60
    assert series(values, "fleetmon_agent_cpu_threshold_percent", **full) is None  # off: absent


def test_alert_state_per_resource_with_a_threshold_or_an_open_episode():
    _, values = scrape(FleetCollector(five_agents()))
    states = {
        (dict(labels)["agent_id"], dict(labels)["resource"]): v
        for (name, labels), v in values.items() if name == "fleetmon_agent_alert_state"
    }
    assert states == {
        ("full", "memory"): 1,  # warning: over, duration 60s not reached
        ("nulls", "cpu"): 0,  # threshold on, value unreadable: state unchanged (ok)
        ("gone", "open_files"): 0,  # was error, closed when the agent exited
        ("hot", "cpu"): 2,  # error: duration 0
    }


def test_null_metrics_are_left_out_not_zero():
    _, values = scrape(FleetCollector(five_agents()))
    nulls = {"agent_id": "nulls", "agent_type": "batch"}
    assert series(values, "fleetmon_agent_memory_rss_bytes", **nulls) == 2000
    assert series(values, "fleetmon_agent_cpu_percent", **nulls) is None
    # a first sample has no cpu percent yet, but the counter: its series does not come and go
    assert series(values, "fleetmon_agent_cpu_seconds_total", **nulls) == 12.5
    assert series(values, "fleetmon_agent_open_files", **nulls) is None
    assert series(values, "fleetmon_agent_up", **nulls) == 1


def test_cpu_seconds_from_the_inline_path_and_absent_for_a_point_loaded_from_disk(tmp_path):
    fleet = Fleet(RingStore(tmp_path, 10), lambda event: None)
    fleet.set_registry([wire.RegisteredAgent(a, "default", 100 + i, None, wire.Thresholds()) for i, a in enumerate("ab")], T0)
    fleet.on_sample(sample("a", 100, T0))  # the first sample of each goes the slow way (identity learnt) ...
    fleet.on_sample(sample("b", 101, T0))
    taken = fleet.samples_total
    fleet.on_samples([sample("a", 100, T0 + 1, cpu_seconds=40.5)])  # ... the next one inline
    b = fleet.agents["b"]
    assert fleet.samples_total == taken + 1 and fleet.agents["a"].last.cpu_seconds == 40.5
    b.last = Point(T0 + 1, 2.0, 1, 2, 3, 4, 5, 6)  # as loaded from its metadata file after a restart
    _, values = scrape(FleetCollector(fleet))
    assert series(values, "fleetmon_agent_cpu_seconds_total", agent_id="a", agent_type="default") == 40.5
    assert series(values, "fleetmon_agent_cpu_seconds_total", agent_id="b", agent_type="default") is None
    assert series(values, "fleetmon_agent_cpu_percent", agent_id="b", agent_type="default") == 2.0


def test_agents_not_running_have_no_usage_and_unregistered_agents_nothing():
    _, values = scrape(FleetCollector(five_agents()))
    for agent in ("fresh", "gone"):
        labels = {"agent_id": agent, "agent_type": "default"}
        assert series(values, "fleetmon_agent_up", **labels) == 0
        assert series(values, "fleetmon_agent_restarts_total", **labels) == 0
        assert [name for name in USAGE if series(values, name, **labels) is not None] == []
    assert agent_ids(values) == {"full", "nulls", "fresh", "gone", "hot"}
    assert series(values, "fleetmon_agents", status="running") == 3
    assert series(values, "fleetmon_agents", status="exited") == 1
    assert series(values, "fleetmon_agents", status="not_running") == 1


def test_batch_stats_tick_duration_and_sample_errors():
    stats = BatchStats()
    d = daemon_info(workers=2)
    gone = [wire.Gone("x", 1, T0, "no_process"), wire.Gone("y", None, T0, "no_pidfile"), wire.Gone("z", 3, T0, "no_process")]
    denied = [sample("a", 1, denied=("open_files", "cpu")), sample("b", 2)]
    stats.observe_batch(wire.Batch(0, 1, T0, T0 + 0.2, denied, gone), d)
    stats.observe_batch(wire.Batch(-2, 1, T0 - 5, T0 + 20, []), d)  # quarantine worker: not part of the tick
    stats.observe_batch(wire.Batch(1, 1, T0 + 0.1, T0 + 0.4, []), d)  # tick 1 complete: 0.4s
    stats.observe_batch(wire.Batch(0, 2, T0 + 1, T0 + 1.1, []), d)  # tick 2: worker 1 skips it
    stats.observe_batch(wire.Batch(0, 3, T0 + 2, T0 + 2.05, []), d)
    stats.observe_batch(wire.Batch(1, 3, T0 + 2, T0 + 2.02, []), d)  # tick 3 complete: 0.05s
    stats.observe_batch(wire.Batch(1, 2, T0 + 1, T0 + 9, []), d)  # late batch of a finished tick: ignored
    writer = fake_writer(Fleet(NullRings(), lambda e: None), daemon=daemon_info(workers=2, stalled_pids=[7, 8], writer_restarts=1))
    types, values = scrape(FleetCollector(writer.fleet, stats, writer))
    assert types["fleetmon_tick_duration_seconds"] == "histogram"
    assert series(values, "fleetmon_tick_duration_seconds_count") == 2
    assert series(values, "fleetmon_tick_duration_seconds_sum") == pytest.approx(0.45)
    assert series(values, "fleetmon_tick_duration_seconds_bucket", le="0.025") == 0
    assert series(values, "fleetmon_tick_duration_seconds_bucket", le="0.05") == 1
    assert series(values, "fleetmon_tick_duration_seconds_bucket", le="0.5") == 2
    assert series(values, "fleetmon_tick_duration_seconds_bucket", le="+Inf") == 2
    assert series(values, "fleetmon_sample_errors_total", kind="gone", reason="no_process") == 2
    assert series(values, "fleetmon_sample_errors_total", kind="gone", reason="no_pidfile") == 1
    assert series(values, "fleetmon_sample_errors_total", kind="denied", reason="open_files") == 1
    assert series(values, "fleetmon_sample_errors_total", kind="denied", reason="cpu") == 1
    assert series(values, "fleetmon_workers") == 2
    assert series(values, "fleetmon_worker_restarts_total", worker="1") == 1
    assert series(values, "fleetmon_worker_agents", worker="0") == 3
    assert series(values, "fleetmon_writer_restarts_total") == 1
    assert series(values, "fleetmon_stalled_pids") == 2
    assert series(values, "fleetmon_samples_total") == 0
    assert types["fleetmon_samples"] == "counter"


def test_render_text_is_byte_for_byte_generate_latest():
    fleet = five_agents()
    # Label values with characters the text format escapes, and non-ASCII.
    fleet.agents["full"].type = 'we"b\\x\nnew-ü'
    stats = BatchStats()
    stats.observe_batch(wire.Batch(0, 1, T0, T0 + 0.3, [], [wire.Gone("x", 1, T0, "no_process")]), daemon_info(workers=1))
    writer = fake_writer(fleet, daemon=daemon_info())
    writer.flushed_at = writer.persisted_at = time.monotonic()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(fleet, stats, writer))
    # Families the fast path leaves to prometheus_client: _created samples, the info type.
    Counter("other_events", "Counter with _created.", ["kind"], registry=registry).labels("a").inc()
    Info("other_build", "Info metric.", registry=registry).info({"version": "1"})
    fast, ref = render_text(registry), generate_latest(registry)
    fast_lines = [line for line in fast.decode().splitlines() if "last_tick_persisted" not in line]
    ref_lines = [line for line in ref.decode().splitlines() if "last_tick_persisted" not in line]
    assert fast_lines == ref_lines


def test_render_text_at_5000_agents_matches_and_is_faster():
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(big_fleet(5000), BatchStats()))
    t0 = time.perf_counter()
    fast = render_text(registry)
    t1 = time.perf_counter()
    ref = generate_latest(registry)
    t2 = time.perf_counter()
    print(f"\n5000 agents: render_text {t1 - t0:.3f}s, generate_latest {t2 - t1:.3f}s, {len(fast)} bytes")
    assert fast == ref


def test_collect_tolerates_a_fleet_changing_under_it():
    fleet = big_fleet(500)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(fleet, BatchStats()))
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn():  # what the writer thread does to the model: agents come and go, alerts open and close
        i = 0
        victim = fleet.agents["agent-00001"]
        try:
            while not stop.is_set():
                i += 1
                a = Agent(f"churn-{i % 50}", "t")
                a.registered, a.status, a.last = True, "running", Point(T0 + i, 5.0, 1, 2, 3, 4, 5, 6)
                fleet.agents[a.id] = a
                victim.alerts["open_files"] = th.Alert("warning", T0)
                fleet.agents.pop(f"churn-{(i + 25) % 50}", None)
                victim.alerts.pop("open_files", None)
        except BaseException as exc:  # noqa: BLE001 (reported to the test thread)
            errors.append(exc)

    t = threading.Thread(target=churn, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 1.5
        renders = 0
        while time.monotonic() < deadline:
            families = list(text_string_to_metric_families(render_text(registry).decode()))
            up = next(f for f in families if f.name == "fleetmon_agent_up")
            assert len(up.samples) >= 500
            renders += 1
    finally:
        stop.set()
        t.join(timeout=10)
    assert not errors
    assert renders > 0


# --- /healthz decision --------------------------------------------------------------------------


def test_health_ok_late_starting_stopping():
    w = fake_writer(Fleet(NullRings(), lambda e: None), daemon=daemon_info(interval=2.0, tick=5))
    w.flushed_tick, w.flushed_at = 5, 1000.0
    status, body = health(w, started_at=900.0, now=1006.0)  # 6s < 3 x 2s + 1s
    assert status == 200 and body["status"] == "ok" and body["persisted_tick"] == 5
    status, body = health(w, started_at=900.0, now=1007.5)
    assert status == 503 and body["status"] == "late" and "7.5s" in body["reason"]
    w.write_failing, w.fleet.write_errors = True, 7  # ticks on time, but the state dir refuses writes
    status, body = health(w, started_at=900.0, now=1006.0)
    assert status == 503 and body["status"] == "write_failing" and "7 write errors" in body["reason"]
    w.write_failing = False
    w.flushed_tick, w.flushed_at = -1, 0.0
    assert health(w, started_at=1000.0, now=1003.0)[0] == 200  # just started: within the grace
    status, body = health(w, started_at=1000.0, now=1010.0)
    assert status == 503 and "no tick persisted since the writer started" in body["reason"]
    w.daemon = daemon_info(running=False)
    status, body = health(w, started_at=1000.0, now=1000.5)
    assert status == 503 and body["status"] == "stopping"
    w.daemon = None  # no word from the supervisor yet: the configured interval
    w.config.interval = 60.0
    assert health(w, started_at=1000.0, now=1100.0)[0] == 200


def test_an_agent_with_only_an_open_files_threshold_exports_it_and_its_duration():
    _, values = scrape(FleetCollector(five_agents()))
    gone = {"agent_id": "gone", "agent_type": "default"}
    assert series(values, "fleetmon_agent_open_files_threshold", **gone) == 1
    assert series(values, "fleetmon_agent_threshold_duration_seconds", **gone) == 0
    assert series(values, "fleetmon_agent_cpu_threshold_percent", **gone) is None
