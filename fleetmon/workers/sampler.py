"""Reading one agent's process with psutil, and the one place where psutil errors are translated.

A process is ``(pid, create_time)``: the ``psutil.Process`` is kept across ticks (so cpu has a
baseline), every metric is read inside ``oneshot()``, and the process's start time is checked against
the one first seen at every tick, so a reused pid is never sampled as the agent.
"""

from __future__ import annotations

import os
import stat
import time

import psutil
from loguru import logger

from fleetmon.wire import AgentRef, Gone, Sample

HAS_NUM_FDS = hasattr(psutil.Process, "num_fds")  # False on Windows
MAX_PID = 2**31 - 1  # pid_t


class Tracked:
    """What a worker remembers about one agent between ticks."""

    __slots__ = ("proc", "pid", "start_key", "create_time", "cpu_total", "cpu_at", "warned_denied")

    def __init__(self, proc: psutil.Process, pid: int, start_key: object, create_time: float):
        self.proc = proc
        self.pid = pid
        self.start_key = start_key
        self.create_time = create_time
        self.cpu_total: float | None = None
        self.cpu_at = 0.0
        self.warned_denied = False


def _start_key(proc: psutil.Process) -> object:
    """The process's start time as the kernel states it, read from the stat file that ``oneshot()``
    has already cached (no extra read). Falls back to a fresh public read elsewhere."""
    try:
        return proc._proc._parse_stat_file()["create_time"]  # Linux: jiffies since boot, exact
    except AttributeError:
        return psutil.Process(proc.pid).create_time()


def _identity(proc: psutil.Process) -> tuple[object, bool]:
    """(start key, is a zombie) in one look at the stat file ``oneshot()`` caches (Linux); the
    public API elsewhere."""
    try:
        stat = proc._proc._parse_stat_file()
    except AttributeError:
        return psutil.Process(proc.pid).create_time(), proc.status() == psutil.STATUS_ZOMBIE
    return stat["create_time"], stat["status"] == b"Z"


def read_pidfile(path: str) -> int | None:
    """The pid in a pidfile, or None when it is missing, empty, not a regular file or not a positive
    integer. Opened non-blocking: a FIFO named as a pidfile must not hang the worker."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            text = os.read(fd, 64).split(b"\n", 1)[0].strip()
        finally:
            os.close(fd)
        pid = int(text)
    except (OSError, ValueError):
        return None
    return pid if 0 < pid <= MAX_PID else None  # a larger number is no pid (and would not fit the wire)


class Sampler:
    """Samples a shard of agents. One per worker; keeps a ``Tracked`` per agent id."""

    def __init__(self, has_num_fds: bool = HAS_NUM_FDS):
        self.tracked: dict[str, Tracked] = {}
        self.has_num_fds = has_num_fds
        self._fds_note_logged = False

    def forget_except(self, agent_ids: set[str]) -> None:
        for agent_id in [a for a in self.tracked if a not in agent_ids]:
            del self.tracked[agent_id]

    def sample(self, ref: AgentRef) -> Sample | Gone:
        now = time.time()
        pid = ref.pid if ref.pid is not None else read_pidfile(ref.pidfile or "")
        if pid is None:
            return Gone(ref.id, None, now, "no_pidfile")
        t = self.tracked.get(ref.id)
        if t is not None and t.pid != pid:
            t = None  # the agent moved to a new process (pidfile rewritten or re-registered)
        elif t is not None and ref.known_pid == pid and ref.known_start is not None and abs(t.create_time - ref.known_start) > 0.05:
            t = None  # the writer says the agent was another process at this pid: check again below
        try:
            if t is None:
                proc = psutil.Process(pid)
                with proc.oneshot():
                    key = _start_key(proc)
                    create_time = proc.create_time()
                if ref.known_pid == pid and ref.known_start is not None and abs(create_time - ref.known_start) > 0.05:
                    # The writer told us who this pid belonged to; the process there now is a stranger.
                    t = Tracked(proc, pid, object(), ref.known_start)
                    self.tracked[ref.id] = t
                    return Gone(ref.id, pid, now, "reused")
                t = Tracked(proc, pid, key, create_time)
                self.tracked[ref.id] = t
            return self._read(ref.id, t, now)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return Gone(ref.id, pid, now, "no_process")
        except psutil.AccessDenied:
            # Even the stat file is refused: nothing can be read, not even the identity.
            return Sample(ref.id, pid, 0.0, now, None, None, None, None, None, None, None, ("all",))

    def _read(self, agent_id: str, t: Tracked, now: float) -> Sample | Gone:
        proc = t.proc
        denied: list[str] = []
        with proc.oneshot():
            key, zombie = _identity(proc)
            if key != t.start_key:
                return Gone(agent_id, t.pid, now, "reused")
            if zombie:
                return Gone(agent_id, t.pid, now, "no_process")
            cpu = None
            try:
                times = proc.cpu_times()
                total = times.user + times.system
                mono = time.monotonic()
                if t.cpu_total is not None and mono > t.cpu_at:
                    cpu = max(0.0, (total - t.cpu_total) / (mono - t.cpu_at) * 100.0)
                t.cpu_total, t.cpu_at = total, mono
            except psutil.AccessDenied:
                denied.append("cpu")
            rss = vms = None
            try:
                mem = proc.memory_info()
                rss, vms = mem.rss, mem.vms
            except psutil.AccessDenied:
                denied.append("memory")
            rd = wr = None
            try:
                io = proc.io_counters()
                rd, wr = io.read_bytes, io.write_bytes
            except psutil.AccessDenied:
                denied.append("disk")
            except (AttributeError, NotImplementedError):
                pass
            fds = None
            if self.has_num_fds:
                try:
                    fds = proc.num_fds()
                except psutil.AccessDenied:
                    denied.append("open_files")
            elif not self._fds_note_logged:
                self._fds_note_logged = True
                logger.debug("open_files is not available on this platform: recorded as null")
            threads = None
            try:
                threads = proc.num_threads()
            except psutil.AccessDenied:
                denied.append("num_threads")
        if denied and not t.warned_denied:
            t.warned_denied = True
            logger.bind(agent_id=agent_id, pid=t.pid).warning(
                "access denied reading {} of agent {} (pid {}): recorded as null (run fleetmon as the agents' user or root)",
                ", ".join(denied),
                agent_id,
                t.pid,
            )
        return Sample(agent_id, t.pid, t.create_time, now, cpu, rss, vms, rd, wr, fds, threads, tuple(denied))

