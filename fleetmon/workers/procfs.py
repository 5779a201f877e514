"""Reading one process's metrics straight from ``/proc`` (Linux): the fast path of the sampler.

psutil reads five files for the metrics fleetmon keeps (``stat``, ``statm``, ``status``, ``io`` and
a listing of ``fd``), each through a wrapper that translates errors and caches inside ``oneshot()``.
The same numbers are in fewer places: ``stat`` has the start time, state, cpu times and the thread
count (``status``'s ``Threads`` is the same counter), ``statm`` the memory (not ``stat``'s ``rss``,
which recent kernels fill from a per-CPU approximation that can be some hundred KiB off VmRSS), ``io``
the disk bytes, and since Linux 6.2 the size that ``stat(2)`` reports for the ``fd`` directory is
the number of open descriptors (on older kernels the directory is listed, as psutil does). So a
sample is three small reads and one ``stat``, parsed the way psutil parses them (``_pslinux.py``),
at about a third of the CPU of psutil's loop (``benchmarks/fleet.py``).

Errors are the kernel's: ``FileNotFoundError``/``ProcessLookupError`` mean the process is gone,
``PermissionError`` that this metric is refused. ``fleetmon.workers.sampler`` translates them.
"""

from __future__ import annotations

import os
import sys

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGESIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


def available(root: str = "/proc") -> bool:
    """True where this reader works: Linux with procfs mounted (psutil is used elsewhere)."""
    return sys.platform.startswith("linux") and os.path.exists(f"{root}/self/stat")


def _read(path: str) -> bytes:
    fd = os.open(path, _FLAGS)
    try:
        return os.read(fd, 8192)
    finally:
        os.close(fd)


def parse_stat(data: bytes) -> tuple[int, bytes, int, int]:
    """``/proc/<pid>/stat`` -> (start time in clock ticks since boot, state letter, utime + stime in
    clock ticks, threads). The command name sits between the first ``(`` and the last ``)`` and may
    hold spaces and parentheses, so fields are counted from the last ``)``: field N of proc(5) is
    ``fields[N - 3]``."""
    fields = data[data.rfind(b")") + 2 :].split()
    if len(fields) < 20:
        raise ValueError(f"short stat line: {data[:200]!r}")
    return (
        int(fields[19]),  # 22 starttime
        fields[0],  # 3 state
        int(fields[11]) + int(fields[12]),  # 14 utime + 15 stime
        int(fields[17]),  # 20 num_threads
    )


def parse_statm(data: bytes) -> tuple[int, int]:
    """``/proc/<pid>/statm`` -> (rss, vms) in bytes, as psutil's ``memory_info()``."""
    size, resident = data.split(None, 2)[:2]
    return int(resident) * PAGESIZE, int(size) * PAGESIZE


def _field(data: bytes, name: bytes) -> int:
    at = data.find(name)
    if at < 0:
        raise ValueError(f"no {name!r} in {data[:200]!r}")
    at += len(name)
    end = data.find(b"\n", at)
    return int(data[at : end if end >= 0 else len(data)])


def parse_io(data: bytes) -> tuple[int, int]:
    """``/proc/<pid>/io`` -> (read_bytes, write_bytes): what reached the storage layer, as psutil's
    ``io_counters()`` reports them."""
    return _field(data, b"\nread_bytes: "), _field(data, b"\nwrite_bytes: ")


def tgid(pid: int, root: str = "/proc") -> int:
    """The process (thread group) that ``pid`` belongs to: ``pid`` itself for a process, another
    number for one of its threads (/proc/<tid>/ answers for a thread id too, with the process's
    figures). Raises FileNotFoundError when nothing has that id."""
    data = _read(f"{root}/{pid}/status")
    at = data.find(b"\nTgid:")
    if at < 0:
        raise ValueError(f"no Tgid in {root}/{pid}/status")
    end = data.find(b"\n", at + 6)
    return int(data[at + 6 : end if end >= 0 else len(data)])


def thread_group(pid: int, root: str = "/proc") -> int | None:
    """The process whose thread ``pid`` is, or None: a process, gone, unreadable, or not Linux."""
    if not available(root):
        return None
    try:
        group = tgid(pid, root)
    except (OSError, ValueError):
        return None
    return group if group != pid else None


class Reader:
    """The three reads of one sample, against a procfs mounted at ``root`` (tests use a fake tree)."""

    def __init__(self, root: str = "/proc", fd_count_in_size: bool | None = None):
        self.root = root
        self.has_io = os.path.exists(f"{root}/self/io")  # absent without CONFIG_TASK_IO_ACCOUNTING
        # Linux >= 6.2 reports the number of open descriptors as the size of the fd directory (and
        # to any user, where listing it needs the owner's rights); older kernels report 0.
        self.fd_count_in_size = _fd_count_in_size(root) if fd_count_in_size is None else fd_count_in_size

    def stat(self, pid: int) -> tuple[int, bytes, int, int]:
        return parse_stat(_read(f"{self.root}/{pid}/stat"))

    def memory(self, pid: int) -> tuple[int, int]:
        return parse_statm(_read(f"{self.root}/{pid}/statm"))

    def io(self, pid: int) -> tuple[int, int] | None:
        if not self.has_io:
            return None
        return parse_io(_read(f"{self.root}/{pid}/io"))

    def num_fds(self, pid: int) -> int:
        path = f"{self.root}/{pid}/fd"
        if self.fd_count_in_size:
            return os.stat(path).st_size
        return len(os.listdir(path))

    def boot_id(self) -> str:
        """This boot's id (``/proc/sys/kernel/random/boot_id``): a new one at every boot."""
        with open(f"{self.root}/sys/kernel/random/boot_id", "rb") as f:
            value = f.read(64).strip().decode("ascii")
        if not value:
            raise ValueError(f"empty {self.root}/sys/kernel/random/boot_id")
        return value

    def boot_time(self) -> float:
        """Seconds since the epoch at boot (``btime`` of ``/proc/stat``), as psutil's
        ``boot_time()``: a start time in ticks plus this is psutil's ``create_time()``. The whole
        file is read (with many CPUs and interrupts it is far longer than one page) and the line
        must be whole."""
        with open(f"{self.root}/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime ") and line.endswith(b"\n"):
                    return float(line.split()[1])
        raise ValueError(f"no btime line in {self.root}/stat")


def _fd_count_in_size(root: str) -> bool:
    """Whether this kernel reports the number of open descriptors as the size of ``/proc/<pid>/fd``
    (Linux 6.2+): checked against a listing of our own, which opens one descriptor more."""
    path = f"{root}/self/fd"
    for _ in range(3):  # another thread may open or close a descriptor in between: look again
        try:
            size = os.stat(path).st_size
            listed = len(os.listdir(path))
        except OSError:
            return False
        if size <= 0:
            return False
        if size == listed - 1:
            return True
    return False
