"""The supervisor's main loop: registry, sharding, ticks, health of children, signals.

Signal handlers only record the signal; the loop acts on it through ``handle_<signal>`` methods.
Every wait has a deadline on ``time.monotonic()``.
"""

from __future__ import annotations

import collections
import os
import secrets
import signal
import socket
import time
from pathlib import Path

import msgspec
from loguru import logger

from fleetmon import channel, wire
from fleetmon.store import queries
from fleetmon.store.layout import StateDir
from fleetmon.supervisor import children, lock, notify, sharding
from fleetmon.supervisor.config import Config, warn_short_keep
from fleetmon.supervisor.registry import RegistryScanner, registry_changes
from fleetmon.workers import worker as W
from fleetmon.workers.sampler import boot_clock, resolve_reader

DRAIN_TIMEOUT = 10.0
MAX_SENT_SHARDS = 256  # shards remembered per slot (see _assign)
MAX_ABANDONED = 16  # workers left behind stuck in the kernel at once (each holds its memory until it ends)
REGISTRY_POLL = 1.0  # seconds between registry scans between ticks (see Arbiter._scan_registry)


def _agent_in_hand(sent, generation: int, index: int, pid: int, current: list[wire.AgentRef]) -> str | None:
    """The agent a stalled worker was reading: the one at its heartbeat's index in the shard it was
    reading (``sent``: the (generation, shard) pairs last sent to its slot), else, that one gone
    from memory, the one in ``current`` whose pid is in hand, if unique (never for a pidfile agent:
    its pid in the heartbeat is -1, like every other pidfile agent's)."""
    for g, refs in sent:
        if g == generation:
            return refs[index].id if 0 <= index < len(refs) else None
    held = [ref.id for ref in current if ref.pid == pid] if pid > 0 else []
    return held[0] if len(held) == 1 else None


class Quarantined:
    __slots__ = ("agent_id", "pid", "strikes", "retry_at")

    def __init__(self, agent_id: str, pid: int):
        self.agent_id, self.pid, self.strikes, self.retry_at = agent_id, pid, 1, 0.0


def _recorded_clock(state: StateDir) -> wire.BootClock | None:
    from fleetmon.store.queries import read_daemon

    try:
        daemon = read_daemon(state)
    except (OSError, ValueError):
        return None
    return daemon.boot if daemon is not None else None


