"""The writer process: the only process that writes under the state dir.

It accepts one connection per worker (and one from the supervisor) on a listening socket that the
supervisor created and every writer inherits, decodes batches with one typed decoder, updates the
fleet model (history, status, thresholds, alerts) and, after each tick, persists the derived files.
"""

from __future__ import annotations

import functools
import os
import resource
import selectors
import signal
import socket
import threading
import time
from pathlib import Path

import msgspec
from loguru import logger

from fleetmon import channel, logs, wire
from fleetmon.store import fsutil, persist
from fleetmon.store.fleet import Fleet
from fleetmon.store.layout import StateDir
from fleetmon.store.records import DaemonJSON, WorkerJSON
from fleetmon.store.ring import RingStore
from fleetmon.store.timing import TickTiming
from fleetmon.units import format_duration, format_size, rfc3339

RING_SYNC_EVERY = 30.0  # seconds between filesystem syncs of history rings (in a thread: RingSync)
FLUSH_AFTER = 1.0  # seconds; see Writer._flush_delay
# status.json (every agent, rewritten whole) is replaced after each tick, but at intervals under a
# second not more often than this when only the samples changed: at 0.1 s and 10,000 agents it would
# be ~50 MB/s of rewrites of a file people read by hand. A change of an agent's status, pid, restarts
# or alerts, or of the registry, is written at once; the history, alerts.jsonl, agents/<id>.json and
# /metrics see every tick (`fleetmon status` and /api/status read status.json: up to a second behind).
STATUS_EVERY = 1.0
DRAIN_TIMEOUT = 5.0
EARLY_MAX = 1000  # batches held until the first Registry arrives
HB_PROGRESS = 0


