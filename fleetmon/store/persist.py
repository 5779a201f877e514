"""The writer's files besides history: alerts.jsonl, thresholds.json, status.json, daemon.json and
agents/<id>.json. Loading them back at start (moving a corrupt one aside) and writing them after
each tick."""

from __future__ import annotations

import os
import stat
import time

import msgspec
from loguru import logger

from fleetmon.store import fsutil
from fleetmon.store import thresholds as th
from fleetmon.store.fleet import Agent, Fleet
from fleetmon.store.layout import StateDir
from fleetmon.store.records import (
    AGENT_STATUSES,
    AgentRecord,
    AlertState,
    AlertStateFile,
    DaemonJSON,
    LogPosition,
    StatusSnapshot,
    point_from_json,
)
from fleetmon.units import format_size, parse_rfc3339, rfc3339

# Seconds between rewrites of an unchanged agent's metadata file, to refresh its last_sample (one file
# create per agent: at the default 60 s interval, refreshing every minute was ~80% of the writer's CPU).
# status.json (and so `fleetmon status` and /api/status) has the newest sample, or at intervals under a
# second one at most a second old; /metrics always has the newest.
METADATA_REFRESH = 300.0
METADATA_PER_FLUSH = 2000  # bound on metadata files written after one tick

_json = msgspec.json.Encoder()
_status_decoder = msgspec.json.Decoder(StatusSnapshot)
_record_decoder = msgspec.json.Decoder(AgentRecord)
_alert_state_decoder = msgspec.json.Decoder(AlertStateFile)
_old_alert_state_decoder = msgspec.json.Decoder(dict[str, dict[str, AlertState]])  # (no position)


