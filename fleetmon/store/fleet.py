"""The writer's model of the fleet: what each sample and each disappearance means for an agent's
status, identity, restart count, history and alert state. No process or socket here; disk access
goes through the ``RingStore`` and the alert sink given to it, so it is testable with a fake clock.
"""

from __future__ import annotations

from collections.abc import Callable

from loguru import logger

from fleetmon.store import thresholds as th
from fleetmon.store.fastpath import Columns
from fleetmon.store.records import AgentRecord, AlertBrief, PointJSON
from fleetmon.store.ring import Point, RingStore
from fleetmon.units import format_duration, rfc3339
from fleetmon.wire import PACKED, Gone, RegisteredAgent, Sample, Thresholds, from_packed, unpack_samples

IDENTITY_TOLERANCE = 0.05  # seconds; create times are jiffies (10 ms) since a fixed boot time
UNKNOWN_MAX = 50_000  # samples of agents not in the registry yet, held for its next update (Fleet._unknown)
UNKNOWN_MAX_AGE = 60.0  # seconds: older ones are not applied when it comes
_point = tuple.__new__  # Point(*values) without the Python-level __new__ of a NamedTuple


class Agent:
    __slots__ = (
        "id", "type", "registered_pid", "pid", "create_time", "status", "restart_count",
        "_last", "alerts", "limits", "cpu_max", "rss_max", "fds_max", "meta_dirty", "meta_written", "registered",
        "removed_at", "start_text", "start_of", "kept", "slot", "cols",
    )

    def __init__(self, agent_id: str, agent_type: str = "default"):
        self.id = agent_id
        self.type = agent_type
        self.registered_pid: int | None = None
        self.pid: int | None = None  # the pid of the process last identified as this agent
        self.create_time: float | None = None
        self.status = "not_running"
        self.restart_count = 0
        self._last: Point | Sample | None = None  # the newest sample (the same metric attributes): see ``last``
        # Its slot in the fast path's arrays (fastpath.Columns), once it has one (-1: none).
        self.slot = -1
        self.cols: Columns | None = None
        self.alerts: dict[str, th.Alert] = {}
        self.limits = th.Limits()
        # The limits again, off as infinity: a sample at or under all three, with no alert open,
        # cannot change any alert state, and skips the state machine (see Fleet.on_sample).
        self.cpu_max = self.rss_max = self.fds_max = _OFF
        self.meta_dirty = True
        self.meta_written = 0.0
        self.registered = False
        # Loaded from disk (a daemon started again), left out of the registry, but its registry file is
        # there (it does not parse): kept, alerts open, in status.json as a running daemon keeps it.
        self.kept = False
        # When it left the registry (its metadata file says: written then), for ``keep_removed``;
        # None while registered (or, loaded from disk, not known yet).
        self.removed_at: float | None = None
        # start_time as status.json writes it, for every agent after every tick: formatted once per
        # process (``start_of``: the create time it is for), not kept for processes long gone.
        self.start_text: str | None = None
        self.start_of: float | None = None

    @property
    def last(self) -> Point | Sample | None:
        """The newest sample: from the fast path's arrays when it took the newest (built then)."""
        cols, slot = self.cols, self.slot  # (read once: the HTTP thread asks too)
        if cols is not None and slot >= 0 and cols.fresh[slot]:
            return cols.last_sample(self.id, slot)
        return self._last

    @last.setter
    def last(self, value: Point | Sample | None) -> None:
        self._last = value
        if self.cols is not None:
            self.cols.fresh[self.slot] = False

    def record(self, now: float, updated: str | None = None) -> AgentRecord:
        """The agent's metadata; ``updated``: ``rfc3339(now)`` when the caller formatted it already.
        Built for one encode (status.json repeats it for every agent after every tick): positional
        arguments, and the shared empty list for no alerts, which nothing appends to."""
        p = self.last
        if self.start_of != self.create_time:
            self.start_text, self.start_of = rfc3339(self.create_time), self.create_time
        return AgentRecord(
            self.id,
            self.type,
            self.pid if self.pid is not None else self.registered_pid,
            self.status,
            self.restart_count,
            self.start_text,
            PointJSON(
                rfc3339(p.timestamp), p.cpu, p.memory_rss, p.memory_vms, p.disk_read_bytes, p.disk_write_bytes,
                p.open_files, p.num_threads,
            )
            if p is not None
            else None,
            [AlertBrief(r, a.state, rfc3339(a.since)) for r, a in self.alerts.items()] if self.alerts else _NO_ALERTS,
            updated or rfc3339(now),
        )


