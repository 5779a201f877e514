"""Read side of the state dir, for the CLI and the HTTP API. Works whether or not a daemon runs."""

from __future__ import annotations

import time

import msgspec

from fleetmon.store import fsutil
from fleetmon.store.aggregate import aggregate, window
from fleetmon.store.layout import StateDir
from fleetmon.store.records import AgentRecord, DaemonJSON, PointJSON, StatusSnapshot, point_json
from fleetmon.store.ring import CorruptRing, Point, read_points
from fleetmon.supervisor import registry as reg
from fleetmon.units import check_agent_id, parse_rfc3339

_status = msgspec.json.Decoder(StatusSnapshot)
_daemon = msgspec.json.Decoder(DaemonJSON)
_record = msgspec.json.Decoder(AgentRecord)


class UnknownAgent(LookupError):
    """Neither registered nor with any history: exit code 2 / HTTP 404."""


class HistoryJSON(msgspec.Struct):
    agent_id: str
    points: list[PointJSON]


class StatusJSON(msgspec.Struct):
    daemon: DaemonJSON | None
    agents: list[AgentRecord]


class EventJSON(msgspec.Struct):
    timestamp: str
    agent_id: str
    resource: str
    state: str
    value: float | None
    threshold: float
    since: str
    reason: str | None = None


class AlertsJSON(msgspec.Struct):
    events: list[EventJSON]


_event = msgspec.json.Decoder(EventJSON)


def read_daemon(state: StateDir) -> DaemonJSON | None:
    try:
        return _daemon.decode(fsutil.read_private(state.daemon))
    except (FileNotFoundError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def status(state: StateDir) -> StatusJSON:
    """Every registered agent, with what the daemon last recorded of it."""
    entries, _ = reg.read_all(state.registry)
    try:
        snap = _status.decode(fsutil.read_private(state.status, 1 << 30))
        known = {r.id: r for r in snap.agents}
    except (FileNotFoundError, msgspec.DecodeError, msgspec.ValidationError):
        known = {}
    agents = []
    for agent_id in sorted(entries):
        e = entries[agent_id]
        rec = known.get(agent_id) or _agent_file(state, agent_id)
        if rec is None:
            rec = AgentRecord(agent_id, e.type, e.pid, "not_running", 0, None, None, [])
        agents.append(rec)
    return StatusJSON(read_daemon(state), agents)


def _agent_file(state: StateDir, agent_id: str) -> AgentRecord | None:
    try:
        return _record.decode(fsutil.read_private(state.agent_file(agent_id), 1 << 20))
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def is_known(state: StateDir, agent_id: str) -> bool:
    """Registered, or has a history file (created with its first point, or when a writer checks a
    batch sent again against it). The metadata file of an agent removed before it was ever
    sampled does not count: such an id is unknown."""
    check_agent_id(agent_id)
    return state.registry_file(agent_id).is_file() or state.ring_file(agent_id).is_file()


def history_points(state: StateDir, agent_id: str, since: float, every: float | None = None, now: float | None = None) -> list[Point]:
    """The agent's points with ``timestamp >= now - since``, oldest first, optionally in buckets."""
    if not is_known(state, agent_id):
        raise UnknownAgent(agent_id)
    try:
        points = read_points(state.ring_file(agent_id))
    except (FileNotFoundError, CorruptRing):
        points = []
    points = window(points, since, time.time() if now is None else now)
    return aggregate(points, every) if every else points


def history(state: StateDir, agent_id: str, since: float, every: float | None = None, now: float | None = None) -> HistoryJSON:
    return HistoryJSON(agent_id, [point_json(p) for p in history_points(state, agent_id, since, every, now)])


def _alert_lines(state: StateDir) -> list[bytes]:
    """The lines of alerts.jsonl.1 then of alerts.jsonl. Read again if the writer moved alerts.jsonl
    to alerts.jsonl.1 meanwhile (either inode changed): else lines would be read twice or not at all."""
    files = (state.alerts_previous, state.alerts)
    for _ in range(5):
        before = [_inode(f) for f in files]
        data = b"".join(_read_or_empty(f) for f in files)
        if [_inode(f) for f in files] == before:
            break
    return data.splitlines()


def _read_or_empty(path) -> bytes:
    try:
        data = fsutil.read_private(path, 1 << 31)
    except FileNotFoundError:
        return b""
    return data if not data or data.endswith(b"\n") else data + b"\n"  # (a torn last line stays apart)


def _inode(path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def alerts(state: StateDir, since: float, now: float | None = None) -> AlertsJSON:
    """Alert state changes with ``timestamp >= now - since``, oldest first."""
    start = (time.time() if now is None else now) - since
    events = []
    for line in _alert_lines(state):
        if not line.strip():
            continue
        try:
            ev = _event.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue  # a torn last line after a crash
        if parse_rfc3339(ev.timestamp) >= start:
            events.append(ev)
    return AlertsJSON(events)
