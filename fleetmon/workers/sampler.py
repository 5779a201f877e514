"""Reading one agent's process, and the one place where read errors are translated.

A process is ``(pid, create_time)``: its start time is checked against the one first seen at every
tick, so a reused pid is never sampled as the agent. Two readers give the same numbers:

- ``procfs`` (Linux, the default there): ``stat``, ``io`` and the ``fd`` directory's size straight
  from ``/proc`` (``fleetmon.workers.procfs``), about half psutil's CPU per sample;
- ``psutil`` (everywhere; ``reader = "psutil"`` in the config on Linux): the ``psutil.Process`` is
  kept across ticks (so cpu has a baseline) and every metric is read inside ``oneshot()``.
"""

from __future__ import annotations

import os
import stat
import time

import psutil
from loguru import logger

from fleetmon.units import whole_number
from fleetmon.wire import AgentRef, BootClock, Gone, Sample
from fleetmon.workers import procfs

HAS_NUM_FDS = hasattr(psutil.Process, "num_fds")  # False on Windows
MAX_PID = 2**31 - 1  # pid_t
READERS = ("auto", "procfs", "psutil")


def resolve_reader(name: str) -> str:
    """``auto`` -> ``procfs`` where /proc is there to read, else ``psutil``."""
    if name == "auto":
        return "procfs" if procfs.available() else "psutil"
    return name


def boot_clock(previous: BootClock | None, proc: procfs.Reader | None = None) -> BootClock | None:
    """The clock process start times count from (``wire.BootClock``): ``previous`` (what an earlier
    daemon recorded) when it is of this boot, else this boot's, read now. None where /proc cannot
    say: start times are psutil's there."""
    try:
        proc = proc or procfs.Reader()
        boot_id = proc.boot_id()
        if previous is not None and previous.boot_id == boot_id:
            return previous
        return BootClock(boot_id, proc.boot_time())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


class Tracked:
    """What a worker remembers about one agent between ticks."""

    __slots__ = ("proc", "pid", "start_key", "create_time", "cpu_total", "cpu_at", "warned_denied")

    def __init__(self, proc: psutil.Process | None, pid: int, start_key: object, create_time: float):
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