_NO_ALERTS: list[AlertBrief] = []
_OFF = float("inf")



EventSink = Callable[[th.Event], None]


class Fleet:
    def __init__(
        self,
        rings: RingStore,
        emit: EventSink,
        default_thresholds: Thresholds | None = None,
        type_thresholds: dict[str, Thresholds] | None = None,
        alert_repeat: float = 600.0,
    ):
        self.agents: dict[str, Agent] = {}
        self.rings = rings
        self.emit = emit
        self.default_thresholds = default_thresholds
        self.type_thresholds = type_thresholds or {}
        self.alert_repeat = alert_repeat
        self.alerts_dirty = False
        self.retired: list[tuple[str, int, float]] = []  # (agent, pid, create_time) to tell the supervisor
        self.samples_total = 0
        self.write_errors = 0
        self.history_errors = 0  # of them, samples a ring could not take (see _history_error)
        self._last_write_error = -1e9
        self._registry: dict[str, RegisteredAgent] = {}
        # The newest sample of each agent the writer has never heard of: the supervisor's Registry
        # naming a new agent and the first batch of the worker it gave the agent to come on
        # different connections, and the batch can win. Applied when the Registry comes (if recent).
        self._unknown: dict[str, Sample] = {}
        # Whether an agent's registry file is there though the registry leaves it out (it does not
        # parse): set by the writer, which knows the state dir.
        self.listed: Callable[[str], bool] = lambda agent_id: False
        # The fast path's per-agent arrays (``on_packed``); a ring closed must not be written there.
        self.cols = Columns(IDENTITY_TOLERANCE)
        rings.on_close = self._ring_closed

    # --- registry and config ------------------------------------------------------------------

    def set_registry(self, entries: list[RegisteredAgent], now: float) -> None:
        self.cols.invalidate_all()  # (rare: every agent's next sample decides again)
        self._registry = {e.id: e for e in entries}
        unknown, self._unknown = self._unknown, {}
        early = []
        for e in entries:
            a = self.agents.get(e.id)
            if a is None:
                a = self.agents[e.id] = Agent(e.id, e.type)
                s = unknown.get(e.id)
                if s is not None and s.timestamp >= now - UNKNOWN_MAX_AGE:
                    early.append(s)
            if not a.registered or a.type != e.type or a.registered_pid != e.pid:
                a.meta_dirty = True
            a.registered = True
            a.kept = False
            a.removed_at = None
            a.type = e.type
            a.registered_pid = e.pid
            self._apply_limits(a, e.thresholds, now)
        for a in self.agents.values():
            if a.id in self._registry:
                continue
            unknown = a.removed_at is None  # loaded from disk, registered when its daemon stopped
            if a.registered or unknown:
                a.removed_at = now
                a.meta_dirty = True  # its metadata file, written now, records when it was removed
            if a.registered:
                a.registered = False
                self._close_alerts(a, now, "removed")
                self.rings.close(a.id)
                continue
            # (not one removed while a daemon ran, then given a file that does not parse: that one's
            # alerts were closed, and a running daemon does not show a file that never parsed)
            listed = bool(a.alerts or unknown or a.kept) and self.listed(a.id)
            a.kept = listed
            if a.alerts and not listed:
                # Loaded from disk (a daemon started again) with episodes open, and taken out of the
                # registry while no daemon ran: they end now, as its removal would have ended them,
                # rather than stay open unwatched (and be resumed, ``since`` and all, if it comes back).
                # A registry file that is there but does not parse keeps them open, as it does in a
                # running daemon (its last valid entry kept), until it is fixed or removed.
                self._close_alerts(a, now, "removed")
        for s in early:
            self.on_sample(s)

    def removed_before(self, cutoff: float) -> list[str]:
        """Agents out of the registry since ``cutoff`` or earlier. One loaded from disk that the
        registry does not name counts as removed when its metadata was last written."""
        return [a.id for a in self.agents.values() if not a.registered and a.removed_at is not None and a.removed_at <= cutoff]

    def forget(self, agent_id: str) -> None:
        """Drop a removed agent from the model (the caller deleted its files)."""
        a = self.agents.get(agent_id)
        if a is not None and not a.registered:
            self.rings.close(agent_id)
            self.cols.free(a)
            del self.agents[agent_id]

    def set_thresholds(self, default: Thresholds | None, types: dict[str, Thresholds], now: float) -> None:
        self.cols.invalidate_all()
        self.default_thresholds, self.type_thresholds = default, types
        for a in self.agents.values():
            entry = self._registry.get(a.id)
            if entry is not None:  # (not one left out of it: its own limits are not known)
                self._apply_limits(a, entry.thresholds, now)

    def _apply_limits(self, a: Agent, own: Thresholds | None, now: float) -> None:
        limits = th.resolve(own, self.type_thresholds.get(a.type), self.default_thresholds)
        if limits == a.limits:
            return
        self.cols.invalidate(a)
        a.limits = limits
        a.cpu_max = limits.cpu or _OFF
        a.rss_max = limits.memory or _OFF
        a.fds_max = limits.open_files or _OFF
        for resource in list(a.alerts):
            if not limits.for_resource(resource):
                self._change(a, resource, None, "ok", None, now, reason="threshold_off")

    # --- samples ------------------------------------------------------------------------------

    def on_samples(self, samples: list[Sample]) -> None:
        for s in samples:
            self.on_sample(s)

    def on_packed(self, packed_ids: str, packed: bytes) -> None:
        """A batch's packed samples (``wire.Batch.packed``): the common ones a batch at a time
        (``fastpath.Columns.apply``: the same records and last samples as ``on_sample`` makes), the
        others through ``on_sample``. Raises ValueError on a malformed batch, before applying any."""
        if not packed:
            return
        if self.rings.lru_kept:  # (``RingStore.ring`` moves each ring it is asked for)
            self.on_samples(unpack_samples(packed_ids, packed))
            return
        before = len(packed) // PACKED.size
        rest = self.cols.apply(packed_ids, packed)
        self.samples_total += before - len(rest)
        if len(rest):
            samples = unpack_samples(packed_ids, packed)
            for i in rest.tolist():
                self.on_sample(samples[i])

    def settle_last(self) -> None:
        """Each agent whose newest sample the fast path took gets it as a ``Sample`` object now, all at
        once (status.json reads every agent's: one at a time, from the arrays, costs more)."""
        cols = self.cols
        slots, rows = cols.fresh_rows()
        for agent_id, row in rows:
            a = self.agents.get(agent_id)
            if a is not None:
                a._last = from_packed(agent_id, row)
        cols.fresh[slots] = False  # (after: the HTTP thread reads a slot's row until its object is there)

    def _ring_closed(self, agent_id: str) -> None:
        a = self.agents.get(agent_id)
        if a is not None:
            self.cols.invalidate(a)

    def on_sample(self, s: Sample) -> None:
        a = self.agents.get(s.agent_id)
        if a is None:  # new: its Registry may still be on the way (kept until the next one comes)
            if len(self._unknown) < UNKNOWN_MAX or s.agent_id in self._unknown:
                self._unknown[s.agent_id] = s
            return
        if not a.registered:
            return  # removed from the registry while the sample was in flight
        cols = self.cols
        cols.invalidate(a)  # (made ok again at the end, if the next sample may take the fast path)
        if a.pid != s.pid or a.create_time is None or not s.create_time:
            if not self._identify(a, s):
                return
        elif abs(a.create_time - s.create_time) > IDENTITY_TOLERANCE:  # the common case: same process
            self._pid_reused(a, s.pid, s.timestamp)
            return
        if a.status != "running" and a.status != "stalled":
            a.status = "running"
            a.meta_dirty = True
        a.last = s  # (not the Point: a Sample also carries cpu_seconds, for /metrics)
        point = _as_point(s)
        self.samples_total += 1
        try:
            self.rings.append(a.id, point)
        except OSError as exc:
            self._history_error(a, exc, s.timestamp)
        if a.alerts:
            self._evaluate(a, s)
        elif (  # no episode open: only a value over its limit can open one (None changes nothing)
            (s.cpu is not None and s.cpu > a.cpu_max)
            or (s.memory_rss is not None and s.memory_rss > a.rss_max)
            or (s.open_files is not None and s.open_files > a.fds_max)
        ):
            self._evaluate(a, s)
        if not self.rings.lru_kept:  # (else on_packed takes the per-sample path anyway)
            cols.sync(a, self.rings.opened.get(a.id))

    def _identify(self, a: Agent, s: Sample) -> bool:
        """Follow the agent to the sample's process (a new pid: a restart), or learn its create
        time. False when the sample is not the agent's (pid reuse)."""
        if s.create_time:  # 0.0: even the identity was unreadable (access denied)
            if a.pid == s.pid and a.create_time is not None:
                if abs(a.create_time - s.create_time) > IDENTITY_TOLERANCE:
                    self._pid_reused(a, s.pid, s.timestamp)
                    return False
            elif a.pid != s.pid:
                if a.create_time is not None:
                    a.restart_count += 1
                    logger.bind(agent_id=a.id, pid=s.pid).info(
                        "agent {} now runs as pid {} (was {}): restart {}", a.id, s.pid, a.pid, a.restart_count
                    )
                if a.pid is not None or a.registered_pid not in (None, s.pid):
                    # the old process's episodes end with it (pid None: never identified, an episode
                    # loaded for an agent whose metadata was never written: its registered process)
                    self._close_alerts(a, s.timestamp, "exited")
                a.pid, a.create_time = s.pid, s.create_time
                a.meta_dirty = True
            else:
                a.create_time = s.create_time
                a.meta_dirty = True
        elif a.pid != s.pid:
            if a.pid is not None or a.registered_pid not in (None, s.pid):  # (None: as above)
                self._close_alerts(a, s.timestamp, "exited")
            # Another process, its create time unknown yet: the old one's would make its first
            # readable sample look like pid reuse.
            a.pid, a.create_time = s.pid, None
            a.meta_dirty = True
        return True

    def _evaluate(self, a: Agent, s: Sample) -> None:
        limits = a.limits
        for resource in th.RESOURCES:
            threshold = limits.for_resource(resource)
            alert = a.alerts.get(resource)
            if not threshold and alert is None:
                continue
            value = th.value_of(resource, s.cpu, s.memory_rss, s.open_files)
            new, change = th.step(alert, value, threshold, limits.duration, s.timestamp)
            if change is not None:
                self._change(a, resource, new, change, value, s.timestamp, previous=alert)
            elif new is not None and value is not None and s.timestamp - new.logged >= self.alert_repeat:
                # (a null reading keeps the episode but is no reading over the limit: "cpu null over
                # 10% (still)" said nothing, after every restart, where a first cpu is null)
                new.logged = s.timestamp
                # Saved (thresholds.json) so that a writer started again repeats alert_repeat after
                # this line, not after the change (0: every sample repeats, nothing to keep).
                self.alerts_dirty = self.alerts_dirty or self.alert_repeat > 0
                self._log(a, resource, new.state, value, threshold, new.since, s.timestamp, repeat=True)

    def _change(
        self, a: Agent, resource: str, new: th.Alert | None, state: str, value, ts: float,
        previous: th.Alert | None = None, reason: str | None = None,
    ) -> None:
        self.cols.invalidate(a)  # (an episode opened or closed: on_sample decides again)
        previous = previous or a.alerts.get(resource)
        since = new.since if new is not None else (previous.since if previous is not None else ts)
        threshold = a.limits.for_resource(resource)
        if not threshold and reason == "removed" and previous is not None:
            threshold = previous.threshold  # (removed while no daemon ran: its limits went with its entry)
        if new is None:
            a.alerts.pop(resource, None)
        else:
            new.logged = ts
            new.threshold = threshold
            a.alerts[resource] = new
        a.meta_dirty = True
        self.alerts_dirty = True
        self.emit(th.Event(rfc3339(ts), a.id, resource, state, value, threshold, rfc3339(since), reason))
        self._log(a, resource, state, value, threshold, since, ts, reason=reason)

    def _log(self, a, resource, state, value, threshold, since, ts, repeat=False, reason=None) -> None:
        level = th.LEVEL[state]
        log = logger.bind(
            agent_id=a.id, resource=resource, state=state, value=value, threshold=threshold,
            duration=round(ts - since, 3),
        )
        shown = _show(resource, value)
        if state == "ok":
            why = f" ({reason})" if reason else ""
            at = f" at {shown}" if value is not None else ""  # (closed without a reading: exited, removed)
            log.log(level, "agent {} {} back to ok{}{} after {}", a.id, resource, why, at, format_duration(ts - since))
        else:
            log.log(
                level, "agent {} {} {} over {} for {}{}", a.id, resource, shown, _show(resource, threshold),
                format_duration(ts - since), " (still)" if repeat else "",
            )

    def _close_alerts(self, a: Agent, ts: float, reason: str) -> None:
        for resource in list(a.alerts):
            self._change(a, resource, None, "ok", None, ts, reason=reason)

    # --- disappearance ------------------------------------------------------------------------

    def on_gone(self, g: Gone) -> None:
        a = self.agents.get(g.agent_id)
        if a is None or not a.registered:
            return
        self.cols.invalidate(a)
        if g.reason == "reused" and g.pid is not None:
            self._pid_reused(a, g.pid, g.timestamp, tell=False)
            return
        was_alive = a.status in ("running", "stalled")
        new = "exited" if was_alive or (a.status == "exited") else "not_running"
        if new != a.status:
            a.status = new
            a.meta_dirty = True
            if new == "exited":
                logger.bind(agent_id=a.id, pid=a.pid).info("agent {} (pid {}) exited", a.id, a.pid)
        if new == "exited":
            self._close_alerts(a, g.timestamp, "exited")

    def _pid_reused(self, a: Agent, pid: int, ts: float, tell: bool = True) -> None:
        self.cols.invalidate(a)
        if a.status != "exited":
            logger.bind(agent_id=a.id, pid=pid).warning(
                "agent {}: pid {} now belongs to another process (pid reuse): agent exited, the stranger is not sampled",
                a.id, pid,
            )
            a.status = "exited"
            a.meta_dirty = True
        self._close_alerts(a, ts, "exited")
        if tell and a.create_time is not None:
            self.retired.append((a.id, pid, a.create_time))

    def on_stalled(self, agent_id: str, pid: int, stalled: bool) -> None:
        a = self.agents.get(agent_id)
        if a is None:
            return
        self.cols.invalidate(a)
        if stalled and a.status != "stalled":
            a.status = "stalled"
            a.meta_dirty = True
        elif not stalled and a.status == "stalled":
            a.status = "running"
            a.meta_dirty = True

    def _history_error(self, a: Agent, exc: Exception, ts: float) -> None:
        """A sample its ring could not take (a new ring on a full disk): the writer's next flush fails
        for it, so that /healthz does not call the tick persisted."""
        self.history_errors += 1
        self._write_error(f"history of {a.id}", exc, ts)

    def _write_error(self, what: str, exc: Exception, now: float) -> None:
        self.write_errors += 1
        if now - self._last_write_error >= 10.0:
            self._last_write_error = now
            why = getattr(exc, "strerror", None) or exc
            logger.error("cannot write {}: {} (sampling goes on; {} write errors so far)", what, why, self.write_errors)


def _as_point(s: Sample) -> Point:
    return _point(
        Point,
        (s.timestamp, s.cpu, s.memory_rss, s.memory_vms, s.disk_read_bytes, s.disk_write_bytes, s.open_files, s.num_threads),
    )


def _show(resource: str, value) -> str:
    if value is None:
        return "null"
    if resource == "cpu":
        return f"{value:.1f}%"
    if resource == "memory":
        from fleetmon.units import format_size

        return format_size(value)
    return f"{value:g}"