class AlertLog:
    """alerts.jsonl, appended with O_APPEND; lines that fail to be written are kept and retried.

    ``max_size`` bytes (0: no bound): once the file reaches it, it is renamed to ``alerts.jsonl.1``
    (replacing the one before) and a new one is started, so the two hold at most about twice that.
    Unbounded, a fleet whose agents flap around a limit grows it by hundreds of MB a day, and every
    ``fleetmon alerts`` reads it whole."""

    MAX_PENDING = 100_000

    def __init__(self, path, rotated=None, max_size: int = 0):
        self.path = path
        self.rotated = rotated  # (a Path; needed with max_size)
        self.max_size = max_size
        self.pending: list[bytes] = []
        self.unsynced = False
        self.fd = -1
        self.size = 0  # of the open file
        self.rotate_failed = -1e9  # monotonic time a rotation last failed (logged at most every 10 min)
        self.dropped = 0  # changes dropped unwritten (more than MAX_PENDING waiting): logged, not silent

    def add(self, event: th.Event) -> None:
        self.pending.append(_json.encode(event) + b"\n")
        if len(self.pending) > self.MAX_PENDING:
            del self.pending[: len(self.pending) - self.MAX_PENDING]
            self.dropped += 1
            if self.dropped == 1 or self.dropped % self.MAX_PENDING == 0:
                logger.error(
                    "{} cannot be written and {} alert changes wait: the oldest are dropped from it ({} so far); "
                    "this log has each of them, and thresholds.json the state they led to",
                    self.path.name, self.MAX_PENDING, self.dropped,
                )

    def write(self) -> None:
        if not self.pending:
            return
        if self.fd >= 0 and self._moved():
            self._let_go()
        if self.fd < 0:
            self._open()
        data = b"".join(self.pending)
        n = os.write(self.fd, data)
        self.size += n
        if n < len(data):
            # Keep whole lines only: a short append at a full disk is cut back to the last newline,
            # and the lines that made it are not written again.
            written = data[:n]
            cut = written.rfind(b"\n") + 1
            if cut < n:
                os.ftruncate(self.fd, os.fstat(self.fd).st_size - (n - cut))
                self.size -= n - cut
            del self.pending[: written.count(b"\n")]
            self.unsynced = True
            raise OSError(28, "No space left on device (short write)")
        self.pending.clear()
        self.unsynced = True
        if self.max_size and self.size >= self.max_size:
            try:
                self.rotate()
            except OSError as exc:  # the lines are written: not a failed write; tried again at the next
                now = time.monotonic()
                if now - self.rotate_failed >= 600.0:
                    self.rotate_failed = now
                    logger.error("cannot move {} to {} ({}): it grows on past alerts_max_size until that works",
                                 self.path.name, self.rotated.name, exc.strerror or exc)

    def _open(self) -> None:
        """Open the file to append to. One that ends in a line cut short (a writer killed in the
        middle of an append, a crash before the page was on disk) gets the line ended first: the
        next line would be glued onto it, and both skipped by every reader as one bad line."""
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                size += os.write(fd, b"\n")
        except OSError:
            os.close(fd)
            raise
        self.fd, self.size = fd, size

    def rotate(self) -> None:
        """alerts.jsonl -> alerts.jsonl.1, its lines on disk first; the next write starts a new file.
        If the name no longer holds the open file (moved by something else, logrotate say), the file
        is only closed: renaming whatever has the name now could drop the file written to."""
        if self._moved():
            self._let_go()
            return
        os.fsync(self.fd)
        self.unsynced = False
        size = self.size
        os.replace(self.path, self.rotated)
        self.size = 0
        os.close(self.fd)
        self.fd = -1
        try:
            fsutil.fsync_dir(self.path.parent)
        except OSError:
            pass  # the rename is done; only its durability across a crash is left to the kernel
        logger.info("{} reached {}: moved to {} (the one before is dropped), a new one started", self.path.name,
                    format_size(size), self.rotated.name)

    def _moved(self) -> bool:
        """The name no longer holds the open file: something else moved or deleted it (logrotate,
        an operator freeing disk). Appending on would hide the changes from every reader."""
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return True
        ours = os.fstat(self.fd)
        return (st.st_dev, st.st_ino) != (ours.st_dev, ours.st_ino)

    def _let_go(self) -> None:
        """Close the file that was moved away (its lines on disk first); the next write opens the name."""
        try:
            os.fsync(self.fd)
        except OSError as exc:  # its lines are written, but may not be on disk: say so, and go on
            logger.error("cannot sync the moved {} before letting it go: {}", self.path.name, exc.strerror or exc)
        os.close(self.fd)
        self.fd, self.size, self.unsynced = -1, 0, False
        logger.warning("{} was moved or deleted by something else: a new one is started", self.path.name)

    def position(self) -> LogPosition:
        """Where the file ends now (lines still pending are not in it). Inode -1: there is none yet,
        so whatever is at the name later is all new."""
        try:
            st = os.fstat(self.fd) if self.fd >= 0 else os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return LogPosition(-1, 0)
        return LogPosition(st.st_ino, st.st_size)

    def sync(self) -> None:
        if self.unsynced and self.fd >= 0:
            os.fsync(self.fd)
            self.unsynced = False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def load_fleet_state(state: StateDir, fleet: Fleet) -> int:
    """Rebuild agents (identity, status, restart count, last sample) and open alerts from disk.
    Returns how many agents were loaded."""
    records, in_status = _load_records(state)
    for rec in records:
        a = fleet.agents.get(rec.id) or Agent(rec.id, rec.type)
        a.pid = rec.pid
        a.create_time = parse_rfc3339(rec.start_time) if rec.start_time else None
        a.status = rec.status if rec.status != "stalled" else "running"
        a.restart_count = rec.restart_count
        a.last = point_from_json(rec.last_sample) if rec.last_sample else None
        a.meta_dirty = False
        a.meta_written = time.time()
        # When it left the registry, if it had when this state was saved: status.json holds only
        # registered agents, and the metadata file was written at the removal. Else (registered then,
        # or status.json lost) unknown: if the registry no longer names it, the removal dates from
        # when a writer first sees that (``Fleet.set_registry``), never from a downtime before.
        if in_status is not None and rec.id not in in_status:
            a.removed_at = _time_or_none(rec.updated) or a.meta_written
        fleet.agents[rec.id] = a
    replay_from: LogPosition | None = LogPosition(0, 0)  # (inode 0: from the start of both files)
    try:
        raw = fsutil.read_private(state.alert_state)
        try:
            saved = _alert_state_decoder.decode(raw)
            alerts, replay_from = saved.open, saved.alerts_log
        except (msgspec.DecodeError, msgspec.ValidationError):
            alerts, replay_from = _old_alert_state_decoder.decode(raw), None  # where the log was: not known
            fleet.alerts_dirty = True  # written in today's format (with the position) at the first flush
    except FileNotFoundError:
        alerts = {}
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        _corrupt(state.alert_state, exc)
        alerts = _alerts_from_records(records)
        fleet.alerts_dirty = True  # rebuild the file now, not at the next alert change
    for agent_id, by_resource in alerts.items():
        a = fleet.agents.get(agent_id)
        if a is None:
            # An episode of an agent whose metadata was never written: its first sample opened it, and
            # the writer was killed before the flush wrote agents/<id>.json (thresholds.json is written
            # first). Dropped, the next writer opened a second episode over this one, never closed.
            a = _unrecorded(fleet, agent_id)
        for resource, st in by_resource.items():
            if resource in th.RESOURCES and st.state in ("warning", "error"):
                a.alerts[resource] = th.Alert(st.state, st.since, st.logged, st.threshold)
    changed = _replay_alert_log(state, fleet, replay_from) if replay_from is not None else 0
    if changed:
        fleet.alerts_dirty = True
        logger.info("alert state brought up to date with alerts.jsonl: {} episode{} opened or closed after "
                    "thresholds.json was last written (the writer was stopped in between)", changed, "" if changed == 1 else "s")
    return len(records)