def check_pidfile(path: str) -> tuple[int | None, str | None]:
    """``(pid, None)``, or ``(None, what is wrong with the file)`` for the log: missing, empty, not a
    regular file, not a positive integer. Opened non-blocking: a FIFO named as a pidfile must not
    hang the worker."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, "is missing"
    except OSError as exc:
        return None, f"cannot be opened ({exc.strerror})"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None, "is not a regular file"
        text = os.read(fd, 64).split(b"\n", 1)[0].strip()
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror})"
    finally:
        os.close(fd)
    try:
        pid = whole_number(text)
    except ValueError:
        return None, f"does not hold a pid: {text[:32]!r}" if text else "is empty"
    if not 0 < pid <= MAX_PID:  # a larger number is no pid (and would not fit the wire)
        return None, f"does not hold a pid: {pid} is out of range"
    return pid, None


def _kind(problem: str | None) -> str | None:
    """What is wrong with a pidfile, without what it holds (a file caught mid-write, holding other
    garbage each tick, is logged once)."""
    return problem.split(":", 1)[0] if problem else None


class Sampler:
    """Samples a shard of agents. One per worker; keeps a ``Tracked`` per agent id."""

    def __init__(
        self,
        has_num_fds: bool = HAS_NUM_FDS,
        reader: str = "auto",
        proc: procfs.Reader | None = None,
        boot_time: float | None = None,
    ):
        self.tracked: dict[str, Tracked] = {}
        self.has_num_fds = has_num_fds
        self._fds_note_logged = False
        self.reader = resolve_reader(reader)
        if self.reader == "procfs" and proc is None:
            proc = procfs.Reader()
        self.proc = proc if self.reader == "procfs" else None
        # What start times count from: the supervisor's ``BootClock`` (the same in every worker and
        # every daemon of this boot), or else the boot time read once, at the first process seen.
        # Never read again: a clock step moves it, and the same process would get a new start time.
        self._boot = boot_time
        self._parse_error_logged = False
        self.pidfile_problems: dict[str, str] = {}  # agent id -> what is wrong with its pidfile (logged)
        self.threads_named: set[tuple[str, int]] = set()  # (agent, thread id) logged as not a process

    def forget_except(self, agent_ids: set[str]) -> None:
        for agent_id in [a for a in self.tracked if a not in agent_ids]:
            del self.tracked[agent_id]
        for agent_id in [a for a in self.pidfile_problems if a not in agent_ids]:
            del self.pidfile_problems[agent_id]
        self.threads_named = {(a, tid) for a, tid in self.threads_named if a in agent_ids}

    def _pidfile_changed(self, ref: AgentRef, pid: int | None, problem: str | None) -> None:
        """A pidfile that does not give a pid is logged once (WARNING, naming the file and what is
        wrong), and again only when the kind of problem changes; one that gives a pid again, once."""
        log = logger.bind(agent_id=ref.id, pidfile=ref.pidfile)
        if problem is not None:
            t = self.tracked.get(ref.id)
            then = (
                f"still sampling pid {t.pid}, the process it named last, while that runs" if t is not None
                else f"sampling pid {ref.last_pid}, the process it ran as when last recorded, while that runs"
                if ref.last_pid is not None
                else "not sampled until fleetmon can read it" if problem.startswith("cannot be")
                else "not sampled until it holds a pid"
            )
            log.warning("agent {}: pidfile {} {}: {}", ref.id, ref.pidfile, problem, then)
            self.pidfile_problems[ref.id] = problem
        else:
            log.info("agent {}: pidfile {} holds a pid again ({})", ref.id, ref.pidfile, pid)
            del self.pidfile_problems[ref.id]

    def sample(self, ref: AgentRef) -> Sample | Gone:
        now = time.time()
        if ref.pid is not None:
            pid = ref.pid
        else:
            pid, problem = check_pidfile(ref.pidfile or "")
            if _kind(problem) != _kind(self.pidfile_problems.get(ref.id)):
                self._pidfile_changed(ref, pid, problem)
            if pid is None:
                # Rewritten in place (caught empty), or removed before its process exits: the process
                # it named last is still the agent while it runs (the same start time); its alerts
                # stay open. Once it is gone, so is the agent.
                # A worker that has not sampled it yet follows the process the writer last recorded
                # (``last_pid``), if that one still runs (the same start time).
                held = self.tracked.get(ref.id)
                if held is not None:
                    last = AgentRef(ref.id, held.pid, None, ref.known_pid, ref.known_start)
                elif ref.last_pid is not None and ref.last_start is not None:
                    last = AgentRef(ref.id, ref.last_pid, None, ref.last_pid, ref.last_start)
                else:
                    return Gone(ref.id, None, now, "no_pidfile")
                result = self.sample(last)
                if type(result) is Gone or (held is None and not result.create_time):  # (last: only if it is that process)
                    self.tracked.pop(ref.id, None)
                    return Gone(ref.id, None, now, "no_pidfile")
                return result
        t = self.tracked.get(ref.id)
        if t is not None and t.pid != pid:
            t = None  # the agent moved to a new process (pidfile rewritten or re-registered)
        elif t is not None and ref.known_pid == pid and ref.known_start is not None and abs(t.create_time - ref.known_start) > 0.05:
            t = None  # the writer says the agent was another process at this pid: check again below
        try:
            if t is None:
                group = self._thread_group(pid)
                if group is not None:
                    self._not_a_process(ref, pid, group)
                    return Gone(ref.id, pid, now, "no_process")
                t = self._first_sight(pid)
                if ref.known_pid == pid and ref.known_start is not None and abs(t.create_time - ref.known_start) > 0.05:
                    # The writer told us who this pid belonged to; the process there now is a stranger.
                    self.tracked[ref.id] = Tracked(t.proc, pid, object(), ref.known_start)
                    return Gone(ref.id, pid, now, "reused")
                self.tracked[ref.id] = t
            if self.proc is not None:
                return self._read_procfs(ref.id, t, now)
            return self._read(ref.id, t, now)
        except (FileNotFoundError, ProcessLookupError, psutil.NoSuchProcess, psutil.ZombieProcess):
            return Gone(ref.id, pid, now, "no_process")
        except (PermissionError, psutil.AccessDenied):
            # Even the stat file is refused: nothing can be read, not even the identity.
            return Sample(ref.id, pid, 0.0, now, None, None, None, None, None, None, None, ("all",))
        except ValueError as exc:
            # /proc content we cannot parse (a kernel we do not know, a truncated read): recorded as
            # unreadable, never a dead worker. Logged once per worker.
            if not self._parse_error_logged:
                self._parse_error_logged = True
                logger.bind(agent_id=ref.id, pid=pid).error(
                    "cannot parse /proc of agent {} (pid {}): {}: recorded as null (reader {}; try reader = \"psutil\")",
                    ref.id, pid, exc, self.reader,
                )
            return Sample(ref.id, pid, 0.0, now, None, None, None, None, None, None, None, ("all",))

    def _thread_group(self, pid: int) -> int | None:
        """The process whose thread ``pid`` is, or None: a process, gone, or no way to tell. A
        thread id answers in /proc like a process (the process's figures), and ends with the thread."""
        return procfs.thread_group(pid, self.proc.root if self.proc is not None else "/proc")

    def _not_a_process(self, ref: AgentRef, tid: int, group: int) -> None:
        if (ref.id, tid) not in self.threads_named:
            self.threads_named.add((ref.id, tid))
            where = f"its pidfile {ref.pidfile} holds pid" if ref.pidfile else "registered pid"
            logger.bind(agent_id=ref.id, pid=tid).warning(
                "agent {}: {} {}, a thread of process {}, not a process: not sampled (register pid {}, or a "
                "pidfile holding it)", ref.id, where, tid, group, group,
            )

    def _first_sight(self, pid: int) -> Tracked:
        """Who is at ``pid`` now: its start time as the kernel states it, and as seconds since the
        epoch (psutil's ``create_time()``: ticks since boot plus the boot time)."""
        if self.proc is not None:
            key = self.proc.stat(pid)[0]
            return Tracked(None, pid, key, key / procfs.CLK_TCK + self._boot_time())
        proc = psutil.Process(pid)
        with proc.oneshot():
            key = _start_key(proc)
            if isinstance(key, bytes | int):  # Linux: ticks since boot, counted as the procfs reader does
                create_time = int(key) / procfs.CLK_TCK + self._boot_time()
            else:
                create_time = proc.create_time()
        return Tracked(proc, pid, key, create_time)

    def _boot_time(self) -> float:
        if self._boot is None:
            self._boot = self.proc.boot_time() if self.proc is not None else psutil.boot_time()
        return self._boot

    def _read_procfs(self, agent_id: str, t: Tracked, now: float) -> Sample | Gone:
        reader, pid = self.proc, t.pid
        start, state, ticks, threads = reader.stat(pid)  # type: ignore[union-attr]
        if start != t.start_key:
            return Gone(agent_id, pid, now, "reused")
        if state == b"Z" or state == b"X":
            return Gone(agent_id, pid, now, "no_process")
        total, mono = ticks / procfs.CLK_TCK, time.monotonic()
        cpu = None
        if t.cpu_total is not None and mono > t.cpu_at:
            cpu = max(0.0, (total - t.cpu_total) / (mono - t.cpu_at) * 100.0)
        t.cpu_total, t.cpu_at = total, mono
        denied: list[str] = []
        rss = vms = rd = wr = fds = None
        try:
            rss, vms = reader.memory(pid)  # type: ignore[union-attr]
        except PermissionError:
            denied.append("memory")
        try:
            io = reader.io(pid)  # type: ignore[union-attr]
            if io is not None:
                rd, wr = io
        except PermissionError:
            denied.append("disk")
        try:
            fds = reader.num_fds(pid)  # type: ignore[union-attr]
        except PermissionError:
            denied.append("open_files")
        if denied:
            self._warn_denied(agent_id, t, denied)
        return Sample(agent_id, pid, t.create_time, now, cpu, rss, vms, rd, wr, fds, threads, tuple(denied), total)

    def _warn_denied(self, agent_id: str, t: Tracked, denied: list[str]) -> None:
        if not t.warned_denied:
            t.warned_denied = True
            logger.bind(agent_id=agent_id, pid=t.pid).warning(
                "access denied reading {} of agent {} (pid {}): recorded as null (run fleetmon as the agents' user or root)",
                ", ".join(denied),
                agent_id,
                t.pid,
            )

    def _read(self, agent_id: str, t: Tracked, now: float) -> Sample | Gone:
        proc = t.proc
        assert proc is not None
        denied: list[str] = []
        with proc.oneshot():
            key, zombie = _identity(proc)
            if key != t.start_key:
                return Gone(agent_id, t.pid, now, "reused")
            if zombie:
                return Gone(agent_id, t.pid, now, "no_process")
            cpu = total = None
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
        if denied:
            self._warn_denied(agent_id, t, denied)
        return Sample(agent_id, t.pid, t.create_time, now, cpu, rss, vms, rd, wr, fds, threads, tuple(denied), total)