class Arbiter:
    def __init__(self, config: Config, state: StateDir, config_path: Path | None = None):
        self.config = config
        self.config_path = config_path
        self.state = state
        self.signals: list[int] = []
        self.tick_no = 0
        self.tick_wall = 0.0
        self.encoder = msgspec.msgpack.Encoder()
        self.decoder = msgspec.msgpack.Decoder(wire.ToSupervisor)
        self.token = secrets.token_hex(16)
        self.registry = RegistryScanner(state.registry)
        self.workers: list[children.Child] = []
        self.quarantine_worker = children.Child("quarantine", -2)
        self.writer = children.Child("writer", -1)
        self.shards: dict[int, list[wire.AgentRef]] = {}
        self.generation = 0  # of the last shard sent (wire.Assign.generation)
        self.sent_shards: dict[int, collections.deque] = {}  # slot -> the last (generation, shard) sent to it
        # Children SIGKILL did not end (blocked in the kernel: a read on a dead mount), given up on
        # and replaced: (process, name, the quarantined agents it held), reaped when they end.
        self.abandoned: list[tuple[object, str, list[str]]] = []
        self.abandon_full_logged = False
        self.sent_tick: dict[int, int] = {}
        self.busy_since: dict[int, float] = {}
        self.checked_at = time.monotonic()  # when _check_children last ran
        self.judge_after = 0.0  # no stall verdicts before this (the supervisor itself was not running)
        self.last_sleep = 0.0  # what the loop last asked to sleep
        self.quarantine: dict[str, Quarantined] = {}
        self.q_batch: list[str] = []
        self.known: dict[str, tuple[int, float]] = {}  # agent -> (pid, start) from the writer's Retire
        # agent -> (pid, start) it last ran as (status.json), read when workers start: what a new
        # worker follows while a pidfile names no process (see wire.AgentRef)
        self.last_seen: dict[str, tuple[int, float]] = {}
        self.registry_scanned = 0.0  # (monotonic) see _scan_registry
        self.next_tick_at = 0.0  # (monotonic) when the next tick is due
        self.persisted_tick = 0
        self.persisted_at = time.monotonic()
        self.started_at = time.monotonic()
        self.listener: socket.socket | None = None
        self.lock_fd = -1  # run/lock, held while the daemon runs (lock.acquire)
        self.address = ""  # the writer's socket
        self.link: channel.Link | None = None
        self.stopping = False
        self.notifier = notify.Notifier.from_env()
        self.reschedule: float | None = None  # a reload changed the interval: tick no later than this
        self.clock: wire.BootClock | None = None  # what start times count from (see _serve)

    # --- start and stop -----------------------------------------------------------------------

    def run(self) -> int:
        # Recorded from the start, not only once the loop runs: until then SIGHUP's default action
        # would kill the daemon (a reload while it waits for run/lock, or starts), and SIGTERM or
        # SIGINT would end it by the signal rather than with exit 0.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._record_signal)
        self.state.create()
        try:
            self.lock_fd = lock.acquire(self.state.run, give_up=self._stop_asked)
        except lock.StateDirBusy as exc:
            logger.error("{}", exc)
            return 1
        except lock.GaveUp:
            logger.info("{}: stopping before the daemon started (state dir {} still in use)",
                        signal.Signals(self._stop_asked()).name, self.state.root)
            return 0
        if channel.answers(self.state.writer_socket()):
            # The lock is ours, yet a writer serves this state dir: a fleetmon from before the lock
            # (or on a filesystem without locks). Two daemons on one state dir lose samples silently.
            logger.error(
                "state dir {} is in use by another fleetmon: a writer answers on {} (an older version, which does "
                "not take run/lock?): stop it first, or give this one another --state-dir",
                self.state.root, self.state.writer_socket(),
            )
            os.close(self.lock_fd)
            self.lock_fd = -1
            return 1
        try:
            return self._serve()
        except BaseException as exc:
            # A bug here must not leave the children behind: multiprocessing would wait for them at
            # exit, and they would wait for a parent that never comes back (a hung daemon).
            if not isinstance(exc, KeyboardInterrupt | SystemExit):
                logger.opt(exception=exc).critical("supervisor failed ({}): stopping every child", exc)
            children.stop_all([self.writer, self.quarantine_worker, *self.workers], grace=2.0)
            raise

    def _serve(self) -> int:
        # Start times count from the boot time the last daemon of this boot recorded (daemon.json),
        # not from a fresh read: a clock step since would move every agent's, and make it look like
        # pid reuse. Read under the lock, so no other daemon writes it meanwhile.
        self.clock = boot_clock(_recorded_clock(self.state))
        address = self.address = self.state.writer_socket()
        self.listener = channel.listen_unix(address)
        self.workers = [children.Child(f"worker-{i}", i) for i in range(self.config.worker_count)]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)  # (handlers: run())
        self.link = channel.Link(address, self._greeting)
        self._start_writer()
        self.registry.scan(force=True)
        self.last_seen = queries.last_processes(self.state)
        self._reshard()
        for w in self.workers:
            self._start_worker(w, fresh=False)
        logger.info(
            "fleetmon started (pid {}): {} worker{} reading {}, interval {}s, {} agents, state dir {}",
            os.getpid(), len(self.workers), "" if len(self.workers) == 1 else "s", resolve_reader(self.config.reader),
            self.config.interval,
            len(self.registry.entries), self.state.root,
        )
        warn_short_keep(self.config)
        next_tick = time.monotonic()
        while not self.stopping:
            self._handle_signals()
            if self.stopping:
                break
            if self.reschedule is not None:
                next_tick, self.reschedule = min(next_tick, self.reschedule), None
                self.next_tick_at = next_tick
            now = time.monotonic()
            if now >= next_tick:
                self.tick()
                interval = float(self.config.interval)
                next_tick += interval
                if next_tick <= now:  # we fell behind: skip missed ticks rather than burst
                    next_tick = now + interval
                self.next_tick_at = next_tick
            elif now - self.registry_scanned >= REGISTRY_POLL and self.between_ticks():
                self._scan_registry(between_ticks=True)  # (a tick due sooner takes the changes itself)
            self._check_children()
            self._pump_writer()
            self.notifier.poll(self)
            self.last_sleep = self._sleep_for(next_tick)
            self._wait(self.last_sleep)
        return self._drain()

    def _sleep_for(self, next_tick: float) -> float:
        """How long the loop may sleep: until the next tick, watchdog ping or child restart, and at
        most one stall-check period (``stall_timeout`` / 10, between 0.1 and 1 s: a worker stuck
        between ticks is seen within ``stall_timeout``); briefly while a channel has bytes left to
        send. A child's death, a signal and the writer's messages wake it at once."""
        now = time.monotonic()
        for c in self.workers + [self.quarantine_worker, self.writer]:
            if c.proc is not None and not c.alive:
                return 0.0  # died since it was last checked: its sentinel is not waited on, reap it now
        until = min(next_tick, now + min(1.0, max(0.1, float(self.config.stall_timeout) / 10)))
        until = min(until, now + self.notifier.wait_hint(now))
        for c in self.workers + [self.writer]:  # the quarantine worker is restarted by the tick
            if c.proc is None:
                until = min(until, c.respawn_at)
        if self.link is not None and self.link.pending and self.link.conn is None:
            until = min(until, self.link.retry_at)  # the writer is away: its reconnect backoff, not a spin
        elif self.link is not None and (self.link.pending or self.link.want_write):
            until = min(until, now + 0.05)
        if any(w.ctl is not None and w.ctl.want_write for w in self.workers + [self.quarantine_worker]):
            until = min(until, now + 0.05)
        return max(0.0, until - now)

    def _record_signal(self, signum, frame) -> None:
        self.signals.append(signum)

    def _stop_asked(self) -> int:
        """The SIGTERM or SIGINT received but not acted on yet (0: none)."""
        return next((s for s in self.signals if s in (signal.SIGTERM, signal.SIGINT)), 0)

    def _handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.pop(0)
            {signal.SIGTERM: self.handle_term, signal.SIGINT: self.handle_int, signal.SIGHUP: self.handle_hup}[sig]()

    def handle_term(self) -> None:
        logger.info("SIGTERM: draining and stopping")
        self.stopping = True

    def handle_int(self) -> None:
        logger.info("SIGINT: draining and stopping")
        self.stopping = True

    def handle_hup(self) -> None:
        from fleetmon.supervisor import reload

        reload.handle_hup(self)

    def _drain(self) -> int:
        self.notifier.stopping()
        if not self.writer.alive and self.listener is not None:
            # Down (waiting out a restart's backoff, or just died): started for the drain, else the
            # workers' last batches are dropped uncounted and daemon.json keeps saying it runs.
            self.writer.reap()
            try:
                self._start_writer()
            except Exception as exc:  # noqa: BLE001 - the stop goes on without it
                logger.error("cannot start the writer to drain: {}", exc)
        for w in self.workers + [self.quarantine_worker]:
            self._send(w, wire.Stop())
        children.drain(self.workers + [self.quarantine_worker], DRAIN_TIMEOUT)
        if self.link is not None and self.writer.alive:
            self.link.send(self.encoder.encode(self._daemon_info(running=False)))
            self.link.send(self.encoder.encode(wire.Stop()))
            self.link.flush_until(time.monotonic() + 2.0)
            wdeadline = time.monotonic() + DRAIN_TIMEOUT
            while self.writer.alive and time.monotonic() < wdeadline:
                children.mp_connection.wait([self.writer.proc.sentinel], timeout=0.2)
        # Clean: the writer took the workers' last batches and the Stop, flushed, and exited 0.
        clean = self.writer.proc is not None and self.writer.proc.exitcode == 0
        children.stop_all([self.writer], grace=2.0)
        if self.link is not None:
            self.link.close()
        if self.listener is not None:
            self.listener.close()
            try:
                os.unlink(self.address)  # (while the lock is held: no other daemon's socket)
            except OSError:
                pass
        if self.lock_fd >= 0:
            os.close(self.lock_fd)  # (the writer has exited: the state dir is free)
            self.lock_fd = -1
        if not clean:
            # (exit 1, not 0: systemd and supervisord show a stop that may have lost the last tick)
            logger.error("fleetmon stopped without a clean drain: the writer did not finish (the last tick may not be persisted)")
            return 1
        logger.info("fleetmon stopped")
        return 0

    # --- children -----------------------------------------------------------------------------

    def _inherited_fds(self) -> list[int]:
        fds = [self._wake_r.fileno(), self._wake_w.fileno()]
        fds += [w.ctl.fileno() for w in self.workers + [self.quarantine_worker] if w.ctl is not None]
        if self.link is not None and self.link.fileno() is not None:
            fds.append(self.link.fileno())
        return fds

    def _start_writer(self) -> None:
        assert self.listener is not None
        fds = self._inherited_fds()
        children.start_writer(self.writer, str(self.state.root), self.config, self.listener, self.token, fds, self.clock)
        if self.writer.restarts:
            logger.warning("writer restarted (pid {}), restart {}", self.writer.pid, self.writer.restarts)

    def _start_worker(self, w: children.Child, fresh: bool = True) -> None:
        """``fresh``: read again where the writer last recorded each agent's process (the shard's
        pidfile agents are followed from there by the new worker; ``last_seen``)."""
        shard = self.shards.get(w.index, [])
        if fresh and any(r.pidfile is not None for r in shard):
            self.last_seen = queries.last_processes(self.state)
            shard = self.shards[w.index] = [self._ref(r.id) if r.id in self.registry.entries else r for r in shard]
        parent_end, child_end = channel.pair()
        # The state dir's lock stays with the writer (the other process that writes there), not
        # with a worker: one stuck in a /proc read past SIGKILL must not keep a new daemon out.
        fds = self._inherited_fds() + [self.lock_fd]
        children.start_worker(
            w, child_end, self.state.writer_socket(), self.token, self.config.sampler_hook, fds, self.config.reader,
            self.clock.boot_time if self.clock is not None else None,
        )
        child_end.close()
        w.ctl = channel.FramedConn(parent_end)
        self.sent_tick[w.index] = 0
        self._assign(w, shard)
        if w.restarts:
            logger.warning("{} restarted (pid {}), restart {}", w.name, w.pid, w.restarts)

    def _assign(self, w: children.Child, refs: list[wire.AgentRef], sample_new: bool = False) -> None:
        self.generation += 1
        sent = self.sent_shards.setdefault(w.index, collections.deque())
        # Kept: the shard its worker says it reads (the heartbeat's generation) and every one after;
        # the older ones it will never read again. (Bounded anyway: a worker that stops taking them
        # is replaced within stall_timeout.)
        taken = w.heartbeat[W.HB_GEN] if w.heartbeat is not None and w.alive else 0
        while sent and (sent[0][0] < taken or len(sent) >= MAX_SENT_SHARDS):
            sent.popleft()
        sent.append((self.generation, refs))
        self._send(w, wire.Assign(refs, self.generation, sample_new))

    def _send(self, w: children.Child, msg) -> None:
        if w.ctl is None:
            return
        try:
            w.ctl.send(self.encoder.encode(msg))
        except channel.ChannelClosed:
            pass  # its death is noticed through its sentinel

    def _check_children(self) -> None:
        now = time.monotonic()
        if now - self.checked_at > 2 * W.IDLE_BEAT + self.last_sleep:
            # The supervisor itself did not run for a while (stopped with its process group, a paused
            # container, swapped out): the children's silence may not be theirs. Give them a few
            # beats to show they are alive before judging.
            self.judge_after = now + 3 * W.IDLE_BEAT
        self.checked_at = now
        if self.link is not None and not self.writer.alive and self.writer.proc is not None:
            # What a writer that just died said last (a tick it persisted: it was in service) is
            # read before it is reaped, and so never taken for its successor's word.
            self._pump_writer()
        for w in self.workers + [self.quarantine_worker, self.writer]:
            how = w.reap()
            if how is not None:
                level = "INFO" if self.stopping else "ERROR"
                delay = w.respawn_at - now
                later = f"; restarting it in {delay:.1f}s (it failed at boot)" if delay > 0.1 and not self.stopping else ""
                logger.log(level, "{} exited ({}){}", w.name, how, later)
                if w is self.quarantine_worker:
                    self._quarantine_failed()
            if w.alive and now >= self.judge_after:
                self._check_stall(w, now)
            if w is not self.writer and w.unkillable(now):
                self._abandon(w)
        self._reap_abandoned()
        # Restart only what was reaped above (proc None): a child that died since then is reaped,
        # logged and counted on the next pass, not replaced behind the supervisor's back.
        if self.writer.proc is None and now >= self.writer.respawn_at:
            self._start_writer()
        for w in self.workers:
            if w.proc is None and now >= w.respawn_at:
                self._start_worker(w)

    def _check_stall(self, w: children.Child, now: float) -> None:
        timeout = float(self.config.stall_timeout)
        hb = w.heartbeat
        if w is self.writer:
            if hb[0] and now - hb[0] > 3 * timeout and w.killing_since is None:
                logger.error("writer (pid {}) made no progress for {:.1f}s: killing it", w.pid, now - hb[0])
                w.kill()
            return
        if w.killing_since is not None:
            return
        # A worker updates HB_PROGRESS before each read and, while idle, at least every W.IDLE_BEAT
        # seconds: silent for stall_timeout (never less than three beats), it is stuck, whether a
        # tick is outstanding or not (a worker stopped between ticks is caught without waiting for a
        # tick to go unanswered). A tick unanswered for stall_timeout is a stall too (a worker that
        # never beat: stuck at boot).
        beat = hb[W.HB_PROGRESS]
        silent = now - beat if beat else 0.0
        outstanding = self.sent_tick.get(w.index, 0) > hb[W.HB_TICK_DONE]
        waited = now - max(beat, self.busy_since.get(w.index, 0.0)) if outstanding else 0.0
        if silent <= max(timeout, 3 * W.IDLE_BEAT) and waited <= timeout:
            return
        stuck_for = max(silent, waited)
        agent_id = None
        index = int(hb[W.HB_INDEX])
        mid_read = hb[W.HB_TICK_STARTED] > hb[W.HB_TICK_DONE] and index >= 0
        state = w.proc_state()
        if mid_read and state != "T":  # a stopped worker is not blocked on the agent it holds
            agent_id = _agent_in_hand(
                self.sent_shards.get(w.index, ()), int(hb[W.HB_GEN]), index, int(hb[W.HB_PID]), self.shards.get(w.index, []),
            )
        logger.bind(worker=w.index).error(
            "{} (pid {}, state {}) made no progress for {:.1f}s{}: replacing it",
            w.name, w.pid, state, stuck_for, f" while reading agent {agent_id}" if agent_id else "",
        )
        w.kill()
        w.failures = 0
        w.holding = agent_id
        if agent_id is not None:
            self._quarantine_agent(agent_id, int(hb[W.HB_PID]), w)

    def _abandon(self, w: children.Child) -> None:
        """A worker SIGKILL has not ended: replaced now (its shard would go unsampled for as long as
        the kernel holds it), and reaped when it ends. Not the writer: a new one could not take the
        state dir's lock from it, nor write where it is stuck."""
        if len(self.abandoned) >= MAX_ABANDONED:
            if not self.abandon_full_logged:
                self.abandon_full_logged = True
                logger.error("{} workers are stuck in the kernel past SIGKILL: no more are replaced until one ends", MAX_ABANDONED)
            return
        # The agent it is stuck on (known when it was killed for a stall), else, for the quarantine
        # worker, its whole batch: not tried again until it ends (each try would leave one more).
        held = [w.holding] if w.holding else list(self.q_batch) if w is self.quarantine_worker else []
        logger.bind(worker=w.index).error(
            "{} (pid {}, state {}) did not die {:g}s after SIGKILL (blocked in the kernel: a dead NFS or FUSE mount?): "
            "left behind and replaced; it is reaped when it ends", w.name, w.pid, w.proc_state(), children.KILL_GRACE,
        )
        self.abandoned.append((w.abandon(), w.name, held))
        if w is self.quarantine_worker:
            self._quarantine_failed()

    def _reap_abandoned(self) -> None:
        for entry in list(self.abandoned):
            proc, name, _held = entry
            if proc.exitcode is not None:
                logger.warning("{} (pid {}), left behind stuck in the kernel, has ended", name, proc.pid)
                proc.join(0)
                proc.close()
                self.abandoned.remove(entry)
                self.abandon_full_logged = False

    # --- quarantine ---------------------------------------------------------------------------

    def _quarantine_agent(self, agent_id: str, pid: int, w: children.Child) -> None:
        q = self.quarantine.get(agent_id)
        if q is None:
            q = self.quarantine[agent_id] = Quarantined(agent_id, pid)
            logger.bind(agent_id=agent_id, pid=pid).error(
                "agent {} (pid {}) stalled {}: quarantined, sampled on its own with backoff", agent_id, pid, w.name
            )
            self._tell_writer(wire.Stalled(agent_id, max(pid, 0), True))
        else:
            q.strikes += 1
        q.retry_at = time.monotonic() + sharding.quarantine_delay(q.strikes, float(self.config.interval))
        self._reshard()

    def _quarantine_failed(self) -> None:
        """The quarantine worker died or was killed: its batch stays quarantined, with backoff."""
        self.q_batch = []

    def _tick_quarantine(self) -> None:
        qw = self.quarantine_worker
        now = time.monotonic()
        if self.q_batch and qw.alive and qw.heartbeat[W.HB_TICK_DONE] >= self.sent_tick.get(qw.index, 0):
            for agent_id in self.q_batch:  # a whole pass went through: they read normally again
                q = self.quarantine.pop(agent_id, None)
                if q is not None:
                    logger.bind(agent_id=agent_id).info("agent {} reads normally again: back in the pool", agent_id)
                    self._tell_writer(wire.Stalled(agent_id, max(q.pid, 0), False))
            self.q_batch = []
            self._reshard()
        if self.q_batch:
            return
        stuck = {a for _, _, held in self.abandoned for a in held}  # still blocking a left-behind quarantine worker
        due = sorted(a for a, q in self.quarantine.items() if q.retry_at <= now and a in self.registry.entries and a not in stuck)
        if not due:
            return
        if qw.proc is None and now < qw.respawn_at:
            return  # backing off after a failure: try at a later tick (q_batch stays empty meanwhile)
        if qw.proc is not None and not qw.alive:
            return  # just died: _check_children reaps and logs it first
        self.q_batch = due
        self.shards[qw.index] = [self._ref(a) for a in due]
        if qw.proc is None:
            self._start_worker(qw)
        else:
            self._assign(qw, self.shards[qw.index])
        for a in due:
            self.quarantine[a].retry_at = now + sharding.quarantine_delay(self.quarantine[a].strikes + 1, float(self.config.interval))
        self._send_tick(qw)

    # --- ticks --------------------------------------------------------------------------------

    def _ref(self, agent_id: str) -> wire.AgentRef:
        e = self.registry.entries[agent_id]
        known = self.known.get(agent_id)
        if known is not None and e.pid is not None and known[0] != e.pid:
            known = None
        last = self.last_seen.get(agent_id) if e.pidfile is not None else None
        return wire.AgentRef(
            e.id, e.pid, e.pidfile, known[0] if known else None, known[1] if known else None,
            last[0] if last else None, last[1] if last else None,
        )

    def _reshard(self, sample_new: bool = False) -> None:
        for agent_id in [a for a in self.quarantine if a not in self.registry.entries]:
            del self.quarantine[agent_id]  # unregistered while quarantined: nothing left to retry
        n = len(self.workers)
        shards: dict[int, list[wire.AgentRef]] = {i: [] for i in range(n)}
        for agent_id in sorted(self.registry.entries):
            if agent_id in self.quarantine:
                continue
            shards[sharding.shard_for(agent_id, n)].append(self._ref(agent_id))
        for i, refs in shards.items():
            if self.shards.get(i) != refs:
                self.shards[i] = refs
                if i < len(self.workers):
                    self._assign(self.workers[i], refs, sample_new)
        logger.debug("shards: {}", ", ".join(f"worker {i} {len(refs)}" for i, refs in shards.items()))

    def between_ticks(self) -> bool:
        """Whether the next tick is over REGISTRY_POLL away: agents registered now are sampled at
        once (Assign.sample_new) rather than left to it."""
        return self.next_tick_at - time.monotonic() > REGISTRY_POLL

    def _scan_registry(self, between_ticks: bool = False) -> None:
        """Registry changes to the shards and the writer: at each tick, and ``between_ticks`` about
        once a second while the next tick is over a second away (one stat of the directory while it
        does not change: the periodic full rescan, for files edited in place, is left to the ticks),
        so that an agent added is sampled within a second or two (its worker takes it at once, told
        so by the Assign), not at the next tick."""
        self.registry_scanned = time.monotonic()
        before = self.registry.entries
        if self.registry.scan(full=not between_ticks):
            self._reshard(sample_new=between_ticks)
            self._tell_writer(self._registry_msg())
            if self.registry.entries != before:  # (an invalid file added or edited changes nothing)
                logger.info("registry: {}", registry_changes(before, self.registry.entries))

    def tick(self) -> None:
        self.tick_no += 1
        self.tick_wall = time.time()
        self._scan_registry()
        # Agents released from quarantine first: the tick that follows samples them (after the ticks,
        # they missed this one).
        self._tick_quarantine()
        for w in self.workers:
            self._send_tick(w)
        self._tell_writer(self._daemon_info())

    def _send_tick(self, w: children.Child) -> None:
        if not w.alive:
            return
        if self.sent_tick.get(w.index, 0) <= w.heartbeat[W.HB_TICK_DONE]:
            self.busy_since[w.index] = time.monotonic()  # it was idle: the clock for a stall starts now
        self.sent_tick[w.index] = self.tick_no
        self._send(w, wire.Tick(self.tick_no, time.time()))

    # --- the writer link ----------------------------------------------------------------------

    def _greeting(self) -> list[bytes]:
        """Sent first on every connection to a (re)started writer: who we are and what it must know."""
        msgs: list = [wire.Hello(-1, os.getpid(), self.token), self._registry_msg(), self._daemon_info()]
        msgs += [wire.Stalled(a, max(q.pid, 0), True) for a, q in self.quarantine.items()]
        return [self.encoder.encode(m) for m in msgs]

    def _registry_msg(self) -> wire.Registry:
        return wire.Registry(
            [
                wire.RegisteredAgent(e.id, e.type, e.pid, e.pidfile, e.thresholds or wire.Thresholds())
                for e in self.registry.entries.values()
            ]
        )

    def _daemon_info(self, running: bool = True) -> wire.DaemonInfo:
        return wire.DaemonInfo(
            supervisor_pid=os.getpid(),
            writer_pid=self.writer.pid,
            workers=[wire.WorkerInfo(w.index, w.pid, len(self.shards.get(w.index, [])), w.restarts) for w in self.workers],
            tick=self.tick_no,
            interval=float(self.config.interval),
            running=running,
            writer_restarts=self.writer.restarts,
            stalled_pids=sorted({q.pid for q in self.quarantine.values() if q.pid > 0}),
            tick_wall=self.tick_wall,
        )

    def _tell_writer(self, msg) -> None:
        if self.link is not None:
            self.link.send(self.encoder.encode(msg))

    def _pump_writer(self) -> None:
        assert self.link is not None
        self.link.pump()
        for frame in self.link.recv():
            msg = self.decoder.decode(frame)
            if isinstance(msg, wire.Persisted):
                self.writer.in_service = True
                if msg.tick > self.persisted_tick:
                    self.persisted_tick = msg.tick
                    self.persisted_at = time.monotonic()
            elif isinstance(msg, wire.Retire):
                self.known[msg.agent_id] = (msg.pid, msg.create_time)
                self._reshard()

    def _wait(self, timeout: float) -> None:
        fds: list = [self._wake_r]
        fds += [c.proc.sentinel for c in self.workers + [self.quarantine_worker, self.writer] if c.alive]
        if self.link is not None and self.link.fileno() is not None:
            fds.append(self.link.fileno())
        ready = children.mp_connection.wait(fds, timeout)
        if self._wake_r in ready:
            try:
                while self._wake_r.recv(512):
                    pass
            except BlockingIOError:
                pass
        for w in self.workers + [self.quarantine_worker]:
            if w.ctl is not None and w.ctl.want_write:
                try:
                    w.ctl.flush()
                except channel.ChannelClosed:
                    pass
