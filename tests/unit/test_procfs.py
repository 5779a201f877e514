"""Parsing /proc content (fleetmon.workers.procfs) on fake files: command names with spaces and
parentheses, the io file's fields, the fd count from a listing on kernels without it in st_size."""

from __future__ import annotations

import os
import re

import pytest

from fleetmon.wire import AgentRef, BootClock, Gone, Sample
from fleetmon.workers import procfs
from fleetmon.workers import sampler as sampler_mod
from fleetmon.workers.sampler import Sampler

PAGE = procfs.PAGESIZE


def stat_line(pid: int, comm: str, state: str = "S", utime: int = 250, stime: int = 50, threads: int = 3, start: int = 123456, vsize: int = 10 << 20, rss_pages: int = 290) -> bytes:
    # Fields 3..52 of proc(5); the ones fleetmon reads are set, the rest are plausible numbers.
    fields = [state, "1", "1", "1", "0", "-1", "4194304", "10", "0", "0", "0", str(utime), str(stime), "0", "0", "20", "0", str(threads), "0", str(start), str(vsize), str(rss_pages)]
    fields += ["18446744073709551615"] + ["0"] * 27
    return f"{pid} ({comm}) {' '.join(fields)}\n".encode()


STATM = b"2560 300 100 10 0 500 0\n"
IO = b"rchar: 100\nwchar: 200\nsyscr: 3\nsyscw: 4\nread_bytes: 4096\nwrite_bytes: 8192\ncancelled_write_bytes: 0\n"


@pytest.mark.parametrize("comm", ["sleep", "my agent", "a) (b", "x)", ") S 1 2 3 (", ""])
def test_parse_stat_counts_fields_from_the_last_parenthesis(comm):
    assert procfs.parse_stat(stat_line(42, comm)) == (123456, b"S", 300, 3)


def test_parse_stat_zombie_and_short_line():
    assert procfs.parse_stat(stat_line(1, "z", state="Z"))[1] == b"Z"
    with pytest.raises(ValueError):
        procfs.parse_stat(b"42 (x) S 1 2 3\n")


def test_parse_statm_is_rss_and_vms_in_bytes():
    assert procfs.parse_statm(STATM) == (300 * PAGE, 2560 * PAGE)


def test_parse_io_reads_storage_bytes_not_chars():
    assert procfs.parse_io(IO) == (4096, 8192)
    with pytest.raises(ValueError):
        procfs.parse_io(b"rchar: 1\n")


def fake_proc(root, pid: int, comm: str = "agent", nfds: int = 5, **stat) -> None:
    (root / "self").mkdir(parents=True, exist_ok=True)
    (root / "self" / "stat").write_bytes(stat_line(1, "self"))
    (root / "self" / "io").write_bytes(IO)
    (root / "stat").write_bytes(b"cpu  1 2 3 4\ncpu0 1 2 3 4\nintr 0\nctxt 5\nbtime 1700000000\nprocesses 9\n")
    d = root / str(pid)
    (d / "fd").mkdir(parents=True, exist_ok=True)
    for i in range(nfds):
        (d / "fd" / str(i)).write_text("")
    (d / "stat").write_bytes(stat_line(pid, comm, **stat))
    (d / "io").write_bytes(IO)
    (d / "statm").write_bytes(STATM)


def test_sampler_on_a_fake_proc_tree(tmp_path):
    fake_proc(tmp_path, 4242, comm="weird ) name", nfds=7, utime=100, stime=0)
    reader = procfs.Reader(str(tmp_path), fd_count_in_size=False)
    s = Sampler(reader="procfs", proc=reader)
    first = s.sample(AgentRef("a", 4242))
    assert isinstance(first, Sample)
    assert first.create_time == pytest.approx(1700000000 + 123456 / procfs.CLK_TCK)
    assert (first.memory_rss, first.memory_vms, first.num_threads, first.open_files) == (300 * PAGE, 2560 * PAGE, 3, 7)
    assert (first.disk_read_bytes, first.disk_write_bytes, first.cpu) == (4096, 8192, None)
    # Another process at the same pid (another start time) is never sampled as the agent.
    fake_proc(tmp_path, 4242, start=999999)
    g = s.sample(AgentRef("a", 4242))
    assert isinstance(g, Gone) and g.reason == "reused"


