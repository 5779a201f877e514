"""The writer process: the only process that writes under the state dir.

It accepts one connection per worker (and one from the supervisor) on a listening socket that the
supervisor created and every writer inherits, decodes batches with one typed decoder, updates the
fleet model (history, status, thresholds, alerts) and, after each tick, persists the derived files.
"""

from __future__ import annotations

import os
import resource
import selectors
import signal
import socket
import time

import msgspec
from loguru import logger

from fleetmon import channel, wire
from fleetmon.store import fsutil, persist
from fleetmon.store.fleet import Fleet
from fleetmon.store.layout import StateDir
from fleetmon.store.records import DaemonJSON, WorkerJSON
from fleetmon.store.ring import RingStore
from fleetmon.units import rfc3339

RING_SYNC_EVERY = 30.0  # seconds between filesystem syncs of history rings
DRAIN_TIMEOUT = 5.0
HB_PROGRESS = 0


class Writer:
    def __init__(self, state: StateDir, config, listener: socket.socket, token: str, heartbeat, parent_pid: int):
        self.state = state
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
        self.alert_log = persist.AlertLog(state.alerts)
        self.rings = RingStore(state.history, config.history_size, max_open=_fd_budget())
        self.fleet = Fleet(
            self.rings,
            self.alert_log.add,
            config.default_thresholds(),
            {k: v.to_wire() for k, v in config.thresholds.types.items()},
            float(config.alert_repeat),
        )
        self.daemon: wire.DaemonInfo | None = None
        self.worker_ticks: dict[int, int] = {}
        self.lost_by_conn: dict[int, int] = {}
        self.lost_batches = 0
        self.dirty = False
        self.dirty_since = 0.0
        self.flushed_tick = -1
        self.last_ring_sync = time.monotonic()
        self.stopping = False
        self.signals: list[int] = []
        self.http = None
        self.early: list[tuple[int, wire.Batch]] | None = []

    # --- lifecycle ----------------------------------------------------------------------------

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda s, f: self.signals.append(s))
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        started = time.monotonic()
        n = persist.load_fleet_state(self.state, self.fleet)
        logger.info("writer started (pid {}): {} agents loaded in {:.2f}s", os.getpid(), n, time.monotonic() - started)
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
        if self.dirty:
            return max(0.0, min(0.5, self._flush_delay() - (time.monotonic() - self.dirty_since)))
        return 0.5

    def _flush_delay(self) -> float:
        interval = self.daemon.interval if self.daemon else float(self.config.interval)
        return min(interval, 1.0)

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
            if self.early is not None:  # no registry yet (just started): hold batches until it comes
                self.early.append((fd, msg))
                del self.early[:-1000]
                return
            self._on_batch(fd, msg)
        elif t is wire.DaemonInfo:
            self.daemon = msg
        elif t is wire.Registry:
            self.fleet.set_registry(msg.agents, time.time())
            self._mark_dirty()
            early, self.early = self.early, None
            for early_fd, batch in early or ():
                self._on_batch(early_fd, batch)
        elif t is wire.Stalled:
            self.fleet.on_stalled(msg.agent_id, msg.pid, msg.stalled)
            self._mark_dirty()
        elif t is wire.Stop:
            self.stopping = True

    def _on_batch(self, fd: int, batch: wire.Batch) -> None:
        on_sample = self.fleet.on_sample
        for s in batch.samples:
            on_sample(s)
        for g in batch.gone:
            self.fleet.on_gone(g)
        prev = self.lost_by_conn.get(fd, 0)
        if batch.lost_batches > prev:
            self.lost_batches += batch.lost_batches - prev
            logger.error("worker {} dropped {} batches while the writer was unreachable", batch.worker, batch.lost_batches - prev)
            self.lost_by_conn[fd] = batch.lost_batches
        if batch.tick > self.worker_ticks.get(batch.worker, -1):
            self.worker_ticks[batch.worker] = batch.tick
        try:
            self.alert_log.write()
        except OSError as exc:
            self.fleet._write_error("alerts.jsonl", exc, time.time())
        self._mark_dirty()

    def _mark_dirty(self) -> None:
        if not self.dirty:
            self.dirty = True
            self.dirty_since = time.monotonic()

    def _tick_complete(self) -> bool:
        d = self.daemon
        if d is None:
            return False
        return all(self.worker_ticks.get(w.index, -1) >= d.tick for w in d.workers)

    def _maybe_flush(self) -> None:
        if not self.dirty:
            return
        if self._tick_complete() or time.monotonic() - self.dirty_since >= self._flush_delay():
            self._flush()

    def _flush(self, final: bool = False) -> None:
        now = time.time()
        self.dirty = False
        fleet = self.fleet
        steps = [
            ("alerts.jsonl", self._sync_alerts),
            ("thresholds.json", lambda: self._save_alert_state()),
            ("agent metadata", lambda: persist.save_metadata(self.state, fleet, now)),
            ("status.json", lambda: persist.save_status(self.state, fleet, now)),
            ("daemon.json", lambda: persist.save_daemon(self.state, self._daemon_json(now, final))),
        ]
        if final or time.monotonic() - self.last_ring_sync >= RING_SYNC_EVERY:
            steps.insert(0, ("history", lambda: fsutil.sync_filesystem(self.state.history)))
            self.last_ring_sync = time.monotonic()
        ok = True
        for what, step in steps:
            try:
                step()
            except OSError as exc:
                ok = False
                fleet._write_error(what, exc, now)
        if not ok:
            self._mark_dirty()  # try again after the next tick, or sooner
        tick = self.daemon.tick if self.daemon else 0
        if self._tick_complete() and tick > self.flushed_tick:
            self.flushed_tick = tick
            self._tell(wire.Persisted(tick, fleet.samples_total))
        for agent_id, pid, create_time in fleet.retired:
            self._tell(wire.Retire(agent_id, pid, create_time))
        fleet.retired.clear()

    def _sync_alerts(self) -> None:
        self.alert_log.write()
        self.alert_log.sync()

    def _save_alert_state(self) -> None:
        if self.fleet.alerts_dirty:
            persist.save_alert_state(self.state, self.fleet)
            self.fleet.alerts_dirty = False

    def _daemon_json(self, now: float, final: bool) -> DaemonJSON:
        d = self.daemon
        if d is None:
            return DaemonJSON(self.parent_pid, os.getpid(), [], 0, rfc3339(now), not final)
        return DaemonJSON(
            supervisor_pid=d.supervisor_pid,
            writer_pid=os.getpid(),
            workers=[WorkerJSON(w.index, w.pid, w.agents, w.restarts) for w in d.workers],
            tick=d.tick,
            updated=rfc3339(now),
            running=d.running and not final,
            interval=d.interval,
            persisted_tick=self.flushed_tick if self.flushed_tick >= 0 else None,
            writer_restarts=d.writer_restarts,
            stalled_pids=d.stalled_pids,
            samples_total=self.fleet.samples_total,
            lost_batches=self.lost_batches,
            write_errors=self.fleet.write_errors,
        )

    def _tell(self, msg) -> None:
        if self.supervisor is None:
            return
        try:
            self.supervisor.send(self.encoder.encode(msg))
        except channel.ChannelClosed:
            self._close(self.supervisor)

    def _send_pending(self) -> None:
        if self.supervisor is not None and self.supervisor.want_write:
            try:
                self.supervisor.flush()
            except channel.ChannelClosed:
                self._close(self.supervisor)

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


def run(state_root: str, config, listener: socket.socket, token: str, heartbeat, parent_pid: int) -> None:
    """Entry point of the writer process."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        os._exit(1)
    state = StateDir(__import__("pathlib").Path(state_root))
    code = Writer(state, config, listener, token, heartbeat, parent_pid).run()
    raise SystemExit(code)
