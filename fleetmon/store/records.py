"""JSON shapes on disk and on the command line (contract: field names), shared by the writer that
produces them and the queries that read them."""

from __future__ import annotations

import msgspec

from fleetmon.store.ring import Point
from fleetmon.units import rfc3339
from fleetmon.wire import BootClock

# PointJSON, AlertBrief and AgentRecord are never tracked by the garbage collector (gc=False: they
# hold no reference cycles). The writer builds one of each per agent for every status.json. An
# AgentRecord holds a list, so msgspec tracked it (the other two hold only scalars and were left
# untracked anyway): at 10,000 agents the records alive at once during a status.json set off ~28
# collections a tick and a full one every ~5 s (28 ms), 12% of the writer's CPU at a 1 s interval.


class PointJSON(msgspec.Struct, gc=False):
    timestamp: str
    cpu: float | None
    memory_rss: int | None
    memory_vms: int | None
    disk_read_bytes: int | float | None
    disk_write_bytes: int | float | None
    open_files: int | float | None
    num_threads: int | float | None


class AlertBrief(msgspec.Struct, gc=False):
    resource: str
    state: str
    since: str


AGENT_STATUSES = ("running", "stalled", "exited", "not_running")  # an agent's ``status`` (contract)


class AgentRecord(msgspec.Struct, gc=False):
    """One agent's metadata: ``agents/<id>.json`` and an entry of ``status --json``."""

    id: str
    type: str
    pid: int | None
    status: str
    restart_count: int
    start_time: str | None
    last_sample: PointJSON | None
    alerts: list[AlertBrief]
    updated: str | None = None


class StatusSnapshot(msgspec.Struct):
    updated: str
    agents: list[AgentRecord]


class WorkerJSON(msgspec.Struct):
    index: int
    pid: int
    agents: int
    restarts: int = 0


class DaemonJSON(msgspec.Struct):
    supervisor_pid: int
    writer_pid: int
    workers: list[WorkerJSON]
    tick: int
    updated: str
    running: bool
    interval: float | None = None
    persisted_tick: int | None = None
    writer_restarts: int = 0
    stalled_pids: list[int] = []
    samples_total: int = 0
    lost_batches: int = 0
    write_errors: int = 0
    boot: BootClock | None = None  # what process start times count from in this boot (for the next daemon)


class AlertState(msgspec.Struct):
    """One open episode in ``thresholds.json``."""

    state: str
    since: float
    logged: float = 0.0
    threshold: float = 0.0  # of its last change (files before 0.1 stop 17: 0, not known)


class LogPosition(msgspec.Struct, forbid_unknown_fields=True):
    """Where alerts.jsonl ended (its inode and size) when thresholds.json was written."""

    inode: int
    size: int


class AlertStateFile(msgspec.Struct, forbid_unknown_fields=True):
    """``thresholds.json``: every open episode by agent and resource, and how far alerts.jsonl had
    been written when they were saved (its changes past that are not in ``open``). Files of
    fleetmon before 0.1 stop 14 are ``open`` alone, without the position."""

    open: dict[str, dict[str, AlertState]]
    alerts_log: LogPosition | None = None


def point_json(p: Point | tuple) -> PointJSON:
    ts, cpu, rss, vms, rd, wr, fds, thr = p
    return PointJSON(rfc3339(ts), cpu, rss, vms, rd, wr, fds, thr)


def point_from_json(p: PointJSON) -> Point:
    from fleetmon.units import parse_rfc3339

    return Point(
        parse_rfc3339(p.timestamp),
        p.cpu,
        p.memory_rss,
        p.memory_vms,
        p.disk_read_bytes,
        p.disk_write_bytes,
        p.open_files,
        p.num_threads,
    )