def set_btime(root, btime: int) -> None:
    (root / "stat").write_bytes(f"cpu  1 2 3 4\nbtime {btime}\nprocesses 9\n".encode())


def set_boot_id(root, boot_id: str) -> None:
    (root / "sys" / "kernel" / "random").mkdir(parents=True, exist_ok=True)
    (root / "sys" / "kernel" / "random" / "boot_id").write_text(boot_id + "\n")


def test_a_clock_step_does_not_change_a_start_time(tmp_path):
    """btime moves with the wall clock (NTP stepping it, a resumed VM). A start time computed from a
    fresh read of it would differ for the same process, and the writer would take the agent's own
    process for a stranger at its pid (pid reuse): marked exited, never sampled again."""
    fake_proc(tmp_path, 4242, start=5000)
    set_boot_id(tmp_path, "boot-1")
    reader = procfs.Reader(str(tmp_path), fd_count_in_size=False)
    s = Sampler(reader="procfs", proc=reader)
    before = s.sample(AgentRef("a", 4242)).create_time
    assert before == pytest.approx(1700000000 + 5000 / procfs.CLK_TCK)
    set_btime(tmp_path, 1700000002)  # the clock stepped 2 s forward
    # the same worker, the agent seen afresh (it was re-registered, say)...
    assert s.sample(AgentRef("b", 4242)).create_time == before
    # ...and a new worker (or daemon) of this boot, given the clock the supervisor recorded
    clock = sampler_mod.boot_clock(BootClock("boot-1", 1700000000.0), proc=reader)
    assert clock == BootClock("boot-1", 1700000000.0)
    fresh = Sampler(reader="procfs", proc=reader, boot_time=clock.boot_time)
    assert fresh.sample(AgentRef("a", 4242, None, 4242, before)).create_time == before  # not "reused"
    # without it, a fresh read counts from the stepped clock: the very mismatch
    assert Sampler(reader="procfs", proc=reader).sample(AgentRef("c", 4242)).create_time == before + 2


def test_boot_clock_is_the_recorded_one_only_in_the_same_boot(tmp_path):
    fake_proc(tmp_path, 1)
    reader = procfs.Reader(str(tmp_path), fd_count_in_size=False)
    assert sampler_mod.boot_clock(None, proc=reader) is None  # no boot_id to tell the boot by
    set_boot_id(tmp_path, "boot-1")
    assert sampler_mod.boot_clock(None, proc=reader) == BootClock("boot-1", 1700000000.0)
    recorded = BootClock("boot-1", 1699999998.0)
    assert sampler_mod.boot_clock(recorded, proc=reader) is recorded
    # another boot: counted from this one's boot time
    assert sampler_mod.boot_clock(BootClock("boot-0", 1600000000.0), proc=reader) == BootClock("boot-1", 1700000000.0)