def _replay_alert_log(state: StateDir, fleet: Fleet, position: LogPosition) -> int:
    """Apply the changes alerts.jsonl has past ``position``, in order. Its lines are appended when a
    batch is applied, thresholds.json only at the flush after: a writer killed in between (kill -9,
    the OOM killer) left changes that thresholds.json does not have, and the next writer logged
    them again (a second warning with a new ``since``, its error a whole duration late; a second
    ok). Only what was written past the position counts: a change that could not be written, or was
    dropped, is in thresholds.json and not in the log, and must not be undone by an older line.
    Where the position's file went: moved to alerts.jsonl.1 (read from there on, then alerts.jsonl);
    gone (moved away by something else): alerts.jsonl from its start. Inode 0 (no thresholds.json,
    or a corrupt one): both files whole. Returns how many episodes it opened, closed or changed."""
    from fleetmon.store import queries

    current, previous = fsutil.inode(state.alerts), fsutil.inode(state.alerts_previous)
    if position.inode == 0:
        reads = [(state.alerts_previous, 0), (state.alerts, 0)]
    elif position.inode == current:
        reads = [(state.alerts, position.size)]
    elif position.inode == previous:
        reads = [(state.alerts_previous, position.size), (state.alerts, 0)]
    else:
        reads = [(state.alerts, 0)]
    before: dict[tuple[str, str], th.Alert | None] = {}
    unrecorded: set[str] = set()
    for path, offset in reads:
        for line in _lines_from(path, offset):
            try:
                ev = queries.decode_event(line)
                ts, since = parse_rfc3339(ev.timestamp), parse_rfc3339(ev.since)
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
                continue  # a torn line, or one edited by hand
            if ev.resource not in th.RESOURCES or ev.state not in ("ok", "warning", "error"):
                continue
            a = fleet.agents.get(ev.agent_id)
            if a is None:
                if ev.state == "ok":
                    continue
                # (as above: the line written, the writer killed before its metadata was)
                a = _unrecorded(fleet, ev.agent_id)
                unrecorded.add(ev.agent_id)
            before.setdefault((ev.agent_id, ev.resource), a.alerts.get(ev.resource))
            if ev.state == "ok":
                a.alerts.pop(ev.resource, None)
            else:
                a.alerts[ev.resource] = th.Alert(ev.state, since, ts, ev.threshold or 0.0)
    for agent_id in unrecorded:
        if not fleet.agents[agent_id].alerts:  # (its episodes closed later in the log: nothing to keep)
            del fleet.agents[agent_id]
    changed = 0
    for (agent_id, resource), old in before.items():
        if agent_id not in fleet.agents:
            continue
        a = fleet.agents[agent_id]
        new = a.alerts.get(resource)
        if (old is None) != (new is None) or (
            old is not None and new is not None and (old.state != new.state or abs(old.since - new.since) >= 1e-3)
        ):
            a.meta_dirty = True
            changed += 1
        elif old is not None:
            old.threshold = old.threshold or new.threshold  # (0: a thresholds.json from before it was kept)
            a.alerts[resource] = old  # the same episode: keep what thresholds.json had (its ``logged``)
    return changed


