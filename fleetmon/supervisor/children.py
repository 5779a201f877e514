"""Child processes of the supervisor: start, watch, stop, restart with backoff.

Start method: ``fork`` (named here, once). The supervisor starts every child before any thread
exists in it; the HTTP server thread lives in the writer, which forks nothing.
"""

from __future__ import annotations

import os
import signal
import time

import multiprocess
from loguru import logger
from multiprocess import connection as mp_connection

from fleetmon import channel
from fleetmon.supervisor import sharding
from fleetmon.workers import worker as worker_mod

MP = multiprocess.get_context("fork")
# Seconds a child may take to die after SIGKILL. Past that it is blocked in the kernel (state D: a
# read on a dead NFS or FUSE mount), where no signal reaches it until the read returns: it is given
# up on (``Child.abandon``) so that a new one takes its place.
KILL_GRACE = 3.0


class Child:
    """One slot of the pool (a worker, the quarantine worker or the writer)."""

    def __init__(self, name: str, index: int):
        self.name = name
        self.index = index
        self.proc = None
        self.heartbeat = None
        self.ctl: channel.FramedConn | None = None
        self.started_at = 0.0
        self.failures = 0
        self.restarts = 0
        self.respawn_at = 0.0
        self.killing_since: float | None = None
        self.ever_started = False
        self.in_service = False  # the writer persisted a tick since it started (the arbiter says)
        self.holding: str | None = None  # the agent it was reading when it was killed for a stall

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.exitcode is None

    def start(self, target, args: tuple, heartbeat_size: int) -> None:
        self.heartbeat = MP.RawArray("d", heartbeat_size)
        self.proc = MP.Process(target=target, args=(*args, self.heartbeat), name=f"fleetmon-{self.name}", daemon=False)
        self.proc.start()
        self.started_at = time.monotonic()
        self.killing_since = None
        self.holding = None
        self.in_service = False
        if self.ever_started:
            self.restarts += 1
        self.ever_started = True

    def reap(self) -> str | None:
        """If the child has exited, collect it and schedule its restart. Returns how it ended."""
        if self.proc is None or self.proc.exitcode is None:
            return None
        code = self.proc.exitcode
        lived = time.monotonic() - self.started_at
        self.proc.join(0)
        self.proc.close()
        self.proc = None
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
        if self.killing_since is None:  # died on its own: count boot failures
            if self.in_service or (
                self.index != -1 and self.heartbeat is not None and self.heartbeat[worker_mod.HB_TICK_DONE] > 0
            ):
                # a worker that had finished a tick, or a writer that had persisted one, died in
                # service: restart at once (backoff is for a child that cannot boot)
                self.failures = 0
            else:
                self.failures = sharding.next_failures(self.failures, lived)
        self.respawn_at = time.monotonic() + sharding.restart_delay(self.failures)
        return f"signal {signal_name(-code)}" if code < 0 else f"exit code {code}"

    def unkillable(self, now: float) -> bool:
        """SIGKILLed over ``KILL_GRACE`` ago and still there."""
        return self.killing_since is not None and now - self.killing_since > KILL_GRACE and self.alive

    def abandon(self):
        """Give up on a child that SIGKILL has not ended: the slot is free for a new one at once.
        Returns its process, to be reaped when it ends (``Arbiter._reap_abandoned``); multiprocess no longer
        waits for it at exit (the supervisor would hang there)."""
        proc, self.proc = self.proc, None
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
        self.killing_since = None
        self.respawn_at = 0.0  # (no backoff: it did not fail, it was given up on)
        getattr(multiprocess.process, "_children", set()).discard(proc)
        return proc

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.exitcode is None:
            if self.killing_since is None:
                self.killing_since = time.monotonic()
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def proc_state(self) -> str:
        """The child's scheduler state letter from /proc (``T`` stopped, ``D`` in I/O ...)."""
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                data = f.read()
            return data[data.rfind(b")") + 2 : data.rfind(b")") + 3].decode()
        except OSError:
            return "?"


