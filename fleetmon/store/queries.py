"""Read side of the state dir, for the CLI and the HTTP API. Works whether or not a daemon runs."""

from __future__ import annotations

import os
import time

import msgspec

from fleetmon.store import fsutil
from fleetmon.store.aggregate import aggregate, window
from fleetmon.store.layout import StateDir
from fleetmon.store.records import AgentRecord, DaemonJSON, PointJSON, StatusSnapshot, point_json
from fleetmon.store.ring import CorruptRing, Point, read_points
from fleetmon.supervisor import registry as reg
from fleetmon.units import check_agent_id, parse_rfc3339, rfc3339

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
decode_event = _event.decode


def read_daemon(state: StateDir) -> DaemonJSON | None:
    try:
        return _daemon.decode(fsutil.read_private(state.daemon))
    except (FileNotFoundError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def _snapshot(state: StateDir) -> StatusSnapshot:
    """status.json as the writer last wrote it. Raises OSError, msgspec.DecodeError/ValidationError."""
    return _status.decode(fsutil.read_private(state.status, 1 << 30))


def last_processes(state: StateDir) -> dict[str, tuple[int, float]]:
    """Agent id -> (pid, start time) of the process each agent ran as when the writer last wrote
    status.json, for those running or stalled then. Empty when there is none or it cannot be read:
    a hint, which the reader checks against the process's own start time before trusting it."""
    try:
        snap = _snapshot(state)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return {}
    out = {}
    for r in snap.agents:
        if r.pid is not None and r.start_time is not None and r.status in ("running", "stalled"):
            try:
                out[r.id] = (r.pid, parse_rfc3339(r.start_time))
            except (ValueError, OverflowError):
                continue
    return out


def status(state: StateDir) -> StatusJSON:
    """Every registered agent, with what the daemon last recorded of it."""
    return status_as_of(state)[0]


def status_as_of(state: StateDir) -> tuple[StatusJSON, float | None]:
    """``status``, and when the daemon last wrote status.json (None: it has not)."""
    entries, invalid = reg.read_all(state.registry)
    updated = None
    try:
        snap = _snapshot(state)
        known = {r.id: r for r in snap.agents}
        updated = parse_rfc3339(snap.updated)
    except (FileNotFoundError, msgspec.DecodeError, msgspec.ValidationError, ValueError):
        known = {}
    # A registry file that does not parse now, of an agent the daemon still watches (it keeps the
    # file's last valid entry, see registry.RegistryScanner): shown as status.json has it, as
    # /metrics shows it, not left out.
    kept = {name.removesuffix(".json") for name in invalid} & known.keys()
    agents = []
    for agent_id in sorted(entries.keys() | kept):
        e = entries.get(agent_id)
        rec = known.get(agent_id) or _agent_file(state, agent_id)
        if rec is None:
            rec = AgentRecord(agent_id, e.type, e.pid, "not_running", 0, None, None, [])
        agents.append(rec)
    return StatusJSON(read_daemon(state), agents), updated


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


ALERTS_SLACK = 3600.0  # seconds: how far out of order a change may be appended (batches sent again)
STOP_RUN = 1000  # ... and how many changes in a row older than the window and that slack end the search
_TS_PREFIX = b'{"timestamp":"'  # every line starts so; the timestamp is fixed-width RFC 3339
_TS = slice(len(_TS_PREFIX), len(_TS_PREFIX) + len("2026-01-01T00:00:00.000000Z"))
_CHUNK = 1 << 20


def _timestamp_of(ev: EventJSON) -> str:
    return ev.timestamp


def alerts(state: StateDir, since: float, now: float | None = None) -> AlertsJSON:
    """Alert state changes with ``timestamp >= now - since``, oldest first."""
    return alerts_window(state, since, now)[0]


def alerts_window(
    state: StateDir, since: float, now: float | None = None, agents=None, states=None, limit: int = 0,
) -> tuple[AlertsJSON, str | None]:
    """Alert state changes with ``timestamp >= now - since``, of ``agents`` and to ``states`` if
    given, at most the newest ``limit`` (0: all), oldest first. Also, when alerts.jsonl.1 was read
    to its start and its first change is inside the window (changes before it may have been dropped
    when alerts.jsonl reached alerts_max_size), that change's timestamp; else None.

    alerts.jsonl, then alerts.jsonl.1, are read from their end, a chunk at a time, back to where
    STOP_RUN changes in a row are older than the window less ALERTS_SLACK (changes are appended in
    about the order they happen; batches a worker held while the writer was down come later), or to
    ``limit`` changes: the cost is the window's, not the files' (64 MiB each by default), and what
    is held is the answer. Read again if the writer moved alerts.jsonl meanwhile (either inode
    changed): else lines would be read twice or not at all."""
    start = max(0.0, (time.time() if now is None else now) - since)
    cutoff = start - ALERTS_SLACK
    stop_before = (rfc3339(cutoff) or "").encode() if cutoff > 0 else b""  # (b"": never)
    files = (state.alerts, state.alerts_previous)
    for _ in range(5):
        before = [fsutil.inode(f) for f in files]
        events: list[EventJSON] = []  # newest first
        ended = False  # by the stop rule or the limit, before the start of what is kept
        first_kept = None  # alerts.jsonl.1's first line (False: older than the window and the slack)
        for f in files:
            for line in _lines_back(f, stop_before):
                if line is None:
                    ended = True
                    break
                if f is files[1]:
                    first_kept = line
                if line is False:  # older than the window and the slack
                    continue
                try:
                    ev = _event.decode(line)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue  # a torn last line after a crash
                if (agents and ev.agent_id not in agents) or (states and ev.state not in states):
                    continue
                try:
                    at = parse_rfc3339(ev.timestamp)
                except (ValueError, OverflowError):
                    continue  # a line of another tool, or edited by hand: skipped as a torn one is
                if at >= start:
                    events.append(ev)
                    if limit and len(events) >= limit:
                        ended = True
                        break
            if ended:
                break
        if [fsutil.inode(f) for f in files] == before:
            break
    events.reverse()
    # Oldest first by time: the file is in the order the writer applied batches, and two workers'
    # batches of one tick interleave (the same timestamp format throughout: sorted as text; stable,
    # so changes of one sample stay in their order). ``limit`` took the last lines logged.
    events.sort(key=_timestamp_of)
    oldest = None
    if not ended and first_kept:  # alerts.jsonl.1 read to its start, and it starts inside the window
        first = first_kept[_TS].decode(errors="replace")
        if first > (rfc3339(start) or ""):
            oldest = first
    return AlertsJSON(events), oldest


def _lines_back(path, stop_before: bytes):
    """The lines of ``path`` from its end back, newest first, each line with a timestamp before
    ``stop_before`` given as False; then None once STOP_RUN of those came in a row. Opened with
    ``fsutil.open_private``: no symlink followed, nothing but a regular file read."""
    try:
        fd, st = fsutil.open_private(path)
    except FileNotFoundError:
        return
    try:
        pos, tail, old = st.st_size, b"", 0
        while pos > 0:
            n = min(_CHUNK, pos)
            pos -= n
            data = os.pread(fd, n, pos) + tail
            if pos > 0:  # the bytes up to the first newline end a line that starts before pos
                cut = data.find(b"\n") + 1
                if not cut:
                    tail = data
                    continue
                tail, data = data[:cut], data[cut:]
            for line in reversed(data.split(b"\n")):
                if not line.strip():
                    continue
                if line.startswith(_TS_PREFIX) and line[_TS] < stop_before:
                    old += 1
                    if old >= STOP_RUN:
                        yield None
                        return
                    yield False
                    continue
                old = 0
                yield line
    finally:
        os.close(fd)