def test_cpu_is_cpu_time_over_elapsed_time(tmp_path, monkeypatch):
    """One second of cpu (CLK_TCK ticks) over two seconds of the sampler's clock: 50% of one CPU."""
    fake_proc(tmp_path, 4242, utime=100, stime=0)
    s = Sampler(reader="procfs", proc=procfs.Reader(str(tmp_path), fd_count_in_size=False))
    clock = iter([1000.0, 1002.0, 1003.0])  # one per sample
    monkeypatch.setattr(sampler_mod.time, "monotonic", lambda: next(clock))
    assert s.sample(AgentRef("a", 4242)).cpu is None
    fake_proc(tmp_path, 4242, utime=100 + procfs.CLK_TCK // 2, stime=procfs.CLK_TCK // 2)
    assert s.sample(AgentRef("a", 4242)).cpu == pytest.approx(50.0)
    assert s.sample(AgentRef("a", 4242)).cpu == 0.0  # no cpu used in the last second


def test_btime_found_past_the_first_page_and_only_whole(tmp_path):
    fake_proc(tmp_path, 1)
    intr = b"intr " + b" ".join(b"123456" for _ in range(3000)) + b"\n"  # ~21 KB, as on a big host
    (tmp_path / "stat").write_bytes(b"cpu  1 2 3 4\n" + intr + b"ctxt 5\nbtime 1700000000\nprocesses 9\n")
    assert procfs.Reader(str(tmp_path), fd_count_in_size=False).boot_time() == 1700000000.0
    (tmp_path / "stat").write_bytes(b"cpu  1 2 3 4\n" + intr + b"ctxt 5\nbtime 17")  # cut in the middle
    with pytest.raises(ValueError):
        procfs.Reader(str(tmp_path), fd_count_in_size=False).boot_time()


def test_unparsable_proc_is_recorded_as_unreadable_and_logged_once(tmp_path):
    from loguru import logger

    records = []
    sink = logger.add(lambda m: records.append(m.record), level="DEBUG")
    try:
        fake_proc(tmp_path, 4242)
        fake_proc(tmp_path, 4243)
        (tmp_path / "stat").write_bytes(b"cpu  1 2 3 4\n")  # no btime: the start time cannot be known
        s = Sampler(reader="procfs", proc=procfs.Reader(str(tmp_path), fd_count_in_size=False))
        results = [s.sample(AgentRef(a, pid)) for a, pid in (("a", 4242), ("b", 4243), ("a", 4242))]
    finally:
        logger.remove(sink)
    assert all(isinstance(r, Sample) and r.denied == ("all",) and r.memory_rss is None for r in results)
    errors = [r for r in records if r["level"].name == "ERROR"]
    assert len(errors) == 1 and "cannot parse /proc" in errors[0]["message"]


def test_no_io_accounting_is_null_not_denied(tmp_path):
    fake_proc(tmp_path, 4242)
    (tmp_path / "self" / "io").unlink()  # a kernel without CONFIG_TASK_IO_ACCOUNTING
    r = Sampler(reader="procfs", proc=procfs.Reader(str(tmp_path), fd_count_in_size=False)).sample(AgentRef("a", 4242))
    assert isinstance(r, Sample) and (r.disk_read_bytes, r.disk_write_bytes, r.denied) == (None, None, ())
    assert r.memory_rss == 300 * PAGE


def test_fd_count_in_size_is_detected_only_where_it_matches_a_listing(tmp_path):
    fake_proc(tmp_path, 4242, nfds=5)
    (tmp_path / "self" / "fd").mkdir()
    assert procfs.Reader(str(tmp_path)).fd_count_in_size is False  # a plain directory's size is no count


def test_zombie_and_vanished_on_a_fake_tree(tmp_path):
    fake_proc(tmp_path, 7, state="Z")
    reader = procfs.Reader(str(tmp_path), fd_count_in_size=False)
    assert Sampler(reader="procfs", proc=reader).sample(AgentRef("z", 7)).reason == "no_process"
    assert Sampler(reader="procfs", proc=reader).sample(AgentRef("n", 8)).reason == "no_process"


def test_fd_count_from_the_directory_size_matches_a_listing():
    """On this kernel (>= 6.2) st_size of /proc/<pid>/fd is the count; the listing opens one more."""
    release = tuple(int(x) for x in re.findall(r"\d+", os.uname().release)[:2])
    if release < (6, 2):  # (the kernel's version, not the reader's own detection, which is under test)
        pytest.skip("kernel older than 6.2: the fd directory is listed")
    reader = procfs.Reader()
    assert reader.num_fds(os.getpid()) == len(os.listdir("/proc/self/fd")) - 1
    legacy = procfs.Reader(fd_count_in_size=False)
    assert legacy.num_fds(os.getpid()) == reader.num_fds(os.getpid()) + 1  # counts the listing's own fd


def test_parse_stat_needs_the_start_time_field():
    """A line cut short anywhere before field 22 (starttime) is a ValueError (which the sampler
    records as unreadable), never an IndexError (which it does not catch)."""
    full = stat_line(42, "a b) c")
    head, _, tail = full.rpartition(b")")
    fields = tail.split()
    for keep in (18, 19):
        with pytest.raises(ValueError):
            procfs.parse_stat(head + b") " + b" ".join(fields[:keep]) + b"\n")
    assert procfs.parse_stat(head + b") " + b" ".join(fields[:20]) + b"\n") == (123456, b"S", 300, 3)