def _unrecorded(fleet: Fleet, agent_id: str) -> Agent:
    """An agent known only by an open episode: the registry tells its type and pid when it comes
    (``Fleet.set_registry``), its first sample its process (``Fleet._identify``)."""
    a = fleet.agents[agent_id] = Agent(agent_id)
    a.meta_dirty = True
    return a


def _lines_from(path, offset: int):
    """The whole lines of ``path`` from byte ``offset`` on (a last line without its newline is torn:
    left out), read a chunk at a time, opened as ``fsutil.open_private`` opens it."""
    try:
        fd, st = fsutil.open_private(path)
    except FileNotFoundError:
        return
    try:
        pos, rest = min(offset, st.st_size), b""
        while True:
            chunk = os.pread(fd, 1 << 20, pos)
            if not chunk:
                return
            pos += len(chunk)
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            yield from (line for line in lines if line.strip())
    finally:
        os.close(fd)


def _time_or_none(text: str | None) -> float | None:
    try:
        return parse_rfc3339(text) if text else None
    except ValueError:
        return None


def _alerts_from_records(records: list[AgentRecord]) -> dict[str, dict[str, AlertState]]:
    return {
        r.id: {b.resource: AlertState(b.state, parse_rfc3339(b.since)) for b in r.alerts} for r in records if r.alerts
    }