class Writer:
    def __init__(
        self,
        state: StateDir,
        config,
        listener: socket.socket,
        token: str,
        heartbeat,
        parent_pid: int,
        clock: wire.BootClock | None = None,
    ):
        self.state = state
        self.clock = clock  # recorded in daemon.json, for the next daemon of this boot
        self.config = config
        self.listener = listener
        self.token = token
        self.heartbeat = heartbeat
        self.parent_pid = parent_pid
        self.decoder = msgspec.msgpack.Decoder(wire.ToWriter)
        self.encoder = msgspec.msgpack.Encoder()
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, channel.FramedConn] = {}
        self.roles: dict[int, int | None] = {}  # fd -> worker index (-1: supervisor), None until Hello
        self.supervisor: channel.FramedConn | None = None
        self.alert_log = persist.AlertLog(state.alerts, state.alerts_previous, config.alerts_max_size)
        self.rings = RingStore(state.history, config.history_size, max_open=_fd_budget())
        self.fleet = Fleet(
            self.rings,
            self.alert_log.add,
            config.default_thresholds(),
            {k: v.to_wire() for k, v in config.thresholds.types.items()},
            float(config.alert_repeat),
        )
        self.fleet.listed = functools.partial(persist.registry_file_there, state)
        self.daemon: wire.DaemonInfo | None = None
        self.worker_ticks: dict[int, int] = {}
        self.lost_by_conn: dict[int, int] = {}
        self.lost_batches = 0
        self.dirty = False
        self.dirty_since = 0.0
        self.flushed_tick = -1
        self.fresh: set[int] = set()  # workers whose batch came since the last flush
        self.flushed_at = 0.0  # monotonic time flushed_tick last advanced (read by /healthz)
        # ... and the last time a newer complete tick was written without an error (/metrics'
        # fleetmon_last_tick_persisted_timestamp_seconds): flushed_tick also advances while writes
        # fail, to keep the watchdog fed.
        self.persisted_tick = -1
        self.persisted_at = 0.0
        self.last_ring_sync = time.monotonic()
        self.last_forget = -1e9  # monotonic time of the last look for agents to forget (keep_removed)
        self.ring_sync = RingSync(state.history)
        self.status_written = -STATUS_EVERY  # monotonic time status.json was last replaced
        self.status_pending = False  # a flush skipped status.json (sub-second interval): write it soon
        self.status_forced = False  # the registry changed: the next status.json is not skipped
        self.status_failed = False  # the last attempt to write status.json failed
        self.stopping = False
        self.signals: list[int] = []
        self.http = None
        # Batches that came before the first Registry (just started), applied when it comes:
        # (fd, batch, connection, arrival number, resent).
        self.early: list[tuple[int, wire.Batch, channel.FramedConn, int, bool]] | None = []
        self.arrived: dict[int, int] = {}  # fd -> batches received on the connection (numbered from 1)
        self.applied: dict[int, int] = {}  # fd -> arrival number of the last batch taken in: acknowledged
        self.resends: dict[int, int] = {}  # fd -> how many of the next batches are sent again (Resend)
        self.ack_due: set[int] = set()
        self.write_failing = False  # the last flush failed (full disk, EIO): say so when it works again
        self.history_errors_seen = 0  # fleet.history_errors at the last flush: more since fail the next
        timing_log = getattr(config, "timing_log", None)
        self.timing = TickTiming(timing_log) if timing_log else None  # opt-in, for benchmarks

    # --- lifecycle ----------------------------------------------------------------------------

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda s, f: self.signals.append(s))
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        started = time.monotonic()
        self._remove_stale_temps()
        n = persist.load_fleet_state(self.state, self.fleet)
        logger.info(
            "writer started (pid {}): {} agents loaded in {:.2f}s; history written {}", os.getpid(), n,
            time.monotonic() - started,
            f"through memory maps ({self.rings.filesystem})" if self.rings.mapped else "with pwrite",
        )
        self.sel.register(self.listener, selectors.EVENT_READ, "listener")
        self._start_http()
        deadline = None
        while True:
            self.heartbeat[HB_PROGRESS] = time.monotonic()
            if self.signals:
                self.signals.clear()
                if not self.stopping:
                    logger.info("writer: signal received, draining")
                    self.stopping = True
            if os.getppid() != self.parent_pid and not self.stopping:
                logger.warning("writer: supervisor is gone, draining and exiting")
                self.stopping = True
            if self.stopping:
                deadline = deadline or time.monotonic() + DRAIN_TIMEOUT
                workers_left = [fd for fd, role in self.roles.items() if role is not None and role >= 0]
                if not workers_left or time.monotonic() >= deadline:
                    break
            self._poll(0.1 if self.stopping else self._wait_time())
            self._maybe_flush()
        self._flush(final=True)
        self.rings.close_all()
        self.alert_log.close()
        logger.info("writer stopped")
        return 0

    def _wait_time(self) -> float:
        wait = 0.5
        now = time.monotonic()
        if self.dirty:
            wait = min(wait, self._flush_delay() - (now - self.dirty_since))
        elif self.status_pending:  # (while dirty, the flush to come writes it)
            wait = min(wait, self.status_written + STATUS_EVERY - now)
        return max(0.0, wait)

    def _flush_delay(self) -> float:
        """How long changes may wait for a tick (or a round) to complete: a stalled worker must not
        hold back the others' samples. Not shorter than a second: a fleet that takes longer than the
        interval to sample would otherwise have status.json rewritten at every (coalesced) tick."""
        return FLUSH_AFTER

    def _remove_stale_temps(self) -> None:
        """Temporary files of atomic writes cut short by a kill: nothing else deletes them."""
        try:
            files, size = fsutil.remove_stale_temps([self.state.root, self.state.agents, self.state.history])
        except OSError as exc:
            logger.warning("writer: cannot remove temporary files left by a killed writer: {}", exc)
            return
        if files:
            logger.info("writer: removed {} temporary file{} ({}) left by a writer killed while writing",
                        files, "" if files == 1 else "s", format_size(size))

    # --- I/O ----------------------------------------------------------------------------------

    def _poll(self, timeout: float) -> None:
        for key, _ in self.sel.select(timeout):
            if key.data == "listener":
                self._accept()
                continue
            conn = key.data
            try:
                frames = conn.recv()
            except channel.ChannelClosed:
                self._close(conn)
                continue
            for frame in frames:
                try:
                    msg = self.decoder.decode(frame)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    logger.error("writer: undecodable message dropped: {}", exc)
                    continue
                self._dispatch(conn, msg)
        self._send_acks()
        self._send_pending()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            conn = channel.FramedConn(sock)
            self.conns[conn.fileno()] = conn
            self.roles[conn.fileno()] = None
            self.sel.register(sock, selectors.EVENT_READ, conn)

    def _close(self, conn: channel.FramedConn) -> None:
        fd = conn.fileno()
        role = self.roles.pop(fd, None)
        self.conns.pop(fd, None)
        self.lost_by_conn.pop(fd, None)
        for per_conn in (self.arrived, self.applied, self.resends):
            per_conn.pop(fd, None)
        self.ack_due.discard(fd)
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.close()
        if role == -1:
            self.supervisor = None

    def _dispatch(self, conn: channel.FramedConn, msg) -> None:
        fd = conn.fileno()
        role = self.roles.get(fd)
        if role is None:
            if not isinstance(msg, wire.Hello) or msg.token != self.token:
                logger.error("writer: connection without a valid hello refused")
                self._close(conn)
                return
            self.roles[fd] = msg.worker
            if msg.worker == -1:
                self.supervisor = conn
            return
        t = type(msg)
        if t is wire.Batch:
            seq = self.arrived[fd] = self.arrived.get(fd, 0) + 1
            resent = self.resends.get(fd, 0) > 0
            if resent:
                self.resends[fd] -= 1
            if self.early is not None:  # no registry yet (just started): hold batches until it comes
                self.early.append((fd, msg, conn, seq, resent))
                if len(self.early) > EARLY_MAX:
                    self.early.pop(0)
                    self.lost_batches += 1
                    logger.error("writer: no registry from the supervisor yet: oldest held batch dropped (counted lost)")
                return
            self._take_batch(fd, conn, msg, seq, resent)
        elif t is wire.DaemonInfo:
            self.daemon = msg
            if self.timing is not None:
                self.timing.on_tick(msg.tick, msg.tick_wall)
        elif t is wire.Registry:
            self.fleet.set_registry(msg.agents, time.time())
            self.status_forced = True  # agents added or removed: status.json shows it with the next flush
            self._mark_dirty()
            early, self.early = self.early, None
            for early_fd, batch, early_conn, seq, resent in early or ():
                self._take_batch(early_fd, early_conn, batch, seq, resent)
        elif t is wire.Stalled:
            self.fleet.on_stalled(msg.agent_id, msg.pid, msg.stalled)
            self._mark_dirty()
        elif t is wire.ConfigUpdate:
            self.fleet.set_thresholds(msg.default, dict(msg.types), time.time())
            self.fleet.alert_repeat = msg.alert_repeat
            if msg.alerts_max_size is not None:
                self.alert_log.max_size = msg.alerts_max_size
            if msg.keep_removed is not None and msg.keep_removed != self.config.keep_removed:
                self.config.keep_removed = msg.keep_removed
                self.last_forget = -1e9  # look again at the next flush, by the new setting
            self._mark_dirty()
        elif t is wire.Resend:
            self.resends[fd] = msg.count
        elif t is wire.LogLevel:
            logs.set_level(msg.level, f"writer (pid {os.getpid()}) logs at {msg.level} from now on")
        elif t is wire.Stop:
            self.stopping = True

    def _take_batch(self, fd: int, conn: channel.FramedConn, batch: wire.Batch, seq: int, resent: bool) -> None:
        """Apply a batch, then acknowledge it to its worker (which keeps it until then and sends it
        again to a restarted writer). A batch sent again may hold samples that the previous writer
        already put in the history before it died: those are skipped, so no point is recorded twice."""
        try:
            if resent:  # (each sample on its own: the fast path knows nothing of the history's newest)
                every = batch.all_samples()
                samples = [s for s in every if not self._in_history(s)]
                if len(samples) < len(every):
                    logger.info(
                        "writer: batch of worker {} (tick {}) sent again: {} samples already in the history skipped",
                        batch.worker, batch.tick, len(every) - len(samples),
                    )
                batch = msgspec.structs.replace(batch, samples=samples, packed_ids="", packed=b"")
            self._on_batch(fd, batch)
        except Exception as exc:
            if not resent:
                # The first time, the writer dies (as it always did): the supervisor starts another,
                # which loads its state from disk, and the batch, never acknowledged, comes again.
                raise
            # It failed again in a writer that started afresh: the batch itself cannot be applied
            # (else every writer after this one would die of it, and nothing be persisted again).
            # Dropped from the sample it failed on, counted as lost, with the traceback.
            self.lost_batches += 1
            logger.opt(exception=exc).error(
                "writer: batch of worker {} (tick {}) could not be applied, again after a restart ({}: {}): "
                "dropped and counted lost", batch.worker, batch.tick, type(exc).__name__, exc,
            )
        if self.conns.get(fd) is conn:
            self.applied[fd] = seq
            self.ack_due.add(fd)

    def _in_history(self, s: wire.Sample) -> bool:
        a = self.fleet.agents.get(s.agent_id)
        if a is None or not a.registered:
            return False
        try:
            return s.timestamp <= self.rings.newest(s.agent_id)
        except OSError:
            return False

    def _send_acks(self) -> None:
        for fd in list(self.ack_due):
            conn = self.conns.get(fd)
            if conn is None:
                continue
            try:
                conn.send(self.encoder.encode(wire.Ack(self.applied[fd])))
            except channel.ChannelClosed:
                self._close(conn)
        self.ack_due.clear()

    def _on_batch(self, fd: int, batch: wire.Batch) -> None:
        if self.timing is not None and not batch.early:
            self.timing.on_batch(batch.tick, batch.count())
        if self.http is not None:
            self.http.observe_batch(batch)  # tick duration and sample-error counters for /metrics
        try:
            self.fleet.on_packed(batch.packed_ids, batch.packed)
            self.fleet.on_samples(batch.samples)
            for g in batch.gone:
                self.fleet.on_gone(g)
        finally:  # what was applied of it is written and counted even if a sample failed
            self._batch_applied(fd, batch)

    def _batch_applied(self, fd: int, batch: wire.Batch) -> None:
        prev = self.lost_by_conn.get(fd, 0)
        if batch.lost_batches > prev:
            self.lost_batches += batch.lost_batches - prev
            logger.error("worker {} dropped {} batches while the writer was unreachable", batch.worker, batch.lost_batches - prev)
            self.lost_by_conn[fd] = batch.lost_batches
        if batch.tick > self.worker_ticks.get(batch.worker, -1):
            self.worker_ticks[batch.worker] = batch.tick
        if not batch.early:  # (samples of new agents between ticks: flushed after FLUSH_AFTER)
            self.fresh.add(batch.worker)
        try:
            self.alert_log.write()
        except OSError as exc:
            self.fleet._write_error("alerts.jsonl", exc, time.time())
        self._mark_dirty()

    def _mark_dirty(self) -> None:
        if not self.dirty:
            self.dirty = True
            self.dirty_since = time.monotonic()

    def _persisted_through(self) -> int:
        """The newest tick every worker has delivered a batch for, or for a later tick (a worker
        still busy when a tick comes coalesces it into the next)."""
        d = self.daemon
        if d is None:
            return -1
        return min((self.worker_ticks.get(w.index, -1) for w in d.workers), default=d.tick)

    def _tick_complete(self) -> bool:
        return self.daemon is not None and self._persisted_through() >= self.daemon.tick

    def _round_complete(self) -> bool:
        """Every worker has delivered a batch since the last flush: what "after each tick" is when
        sampling the fleet takes longer than the interval and ticks coalesce."""
        d = self.daemon
        return d is not None and bool(d.workers) and all(w.index in self.fresh for w in d.workers)

    def _maybe_flush(self) -> None:
        if self.dirty and (
            self._tick_complete() or self._round_complete() or time.monotonic() - self.dirty_since >= self._flush_delay()
        ):
            self._flush()
        elif not self.dirty and self.status_pending and time.monotonic() - self.status_written >= STATUS_EVERY:
            # No tick came since one was left out of status.json (a tick in progress waits for its
            # flush, so that status.json never shows a tick the other files do not have yet).
            now = time.time()
            try:
                self._save_status(now, force=True)
            except OSError as exc:
                self.fleet._write_error("status.json", exc, now)
                self.write_failing = True

    def _flush(self, final: bool = False) -> None:
        now = time.time()
        changed: list[int] = []  # agents whose metadata changed: status.json shows them at once
        self.dirty = False
        fleet = self.fleet
        steps = [
            ("alerts.jsonl", self._sync_alerts),
            ("thresholds.json", lambda: self._save_alert_state()),
            ("agent metadata", lambda: changed.append(persist.save_metadata(self.state, fleet, now, refresh=False))),
            ("status.json", lambda: self._save_status(now, final or any(changed))),
            ("daemon.json", lambda: persist.save_daemon(self.state, self._daemon_json(now, final))),
        ]
        failed = self.ring_sync.take_error()  # of a sync started at an earlier flush, once it is over
        if final:  # a clean stop: synced before the writer exits, whatever it takes
            self.ring_sync.close(DRAIN_TIMEOUT)
            steps.insert(0, ("history", lambda: fsutil.sync_filesystem(self.state.history)))
        elif time.monotonic() - self.last_ring_sync >= RING_SYNC_EVERY and self.ring_sync.start():
            self.last_ring_sync = time.monotonic()
        # A sample a ring could not take since the last flush (a new ring on a full disk) fails this
        # one too: the tick is not all on disk, and /healthz must not say it is.
        ok = fleet.history_errors == self.history_errors_seen
        self.history_errors_seen = fleet.history_errors
        if failed is not None:
            ok = False
            fleet._write_error("history", failed, now)
        for what, step in steps:
            try:
                step()
            except OSError as exc:
                ok = False
                fleet._write_error(what, exc, now)
        self.fresh.clear()
        tick = self._persisted_through()
        if ok and self.timing is not None:
            self.timing.on_flush(tick, time.time(), fleet.samples_total)
        if not ok:
            self._mark_dirty()  # try again after the next tick, or sooner
            self.write_failing = True
        elif self.write_failing and not self.status_failed:  # (a status.json left out is no proof)
            self.write_failing = False
            logger.info("writing to the state dir works again ({} write errors in all)", fleet.write_errors)
        if ok and tick > self.persisted_tick:
            self.persisted_tick = tick
            self.persisted_at = time.monotonic()
        if tick > self.flushed_tick:
            self.flushed_tick = tick
            self.flushed_at = time.monotonic()
            self._tell(wire.Persisted(tick, fleet.samples_total))
        for agent_id, pid, create_time in fleet.retired:
            self._tell(wire.Retire(agent_id, pid, create_time))
        fleet.retired.clear()
        # Housekeeping, after the tick is reported persisted (it is not part of persisting it): the
        # periodic refresh of unchanged agents' metadata files (their last_sample).
        try:
            persist.save_metadata(self.state, fleet, now)
        except OSError as exc:
            fleet._write_error("agent metadata", exc, now)
            self._mark_dirty()
        self._forget_removed(now)

    def _forget_removed(self, now: float) -> None:
        """Every ``keep_removed``/4 (at most hourly, at least a second apart), once the registry is
        known: the files of agents removed from it ``keep_removed`` ago are deleted."""
        keep = self.config.keep_removed
        mono = time.monotonic()
        if not keep or self.early is not None or mono - self.last_forget < min(3600.0, max(1.0, keep / 4)):
            return
        self.last_forget = mono
        try:
            gone, failed = persist.forget_removed(self.state, self.fleet, now, keep)
        except OSError as exc:  # (the history dir unreadable)
            self.fleet._write_error("history (forgetting removed agents)", exc, now)
            return
        for path, exc in failed:
            self.fleet._write_error(f"{path} (deleting a removed agent's file: kept, tried again later)", exc, now)
        for agent_id in gone:  # one line each, with its agent_id: the record of what was deleted
            logger.bind(agent_id=agent_id).info(
                "agent {} forgotten: removed from the registry over {} ago (keep_removed), its history and metadata "
                "deleted", agent_id, format_duration(keep),
            )

    def _save_status(self, now: float, force: bool) -> None:
        """Replace status.json, or (ticks under STATUS_EVERY apart, only samples changed: not
        ``force``) leave it for the loop to replace once STATUS_EVERY has passed since the last time."""
        mono = time.monotonic()
        interval = self.daemon.interval if self.daemon is not None else None
        force = force or self.status_forced
        if not force and interval and interval < STATUS_EVERY and mono - self.status_written < STATUS_EVERY:
            self.status_pending = True
            return
        self.status_written = mono  # also on failure: the next try is a tick or STATUS_EVERY away
        self.status_pending = True
        try:
            persist.save_status(self.state, self.fleet, now)
        except OSError:
            self.status_failed = True
            raise
        self.status_pending = self.status_forced = self.status_failed = False

    def _sync_alerts(self) -> None:
        self.alert_log.write()
        self.alert_log.sync()

    def _save_alert_state(self) -> None:
        if self.fleet.alerts_dirty:
            persist.save_alert_state(self.state, self.fleet, self.alert_log.position())
            self.fleet.alerts_dirty = False

    def _daemon_json(self, now: float, final: bool) -> DaemonJSON:
        d = self.daemon
        if d is None:
            return DaemonJSON(self.parent_pid, os.getpid(), [], 0, rfc3339(now), not final, boot=self.clock)
        # daemon.json is written last in a flush: a complete tick is persisted by this very flush.
        persisted = max(self.flushed_tick, self._persisted_through())
        return DaemonJSON(
            supervisor_pid=d.supervisor_pid,
            writer_pid=os.getpid(),
            workers=[WorkerJSON(w.index, w.pid, w.agents, w.restarts) for w in d.workers],
            tick=d.tick,
            updated=rfc3339(now),
            running=d.running and not final,
            interval=d.interval,
            persisted_tick=persisted if persisted >= 0 else None,
            writer_restarts=d.writer_restarts,
            stalled_pids=d.stalled_pids,
            samples_total=self.fleet.samples_total,
            lost_batches=self.lost_batches,
            write_errors=self.fleet.write_errors,
            boot=self.clock,
        )

    def _tell(self, msg) -> None:
        if self.supervisor is None:
            return
        try:
            self.supervisor.send(self.encoder.encode(msg))
        except channel.ChannelClosed:
            self._close(self.supervisor)

    def _send_pending(self) -> None:
        for conn in [c for c in self.conns.values() if c.want_write]:  # the supervisor's, and acks
            try:
                conn.flush()
            except channel.ChannelClosed:
                self._close(conn)

    def _start_http(self) -> None:
        """The HTTP endpoint, when configured, is served from a thread of this process."""
        if not getattr(self.config, "http", None):
            return
        try:
            from fleetmon.store import http
        except ImportError:
            logger.error("--http needs the HTTP module, which is not available")
            return
        self.http = http.start(self.config.http, self)


