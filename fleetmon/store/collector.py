"""The Prometheus view of the writer's in-memory state: one custom collector that walks the fleet when
scraped (no Gauge objects updated per sample), and the few counters the writer feeds per batch.

Threads: the writer thread mutates the fleet and feeds ``BatchStats``; the HTTP thread only reads.
No lock is taken: each read is of one attribute or of a snapshot (``list(d.values())``), which the GIL
makes consistent, and a dict that changes size while it is copied is copied again.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from fleetmon import wire
from fleetmon.store.fleet import Agent, Fleet
from fleetmon.store.records import AGENT_STATUSES

ALERT_LEVEL = {"ok": 0, "warning": 1, "error": 2}
TICK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
UP_STATUSES = ("running", "stalled")  # the agent's process exists (a stalled one is read apart)
AGENT_LABELS = ["agent_id", "agent_type"]


def snapshot(items_of):
    """``list(items_of())``, again if the container changed size while being copied."""
    for _ in range(10):
        try:
            return list(items_of())
        except RuntimeError:  # "dictionary changed size during iteration"
            continue
    return []


class BatchStats:
    """What the writer learns from each batch beyond the fleet model: tick durations (first sample
    started to last sample finished across all workers of one tick) and sample errors by kind.
    ``observe_batch`` runs in the writer thread and costs one pass over the batch."""

    def __init__(self, buckets: tuple[float, ...] = TICK_BUCKETS):
        self.buckets = buckets
        self.bucket_counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.duration_sum = 0.0
        self.errors: dict[tuple[str, str], int] = {}  # (kind, reason) -> count
        self._ticks: dict[int, list] = {}  # tick -> [first started, last finished, workers seen]
        self._done = -1
        self.batches = 0  # batches seen: what /metrics shows changes only when this does

    def observe_batch(self, batch: wire.Batch, daemon: wire.DaemonInfo | None) -> None:
        self.batches += 1
        errors = self.errors
        for g in batch.gone:
            key = ("gone", g.reason)
            errors[key] = errors.get(key, 0) + 1
        for s in batch.samples:
            if s.denied:
                for metric in s.denied:
                    key = ("denied", metric)
                    errors[key] = errors.get(key, 0) + 1
        if daemon is None or batch.early or batch.tick <= self._done:
            return
        indexes = {w.index for w in daemon.workers}
        if batch.worker not in indexes:
            return  # the quarantine worker samples stalled pids apart, on its own schedule
        t = self._ticks.get(batch.tick)
        if t is None:
            t = self._ticks[batch.tick] = [batch.started, batch.finished, set()]
        else:
            t[0] = min(t[0], batch.started)
            t[1] = max(t[1], batch.finished)
        t[2].add(batch.worker)
        if indexes <= t[2]:
            self.observe_tick(max(0.0, t[1] - t[0]))
            self._done = batch.tick
            for tick in [k for k in self._ticks if k <= batch.tick]:  # earlier ticks will not complete
                del self._ticks[tick]

    def observe_tick(self, seconds: float) -> None:
        i = 0
        for bound in self.buckets:
            if seconds <= bound:
                break
            i += 1
        self.bucket_counts[i] += 1
        self.duration_sum += seconds


class FleetCollector:
    """Collects per-agent gauges and counters from ``fleet`` and self-metrics from ``writer`` (any
    object with the writer's ``daemon``, ``lost_batches``, ``flushed_at`` attributes; optional)."""

    def __init__(self, fleet: Fleet, stats: BatchStats | None = None, writer=None):
        self.fleet = fleet
        self.stats = stats
        self.writer = writer

    def describe(self) -> list[Metric]:
        return []  # without describe() the registry would collect (walk the fleet) to learn the names

    def collect(self) -> Iterator[Metric]:
        yield from self.collect_agents()
        yield from self.collect_self()

    def collect_agents(self) -> Iterator[Metric]:
        L = AGENT_LABELS
        cpu = GaugeMetricFamily("fleetmon_agent_cpu_percent", "CPU use in percent of one CPU since the previous sample (may exceed 100).", labels=L)
        cpu_s = CounterMetricFamily(
            "fleetmon_agent_cpu_seconds", "CPU time (user + system) the agent's process has used since it started.", labels=L,
        )
        rss = GaugeMetricFamily("fleetmon_agent_memory_rss_bytes", "Resident set size.", labels=L)
        vms = GaugeMetricFamily("fleetmon_agent_memory_vms_bytes", "Virtual memory size.", labels=L)
        rd = CounterMetricFamily("fleetmon_agent_disk_read_bytes", "Bytes read from storage by the agent's process (/proc/PID/io).", labels=L)
        wr = CounterMetricFamily("fleetmon_agent_disk_write_bytes", "Bytes written to storage by the agent's process (/proc/PID/io).", labels=L)
        fds = GaugeMetricFamily("fleetmon_agent_open_files", "Open file descriptors.", labels=L)
        thr = GaugeMetricFamily("fleetmon_agent_threads", "Threads.", labels=L)
        seen = GaugeMetricFamily("fleetmon_agent_last_sample_timestamp_seconds", "When the exported sample was taken (Unix time).", labels=L)
        up = GaugeMetricFamily("fleetmon_agent_up", "1 while the agent's process runs (status running or stalled), else 0.", labels=L)
        restarts = CounterMetricFamily("fleetmon_agent_restarts", "Times the registry pointed the agent at a new process.", labels=L)
        alert = GaugeMetricFamily(
            "fleetmon_agent_alert_state", "Threshold state per resource with a threshold or an open episode: 0 ok, 1 warning, 2 error.",
            labels=[*L, "resource"],
        )
        cpu_t = GaugeMetricFamily("fleetmon_agent_cpu_threshold_percent", "The agent's cpu threshold (absent when off).", labels=L)
        mem_t = GaugeMetricFamily("fleetmon_agent_memory_threshold_bytes", "The agent's RSS threshold (absent when off).", labels=L)
        fds_t = GaugeMetricFamily("fleetmon_agent_open_files_threshold", "The agent's open files threshold (absent when off).", labels=L)
        dur_t = GaugeMetricFamily(
            "fleetmon_agent_threshold_duration_seconds", "How long over a threshold before error (absent when no threshold is on).", labels=L,
        )
        restarts_name, rd_name, wr_name = restarts.name + "_total", rd.name + "_total", wr.name + "_total"
        cpu_s_name = cpu_s.name + "_total"
        level = ALERT_LEVEL
        for a in snapshot(self.fleet.agents.values):
            a: Agent
            if not a.registered and not a.kept:  # (kept: its registry file there, not parsing)
                continue
            # One labels dict per agent, shared by its samples (Sample() directly: add_metric would
            # build a dict per sample), so that render_text escapes it once.
            labels = {"agent_id": a.id, "agent_type": a.type}
            is_up = a.status in UP_STATUSES
            up.samples.append(Sample(up.name, labels, 1.0 if is_up else 0.0))
            restarts.samples.append(Sample(restarts_name, labels, a.restart_count))
            limits = a.limits
            alerts = dict(snapshot(a.alerts.items))
            for resource in ("cpu", "memory", "open_files"):
                open_ = alerts.get(resource)
                if open_ is not None or limits.for_resource(resource):
                    value = level.get(open_.state, 0) if open_ is not None else 0
                    alert.samples.append(Sample(alert.name, {**labels, "resource": resource}, value))
            if limits.any:
                if limits.cpu:
                    cpu_t.samples.append(Sample(cpu_t.name, labels, limits.cpu))
                if limits.memory:
                    mem_t.samples.append(Sample(mem_t.name, labels, limits.memory))
                if limits.open_files:
                    fds_t.samples.append(Sample(fds_t.name, labels, limits.open_files))
                dur_t.samples.append(Sample(dur_t.name, labels, limits.duration))
            p = a.last
            if p is None or not is_up:
                continue  # an agent that is not running has no current usage
            seen.samples.append(Sample(seen.name, labels, p.timestamp))
            for family, name, value in (
                (cpu, cpu.name, p.cpu),
                (cpu_s, cpu_s_name, getattr(p, "cpu_seconds", None)),  # (a Point loaded from disk has none)
                (rss, rss.name, p.memory_rss),
                (vms, vms.name, p.memory_vms),
                (rd, rd_name, p.disk_read_bytes),
                (wr, wr_name, p.disk_write_bytes),
                (fds, fds.name, p.open_files),
                (thr, thr.name, p.num_threads),
            ):
                if value is not None:  # null: left out, never a fake 0
                    family.samples.append(Sample(name, labels, value))
        yield from (cpu, cpu_s, rss, vms, rd, wr, fds, thr, seen, up, restarts, alert, cpu_t, mem_t, fds_t, dur_t)

    def collect_self(self) -> Iterator[Metric]:
        fleet, w = self.fleet, self.writer
        by_status = dict.fromkeys(AGENT_STATUSES, 0)
        for a in snapshot(fleet.agents.values):
            if a.registered:
                by_status[a.status] = by_status.get(a.status, 0) + 1
        agents = GaugeMetricFamily("fleetmon_agents", "Registered agents by status.", labels=["status"])
        for status, n in by_status.items():
            agents.add_metric([status], n)
        yield agents
        yield CounterMetricFamily("fleetmon_samples", "Samples recorded by this writer process.", value=fleet.samples_total)
        yield CounterMetricFamily("fleetmon_write_errors", "Failed writes under the state dir.", value=fleet.write_errors)
        stats = self.stats
        if stats is not None:
            errors = CounterMetricFamily(
                "fleetmon_sample_errors", "Samples not taken (kind gone: reason no_process, no_pidfile, reused) or metrics "
                "not readable (kind denied: reason is the metric).", labels=["kind", "reason"],
            )
            for (kind, reason), n in sorted(snapshot(stats.errors.items)):
                errors.add_metric([kind, reason], n)
            yield errors
            counts = list(stats.bucket_counts)
            buckets, total = [], 0
            for bound, n in zip((*map(str, stats.buckets), "+Inf"), counts, strict=True):
                total += n
                buckets.append((bound, total))
            yield HistogramMetricFamily(
                "fleetmon_tick_duration_seconds", "From the first sample started to the last sample finished of one tick, all workers.",
                buckets=buckets, sum_value=stats.duration_sum,
            )
        if w is None:
            return
        yield CounterMetricFamily("fleetmon_lost_batches", "Batches workers dropped while the writer was unreachable.", value=getattr(w, "lost_batches", 0))
        # (not flushed_at: that advances while writing to the state dir fails, which is no tick persisted)
        persisted_at = getattr(w, "persisted_at", None)
        if persisted_at:
            yield GaugeMetricFamily(
                "fleetmon_last_tick_persisted_timestamp_seconds", "When the writer last persisted a complete tick (Unix time).",
                value=time.time() - (time.monotonic() - persisted_at),
            )
        d: wire.DaemonInfo | None = getattr(w, "daemon", None)
        if d is None:
            return
        yield GaugeMetricFamily("fleetmon_tick", "Number of the last tick the supervisor sent.", value=d.tick)
        yield GaugeMetricFamily("fleetmon_interval_seconds", "Sampling interval.", value=d.interval)
        yield GaugeMetricFamily("fleetmon_workers", "Sampling worker processes.", value=len(d.workers))
        worker_agents = GaugeMetricFamily("fleetmon_worker_agents", "Agents in each worker's shard.", labels=["worker"])
        worker_restarts = CounterMetricFamily("fleetmon_worker_restarts", "Times each worker slot was restarted.", labels=["worker"])
        for info in d.workers:
            worker_agents.add_metric([str(info.index)], info.agents)
            worker_restarts.add_metric([str(info.index)], info.restarts)
        yield worker_agents
        yield worker_restarts
        yield CounterMetricFamily("fleetmon_writer_restarts", "Times the writer process was restarted.", value=d.writer_restarts)
        yield GaugeMetricFamily("fleetmon_stalled_pids", "Agent pids quarantined because reading them stalled a worker.", value=len(d.stalled_pids))


# --- exposition -------------------------------------------------------------------------------------

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_TYPES = {"counter": "counter", "gauge": "gauge", "histogram": "histogram", "summary": "summary", "unknown": "untyped"}


class _Slow(Exception):
    """This family needs prometheus_client's general encoder."""


class _One:
    def __init__(self, metric: Metric):
        self.metric = metric

    def collect(self) -> list[Metric]:
        return [self.metric]


def render_text(registry) -> bytes:
    """The Prometheus text format (0.0.4), byte for byte what ``prometheus_client.generate_latest``
    writes, in a fraction of its time at thousands of agents: a sample's labels are rendered once
    per labels dict (the collector shares one dict among an agent's samples), not once per sample.
    A family this fast path does not cover (non-legacy names, OpenMetrics-only samples, info or
    stateset types) is rendered by ``generate_latest`` itself."""
    out: list[str] = []
    cache: dict[int, tuple[dict, str]] = {}  # id(labels) -> (labels kept alive, "{...}")
    for metric in registry.collect():
        try:
            out.extend(_render_family(metric, cache))
        except _Slow:
            out.append(generate_latest(_One(metric)).decode())
    return "".join(out).encode()


def _render_family(metric: Metric, cache: dict) -> list[str]:
    mtype = _TYPES.get(metric.type)
    if mtype is None or not _METRIC_NAME.match(metric.name):
        raise _Slow
    mname = metric.name + "_total" if mtype == "counter" else metric.name
    doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
    lines = [f"# HELP {mname} {doc}\n# TYPE {mname} {mtype}\n"]
    special = {metric.name + "_created", metric.name + "_gsum", metric.name + "_gcount"}
    checked: set[str] = set()
    fmt = floatToGoString
    for s in metric.samples:
        name = s.name
        if name not in checked:
            if name in special or not _METRIC_NAME.match(name):
                raise _Slow
            checked.add(name)
        if s.timestamp is not None:
            raise _Slow
        labels = s.labels
        if labels:
            hit = cache.get(id(labels))
            if hit is None or hit[0] is not labels:
                hit = cache[id(labels)] = (labels, _label_text(labels))
            lines.append(f"{name}{hit[1]} {fmt(s.value)}\n")
        else:
            lines.append(f"{name} {fmt(s.value)}\n")
    return lines


def _label_text(labels: dict) -> str:
    parts = []
    for k, v in sorted(labels.items()):
        if not _LABEL_NAME.match(k) or k.startswith("__"):
            raise _Slow
        v = v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
        parts.append(f'{k}="{v}"')
    return "{" + ",".join(parts) + "}"