def _load_records(state: StateDir) -> tuple[list[AgentRecord], set[str] | None]:
    """From status.json; per-agent files fill in (and stand in when status.json is lost). Also the
    ids status.json holds (the agents registered when it was written), or None without one."""
    by_id: dict[str, AgentRecord] = {}
    in_status: set[str] | None = None
    try:
        snap = _status_decoder.decode(fsutil.read_private(state.status, 1 << 30))
        for r in snap.agents:
            _check_record(r)
        by_id = {r.id: r for r in snap.agents}
        in_status = set(by_id)
    except FileNotFoundError:
        pass
    except (OSError, ValueError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        _corrupt(state.status, exc)
    try:
        names = os.listdir(state.agents)
    except FileNotFoundError:
        names = []
    for name in names:
        if not name.endswith(".json") or name.startswith("."):
            continue
        agent_id = name[:-5]
        path = state.agents / name
        try:
            rec = _record_decoder.decode(fsutil.read_private(path, 1 << 20))
            if rec.id != agent_id:
                raise ValueError(f"id {rec.id!r} does not match the file name")
            _check_record(rec)
        except FileNotFoundError:
            continue
        except (OSError, ValueError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            _corrupt(path, exc)
            continue
        cur = by_id.get(agent_id)
        if cur is None or (rec.updated or "") > (cur.updated or ""):
            by_id[agent_id] = rec
    return list(by_id.values()), in_status


def _check_record(rec: AgentRecord) -> None:
    """What the types alone do not check, and loading would trip over (a writer that failed at every
    start): the times parse, the status is one of ours. ValueError says what is wrong."""
    if rec.status not in AGENT_STATUSES:
        raise ValueError(f"{rec.id}: unknown status {rec.status!r}")
    try:
        for text in (rec.start_time, rec.last_sample.timestamp if rec.last_sample else None, *(b.since for b in rec.alerts)):
            if text is not None:
                parse_rfc3339(text)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{rec.id}: bad time: {exc}") from None


def _corrupt(path, exc) -> None:
    try:
        aside = fsutil.move_aside(path)
    except OSError as err:
        logger.error("{} is unreadable ({}) and could not be moved aside: {}", path, exc, err)
        return
    logger.error("{} is corrupt ({}): moved aside to {}; it will be rebuilt", path, str(exc).splitlines()[0], aside)


def save_alert_state(state: StateDir, fleet: Fleet, log: LogPosition | None) -> None:
    """thresholds.json: the open episodes, and ``log``, where alerts.jsonl ends (what the episodes
    include: a writer that starts again applies the changes past it, see _replay_alert_log)."""
    data = {
        a.id: {r: AlertState(al.state, al.since, al.logged, al.threshold) for r, al in a.alerts.items()}
        for a in fleet.agents.values()
        if a.alerts
    }
    fsutil.atomic_write(state.alert_state, _json.encode(AlertStateFile(data, log)))


def save_status(state: StateDir, fleet: Fleet, now: float) -> None:
    updated = rfc3339(now)
    fleet.settle_last()  # (every agent's newest sample as an object, built a batch at a time)
    records = [a.record(now, updated) for a in fleet.agents.values() if a.registered or a.kept]
    fsutil.atomic_write(state.status, _json.encode(StatusSnapshot(updated, records)))


def save_metadata(state: StateDir, fleet: Fleet, now: float, refresh: bool = True) -> int:
    """Rewrite agents/<id>.json for agents whose metadata changed, and (``refresh``) refresh the
    others' last_sample every METADATA_REFRESH seconds, at most METADATA_PER_FLUSH files per call."""
    due = []
    for a in fleet.agents.values():
        if a.meta_dirty or (refresh and a.registered and now - a.meta_written >= METADATA_REFRESH):
            due.append(a)
            if len(due) >= METADATA_PER_FLUSH:
                break
    if not due:
        return 0
    files = [(f"{a.id}.json", _json.encode(a.record(now))) for a in due]
    fsutil.atomic_write_many(state.agents, files)
    for a in due:
        a.meta_dirty = False
        a.meta_written = now
    return len(files)


def registry_file_there(state: StateDir, agent_id: str) -> bool:
    """Whether the agent's registry file is there (a dangling symlink too), whether or not it parses."""
    return os.path.lexists(state.registry_file(agent_id))


def forget_removed(state: StateDir, fleet: Fleet, now: float, keep: float, limit: int = 1000) -> tuple[list[str], list]:
    """Delete the history and metadata files of agents removed from the registry at least ``keep``
    seconds ago, and regular history files that no agent the writer knows has (say its metadata was
    lost) untouched as long: at most ``limit`` a call. Returns (the ids forgotten, the (path, error)
    of each file that could not be deleted: its agent is kept, to be tried again next time).

    An agent whose registry file is there (a dangling symlink too) is kept whatever the registry
    said: an entry that does not parse is left out of the registry (logged at every rescan), and a
    typo must not cost the history. The metadata file goes last: it records when the agent was
    removed, so a crash in between is finished next time."""

    forgotten: list[str] = []
    failed: list = []
    for agent_id in fleet.removed_before(now - keep):
        if len(forgotten) + len(failed) >= limit:
            return forgotten, failed
        if registry_file_there(state, agent_id):
            continue
        fleet.rings.close(agent_id)
        try:
            for path in (state.ring_file(agent_id), state.agent_file(agent_id)):
                path.unlink(missing_ok=True)
        except OSError as exc:
            failed.append((path, exc))
            continue
        fleet.forget(agent_id)
        forgotten.append(agent_id)
    try:
        names = os.listdir(state.history)
    except FileNotFoundError:
        names = []
    for name in names:
        if len(forgotten) + len(failed) >= limit:
            break
        agent_id = name[:-5]
        if not name.endswith(".ring") or name.startswith(".") or agent_id in fleet.agents or registry_file_there(state, agent_id):
            continue
        path = state.history / name
        try:
            st = path.lstat()
            if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < keep:
                continue
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            failed.append((path, exc))
            continue
        forgotten.append(agent_id)
    return forgotten, failed


def save_daemon(state: StateDir, info: DaemonJSON) -> None:
    fsutil.atomic_write(state.daemon, _json.encode(info))