class RingSync:
    """Syncs the filesystem holding the history, in a thread of its own, when asked (every
    RING_SYNC_EVERY). The rings are written through memory maps or pwrite and never fsynced one by
    one; a sync writes back every ring's dirty pages, which at 10,000 agents takes 0.1-1 s of disk
    time (more on a busy disk): blocked in it, the writer would persist the next tick late, and on a
    slow enough disk miss its heartbeat and be killed as stalled. syncfs(2) releases the GIL."""

    def __init__(self, path: Path):
        self.path = path
        self.wanted = threading.Event()
        self.idle = threading.Event()
        self.idle.set()
        self.error: Exception | None = None
        self.closing = False
        self.thread: threading.Thread | None = None  # started by the first sync

    def start(self) -> bool:
        """Begin a sync; False (and nothing done) while the previous one is still running."""
        if not self.idle.is_set() or self.closing:
            return False
        if self.thread is None or not self.thread.is_alive():
            self.thread = threading.Thread(target=self._run, name="ring-sync", daemon=True)
            self.thread.start()
        self.idle.clear()
        self.wanted.set()
        return True

    def take_error(self) -> Exception | None:
        """Why the last sync failed, once, when it is over (None while one runs, or if it worked)."""
        if not self.idle.is_set():
            return None
        error, self.error = self.error, None
        return error

    def close(self, timeout: float) -> None:
        """Let a sync in progress end (waiting up to ``timeout``), and stop the thread."""
        self.idle.wait(timeout)
        self.closing = True
        self.wanted.set()

    def _run(self) -> None:
        while True:
            self.wanted.wait()
            self.wanted.clear()
            if self.closing:
                return
            try:
                fsutil.sync_filesystem(self.path)
            except Exception as exc:  # reported by the writer's next flush; the thread carries on
                self.error = exc
            finally:
                self.idle.set()


def _fd_budget() -> int:
    """Raise the soft limit on open files to the hard limit; keep 256 for everything but rings."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return max(64, soft - 256)


def run(
    state_root: str, config, listener: socket.socket, token: str, heartbeat, parent_pid: int, clock: wire.BootClock | None = None
) -> None:
    """Entry point of the writer process."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        os._exit(1)
    state = StateDir(__import__("pathlib").Path(state_root))
    code = Writer(state, config, listener, token, heartbeat, parent_pid, clock).run()
    raise SystemExit(code)