def signal_name(signum: int) -> str:
    """SIGKILL, SIGTERM ...; a real-time signal (which has no name in ``signal.Signals``) by number:
    ``SIGRTMIN+6``."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        rtmin = getattr(signal, "SIGRTMIN", None)
        if rtmin is not None and signum >= rtmin:
            return f"SIGRTMIN+{signum - rtmin}"
        return str(signum)


def start_worker(
    child: Child,
    control_child_end,
    writer_address: str,
    token: str,
    hook: str | None,
    close_fds: list[int],
    reader: str = "auto",
    boot_time: float | None = None,
) -> None:
    child.start(
        _worker_entry,
        (child.index, control_child_end, writer_address, token, os.getpid(), hook, close_fds, reader, boot_time),
        worker_mod.HB_SIZE,
    )


def _worker_entry(index, control, writer_address, token, parent_pid, hook, close_fds, reader, boot_time, heartbeat) -> None:
    _close_inherited(close_fds)
    set_process_name("fleetmon-quar" if index < 0 else f"fleetmon-w{index}")
    worker_mod.run(index, control, heartbeat, writer_address, token, parent_pid, hook, reader=reader, boot_time=boot_time)


def start_writer(child: Child, state_root: str, config, listener, token: str, close_fds: list[int], clock=None) -> None:
    child.start(_writer_entry, (state_root, config, listener, token, os.getpid(), close_fds, clock), 2)


def _writer_entry(state_root, config, listener, token, parent_pid, close_fds, clock, heartbeat) -> None:
    # numpy (the writer's fast path) starts a pool of BLAS threads when imported, one per CPU, which
    # the writer never uses: idle threads, and a SIGKILLed writer not reapable until they are gone.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    from fleetmon.store import writer

    _close_inherited(close_fds)
    set_process_name("fleetmon-writer")
    writer.run(state_root, config, listener, token, heartbeat, parent_pid, clock)


def set_process_name(name: str) -> None:
    """The name ``ps -o comm``, top and /proc/PID/comm show (15 bytes at most), so that the writer
    and each worker can be told apart there: their command lines are the supervisor's."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def _close_inherited(fds: list[int]) -> None:
    """Close the supervisor's ends of other channels that fork copied into this child."""
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:
        pass
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def stop_all(children: list[Child], grace: float) -> list:
    """TERM, then KILL after ``grace`` seconds; waits until every child is reaped, or left behind
    when SIGKILL does not end it either within ``KILL_GRACE`` (blocked in the kernel). Returns the
    processes left behind (``Child.abandon``), for the caller to reap when they end."""
    left: list = []
    deadline = time.monotonic() + grace
    for c in children:
        c.kill(signal.SIGTERM)
    killed = False
    while any(c.alive for c in children):
        now = time.monotonic()
        if now >= deadline and not killed:
            for c in children:
                if c.alive:
                    logger.warning("{} (pid {}) did not stop within {:.0f}s: killing it", c.name, c.pid, grace)
                    c.killing_since = None  # (counts from the SIGKILL now)
                    c.kill(signal.SIGKILL)
            killed = True
        for c in children:
            if killed and c.unkillable(now):
                logger.error("{} (pid {}, state {}) did not die after SIGKILL: left behind", c.name, c.pid, c.proc_state())
                left.append((c.abandon(), c.name, []))
        live = [c.proc.sentinel for c in children if c.alive]
        if live:
            mp_connection.wait(live, timeout=0.1)
    for c in children:
        if c.proc is not None:
            c.proc.join(0)
    return left


def drain(workers: list[Child], timeout: float) -> list:
    """Wait up to ``timeout`` for workers that were sent Stop to finish their tick and exit, keeping
    their control channels flowing; then TERM/KILL whatever is left (``stop_all``)."""
    deadline = time.monotonic() + timeout
    live = [w for w in workers if w.alive]
    while live and time.monotonic() < deadline:
        for w in live:
            if w.ctl is not None and w.ctl.want_write:
                try:
                    w.ctl.flush()
                except channel.ChannelClosed:
                    pass
        mp_connection.wait([w.proc.sentinel for w in live], timeout=0.1)
        live = [w for w in live if w.alive]
    return stop_all(workers, grace=1.0)
