"""The sampler against real child processes, with each reader (``procfs``: /proc directly; ``psutil``):
the Windows branch (no ``num_fds``), the one place where read errors are translated (a refused
metric -> null + ``denied``, the rest kept), gone and reused processes, and pidfiles."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import msgspec
import psutil
import pytest
from loguru import logger

from fleetmon.wire import AgentRef, Gone, Sample
from fleetmon.workers import procfs
from fleetmon.workers import sampler as sampler_mod
from fleetmon.workers.sampler import Sampler, check_pidfile

READERS = ["procfs", "psutil"]


@pytest.fixture
def child():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], stdin=subprocess.DEVNULL)
    yield p
    p.kill()
    p.wait(timeout=10)


@pytest.fixture
def logs():
    records = []
    sink = logger.add(lambda m: records.append(m.record), level="TRACE")
    yield records
    logger.remove(sink)


@pytest.fixture(params=READERS)
def reader(request):
    return request.param


def encodable(result):
    """What a worker sends must fit the wire."""
    msgspec.msgpack.encode(result)
    return result


def test_sample_reads_every_metric_and_cpu_starts_null(reader, child):
    s = Sampler(reader=reader)
    first = encodable(s.sample(AgentRef("a", child.pid)))
    assert isinstance(first, Sample)
    assert first.pid == child.pid and first.create_time == pytest.approx(psutil.Process(child.pid).create_time(), abs=0.05)
    assert first.cpu is None  # never psutil's meaningless first 0.0
    assert first.cpu_seconds is not None and first.cpu_seconds >= 0.0  # the counter is there from the start
    assert first.memory_rss > 0 and first.memory_vms >= first.memory_rss
    assert first.open_files >= 3 and first.num_threads >= 1
    assert first.disk_read_bytes is not None and first.disk_write_bytes is not None
    assert first.denied == ()
    time.sleep(0.05)
    second = s.sample(AgentRef("a", child.pid))
    assert second.cpu is not None and second.cpu >= 0.0


def test_cpu_is_percent_of_one_cpu_since_the_previous_sample(reader):
    """Compared with the process's own cpu time over the same period (whatever else loads the host)."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
    try:
        proc = psutil.Process(busy.pid)
        s = Sampler(reader=reader)
        s.sample(AgentRef("b", busy.pid))
        t1, m1 = sum(proc.cpu_times()[:2]), time.monotonic()
        time.sleep(0.5)
        r = s.sample(AgentRef("b", busy.pid))
        t2, m2 = sum(proc.cpu_times()[:2]), time.monotonic()
        expected = (t2 - t1) / (m2 - m1) * 100
        assert r.cpu == pytest.approx(expected, abs=5), (r.cpu, expected)
        assert t1 - 0.02 <= r.cpu_seconds <= t2 + 0.02, (t1, r.cpu_seconds, t2)  # its user + system time
        assert r.cpu > 20  # a busy loop, even on a crowded host
    finally:
        busy.kill()
        busy.wait(timeout=10)


def test_windows_branch_open_files_null_logged_at_debug_only(child, logs):
    s = Sampler(has_num_fds=False, reader="psutil")
    results = [s.sample(AgentRef("a", child.pid)) for _ in range(3)]
    assert all(isinstance(r, Sample) for r in results)
    assert [r.open_files for r in results] == [None, None, None]
    assert all(r.num_threads >= 1 and r.memory_rss > 0 for r in results)  # the rest is kept
    assert all("open_files" not in r.denied for r in results)  # not a permission problem
    mentions = [r for r in logs if "open_files" in r["message"]]
    assert len(mentions) == 1
    assert mentions[0]["level"].name == "DEBUG"
    assert not [r for r in logs if r["level"].no > logger.level("DEBUG").no]


def only_these_denied(results, logs, method, denied, fields) -> None:
    """Each result lost exactly the refused metric's fields, kept every other, and the refusal was
    logged once per agent, not per sample."""
    for r in results:
        assert isinstance(r, Sample), r
        assert r.denied == (denied,)
        for f in fields:
            assert getattr(r, f) is None, f
        others = ["cpu", "cpu_seconds", "memory_rss", "memory_vms", "disk_read_bytes", "disk_write_bytes", "open_files", "num_threads"]
        for f in others:
            if f not in fields:
                assert getattr(r, f) is not None, f"{f} was lost because {method} was denied"
    warnings = [r for r in logs if r["level"].name == "WARNING"]
    assert len(warnings) == 1
    assert warnings[0]["extra"]["agent_id"] == "a" and denied in warnings[0]["message"]


@pytest.mark.parametrize(
    "method, denied, fields",
    [
        ("cpu_times", "cpu", ["cpu", "cpu_seconds"]),
        ("memory_info", "memory", ["memory_rss", "memory_vms"]),
        ("io_counters", "disk", ["disk_read_bytes", "disk_write_bytes"]),
        ("num_fds", "open_files", ["open_files"]),
        ("num_threads", "num_threads", ["num_threads"]),
    ],
)
def test_psutil_access_denied_on_one_metric(child, logs, monkeypatch, method, denied, fields):
    s = Sampler(reader="psutil")
    s.sample(AgentRef("a", child.pid))  # primes cpu
    time.sleep(0.02)

    def refuse(self, *a, **k):
        raise psutil.AccessDenied(self.pid)

    # psutil.Process delegates each metric to its platform implementation (and caches some of them
    # inside oneshot()): refuse at that level, as the kernel would.
    monkeypatch.setattr(type(s.tracked["a"].proc._proc), method, refuse)
    results = [encodable(s.sample(AgentRef("a", child.pid))) for _ in range(2)]
    monkeypatch.undo()
    only_these_denied(results, logs, method, denied, fields)


@pytest.mark.parametrize(
    "method, denied, fields",
    [
        ("memory", "memory", ["memory_rss", "memory_vms"]),
        ("io", "disk", ["disk_read_bytes", "disk_write_bytes"]),
        ("num_fds", "open_files", ["open_files"]),
    ],
)
def test_procfs_access_denied_on_one_metric(child, logs, monkeypatch, method, denied, fields):
    """/proc/<pid>/io and the fd listing need the owner's rights (ptrace read access); a refusal of
    any one file loses only its metrics."""
    s = Sampler(reader="procfs")
    s.sample(AgentRef("a", child.pid))  # primes cpu
    time.sleep(0.02)

    def refuse(self, pid):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(procfs.Reader, method, refuse)
    results = [encodable(s.sample(AgentRef("a", child.pid))) for _ in range(2)]
    monkeypatch.undo()
    only_these_denied(results, logs, method, denied, fields)


def test_procfs_stat_refused_is_all_denied(child, monkeypatch):
    def refuse(self, pid):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(procfs.Reader, "stat", refuse)
    r = encodable(Sampler(reader="procfs").sample(AgentRef("a", child.pid)))
    assert isinstance(r, Sample) and r.denied == ("all",)
    assert (r.cpu, r.cpu_seconds, r.memory_rss, r.open_files, r.num_threads) == (None, None, None, None, None)


def test_both_readers_agree_on_a_real_process(tmp_path):
    """The same numbers from /proc directly as from psutil: a child holding 64 MiB, 7 extra threads,
    20 extra files, and 4 MiB written with fsync."""
    script = (
        "import os, sys, threading, time\n"
        "held = bytearray(64 << 20)\n"
        "for i in range(0, len(held), 4096): held[i] = 1\n"
        "files = [open(os.devnull) for _ in range(20)]\n"
        "ev = threading.Event()\n"
        "ts = [threading.Thread(target=ev.wait, daemon=True) for _ in range(7)]\n"
        "[t.start() for t in ts]\n"
        "with open(sys.argv[1], 'wb') as f:\n"
        "    f.write(os.urandom(4 << 20)); f.flush(); os.fsync(f.fileno())\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "out")], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert p.stdout.readline().strip() == b"ready"
        a = Sampler(reader="procfs").sample(AgentRef("x", p.pid))
        b = Sampler(reader="psutil").sample(AgentRef("x", p.pid))
        assert isinstance(a, Sample) and isinstance(b, Sample)
        assert a.create_time == pytest.approx(b.create_time, abs=0.02)
        assert a.cpu_seconds == pytest.approx(b.cpu_seconds, abs=0.05) and a.cpu_seconds > 0  # it wrote 4 MiB of urandom
        assert a.memory_rss == b.memory_rss and a.memory_rss >= 64 << 20
        assert a.memory_vms == b.memory_vms
        assert a.num_threads == b.num_threads == 8
        assert a.open_files == b.open_files and a.open_files >= 23
        assert a.disk_read_bytes == b.disk_read_bytes
        assert a.disk_write_bytes == b.disk_write_bytes and a.disk_write_bytes >= 4 << 20
        assert a.denied == b.denied == ()
    finally:
        p.kill()
        p.wait(timeout=10)


def test_vanished_process_is_gone(reader, child):
    s = Sampler(reader=reader)
    assert isinstance(s.sample(AgentRef("a", child.pid)), Sample)
    child.kill()
    child.wait(timeout=10)
    g = encodable(s.sample(AgentRef("a", child.pid)))
    assert isinstance(g, Gone) and g.reason == "no_process" and g.pid == child.pid


def test_zombie_is_gone(reader):
    p = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    try:
        while psutil.Process(p.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "child never became a zombie"
            time.sleep(0.01)
        g = Sampler(reader=reader).sample(AgentRef("z", p.pid))
        assert isinstance(g, Gone) and g.reason == "no_process"
    finally:
        p.wait(timeout=10)


def test_pid_reuse_is_detected(reader, child):
    """The process at the pid is not the one first seen (its start time changed): reused."""
    s = Sampler(reader=reader)
    assert isinstance(s.sample(AgentRef("a", child.pid)), Sample)
    s.tracked["a"].start_key = -1  # as if the process first seen had started at another time
    g = s.sample(AgentRef("a", child.pid))
    assert isinstance(g, Gone) and g.reason == "reused"


def test_known_start_refuses_a_stranger(reader, child):
    """The writer says which process the pid belonged to; a different one there is not sampled."""
    ct = psutil.Process(child.pid).create_time()
    g = Sampler(reader=reader).sample(AgentRef("a", child.pid, None, child.pid, ct - 100))
    assert isinstance(g, Gone) and g.reason == "reused"
    ok = Sampler(reader=reader).sample(AgentRef("a", child.pid, None, child.pid, ct))
    assert isinstance(ok, Sample)


def _sampled_by_pidfile(tmp_path, reader, pid: int):
    """(the pidfile, a Sampler, the agent's ref) after a first sample of ``pid`` through the pidfile."""
    pidfile = tmp_path / "agent.pid"
    pidfile.write_text(f"{pid}\n")
    s = Sampler(reader=reader)
    ref = AgentRef("a", None, str(pidfile))
    assert s.sample(ref).pid == pid
    return pidfile, s, ref


def test_pidfile_followed_to_a_new_process(reader, child, tmp_path):
    other = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)
    try:
        pidfile, s, ref = _sampled_by_pidfile(tmp_path, reader, child.pid)
        pidfile.write_text(f"{other.pid}\n")
        r = s.sample(ref)
        assert isinstance(r, Sample) and r.pid == other.pid and r.cpu is None
    finally:
        other.kill()
        other.wait(timeout=10)


def test_a_pidfile_caught_empty_or_removed_keeps_the_process_it_named_while_that_runs(reader, tmp_path, logs):
    """Daemons that rewrite their pidfile in place leave it empty for a moment, and some remove it
    before they exit: the agent's process is still there and still the agent (its alerts must not
    close as exited)."""
    p = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)
    try:
        pidfile, s, ref = _sampled_by_pidfile(tmp_path, reader, p.pid)
        pidfile.write_text("")
        r = s.sample(ref)
        assert isinstance(r, Sample) and r.pid == p.pid and r.memory_rss > 0
        pidfile.unlink()
        assert s.sample(ref).pid == p.pid
        warned = [m["message"] for m in logs if m["level"].name == "WARNING"]
        assert warned == [
            f"agent a: pidfile {pidfile} is empty: still sampling pid {p.pid}, the process it named last, while that runs",
            f"agent a: pidfile {pidfile} is missing: still sampling pid {p.pid}, the process it named last, while that runs",
        ]
        p.kill()
        p.wait(timeout=10)
        g = s.sample(ref)
        assert isinstance(g, Gone) and g.reason == "no_pidfile" and "a" not in s.tracked  # gone with its process
        assert isinstance(s.sample(ref), Gone)
    finally:
        p.kill()
        p.wait(timeout=10)


def test_a_new_worker_follows_the_process_last_recorded_while_the_pidfile_names_none(reader, tmp_path, logs):
    """A worker (re)started, or a daemon started again, while an agent's pidfile is missing (a tmp
    cleaner removed it) has not sampled the agent: it follows the process the writer last recorded
    (``last_pid``/``last_start``) if that one still runs, instead of calling the agent exited."""
    p = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)
    try:
        ct = psutil.Process(p.pid).create_time()
        pidfile = tmp_path / "agent.pid"  # never written: missing
        ref = AgentRef("a", None, str(pidfile), None, None, p.pid, ct)
        s = Sampler(reader=reader)
        r = s.sample(ref)
        assert isinstance(r, Sample) and r.pid == p.pid and r.memory_rss > 0
        assert s.sample(ref).pid == p.pid  # then followed as any process the pidfile named
        warned = [m["message"] for m in logs if m["level"].name == "WARNING"]
        assert warned == [
            f"agent a: pidfile {pidfile} is missing: sampling pid {p.pid}, the process it ran as when last recorded, while that runs"
        ]
        # Another process at that pid (a start time that differs): not the agent.
        stranger = AgentRef("b", None, str(pidfile), None, None, p.pid, ct - 100)
        g = Sampler(reader=reader).sample(stranger)
        assert isinstance(g, Gone) and g.reason == "no_pidfile"
        p.kill()
        p.wait(timeout=10)
        g = s.sample(ref)
        assert isinstance(g, Gone) and g.reason == "no_pidfile" and "a" not in s.tracked
        fresh = Sampler(reader=reader)
        assert isinstance(fresh.sample(ref), Gone) and "a" not in fresh.tracked  # the recorded one is gone
    finally:
        p.kill()
        p.wait(timeout=10)


@pytest.mark.parametrize(
    "content", [None, "", "abc", "0", "-5", "99999999999999999999", "2147483648", "1_234", "0x10", "12abc", "١٢"],
)
def test_bad_pidfile_is_gone_and_fits_the_wire(tmp_path, content):
    pidfile = tmp_path / "agent.pid"
    if content is not None:
        pidfile.write_text(content + "\n")
    assert check_pidfile(str(pidfile))[0] is None
    g = encodable(Sampler().sample(AgentRef("a", None, str(pidfile))))
    assert isinstance(g, Gone) and g.reason == "no_pidfile"


def test_pidfile_takes_the_first_line(tmp_path):
    pidfile = tmp_path / "agent.pid"
    pidfile.write_text(" 123 \nsomething else\n")
    assert check_pidfile(str(pidfile)) == (123, None)
    pidfile.write_text("+124\r\n")
    assert check_pidfile(str(pidfile)) == (124, None)


def test_has_num_fds_detected_on_linux():
    assert sampler_mod.HAS_NUM_FDS is True


@pytest.mark.parametrize(
    "content, problem",
    [
        (None, "is missing"),
        ("", "is empty"),
        ("garbage", "does not hold a pid: b'garbage'"),
        ("99999999999999999999", "does not hold a pid: 99999999999999999999 is out of range"),
    ],
)
def test_a_pidfile_without_a_pid_is_named_once_with_what_is_wrong(tmp_path, content, problem):
    """Not just "exited": one WARNING naming the file and what is wrong with it, not repeated every
    tick, and one line when it holds a pid again."""
    from loguru import logger

    pidfile = tmp_path / "agent.pid"
    if content is not None:
        pidfile.write_text(content + "\n")
    lines: list = []
    sink = logger.add(lambda m: lines.append((m.record["level"].name, m.record["message"])), level="INFO")
    try:
        s = Sampler()
        ref = AgentRef("a", None, str(pidfile))
        for _ in range(3):
            assert isinstance(s.sample(ref), Gone)
        assert lines == [("WARNING", f"agent a: pidfile {pidfile} {problem}: not sampled until it holds a pid")]
        pidfile.write_text(f"{os.getpid()}\n")
        assert isinstance(s.sample(ref), Sample)
        s.sample(ref)
        assert lines[1:] == [("INFO", f"agent a: pidfile {pidfile} holds a pid again ({os.getpid()})")]
    finally:
        logger.remove(sink)


def test_a_pidfile_holding_other_garbage_each_tick_is_named_once(tmp_path):
    from loguru import logger

    pidfile = tmp_path / "agent.pid"
    lines: list = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
    try:
        s = Sampler()
        ref = AgentRef("a", None, str(pidfile))
        for i in range(3):  # caught mid-write, differently each time
            pidfile.write_text(f"garbage-{i}\n")
            s.sample(ref)
        pidfile.unlink()
        s.sample(ref)
    finally:
        logger.remove(sink)
    assert lines == [
        f"agent a: pidfile {pidfile} does not hold a pid: b'garbage-0': not sampled until it holds a pid",
        f"agent a: pidfile {pidfile} is missing: not sampled until it holds a pid",  # another kind of problem
    ]


def test_agents_add_gives_up_on_a_pidfile_it_cannot_read_in_time(tmp_path, monkeypatch):
    """A pidfile on a dead NFS or FUSE mount blocks its reader in the kernel: `agents add` checks it
    in a child process and says so after a while instead of hanging for good."""
    from fleetmon.supervisor import commands

    def blocked(path):
        time.sleep(60)

    monkeypatch.setattr(sampler_mod, "check_pidfile", blocked)
    t0 = time.monotonic()
    pid, problem = commands._check_pidfile_briefly(str(tmp_path / "x.pid"), timeout=0.3)
    print(f"\ngave up after {time.monotonic() - t0:.2f}s")
    assert pid is None and problem == "could not be read within 0.3s (on a stalled mount?)"
    monkeypatch.undo()
    (tmp_path / "x.pid").write_text("77\n")
    assert commands._check_pidfile_briefly(str(tmp_path / "x.pid")) == (77, None)


THREADED = (
    "import threading, time\n"
    "ready = threading.Event()\n"
    "def spin():\n"
    "    print(threading.get_native_id(), flush=True)\n"
    "    time.sleep(120)\n"
    "threading.Thread(target=spin, daemon=True).start()\n"
    "time.sleep(120)\n"
)


@pytest.fixture
def thread_of_child():
    """(pid of a child, the id of one of its other threads)."""
    p = subprocess.Popen([sys.executable, "-c", THREADED], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        tid = int(p.stdout.readline())
        yield p.pid, tid
    finally:
        p.kill()
        p.wait(timeout=10)


def test_a_thread_id_is_not_sampled_as_an_agent(reader, thread_of_child, logs, tmp_path):
    """/proc/<tid> answers like a process, with the whole process's figures: an agent registered by a
    thread id counted its process again, and exited when the thread did. Not sampled, logged once."""
    pid, tid = thread_of_child
    assert procfs.tgid(tid) == pid and procfs.tgid(pid) == pid
    s = Sampler(reader=reader)
    for _ in range(2):
        g = s.sample(AgentRef("t", tid))
        assert isinstance(g, Gone) and g.reason == "no_process" and g.pid == tid
    pidfile = tmp_path / "t.pid"
    pidfile.write_text(f"{tid}\n")
    assert isinstance(s.sample(AgentRef("tp", None, str(pidfile))), Gone)
    warned = [m["message"] for m in logs if m["level"].name == "WARNING"]
    assert warned == [
        f"agent t: registered pid {tid}, a thread of process {pid}, not a process: not sampled (register pid {pid}, or a pidfile holding it)",
        f"agent tp: its pidfile {pidfile} holds pid {tid}, a thread of process {pid}, not a process: not sampled "
        f"(register pid {pid}, or a pidfile holding it)",
    ]
    assert isinstance(s.sample(AgentRef("p", pid)), Sample)  # the process itself is fine


def test_agents_add_refuses_a_thread_id(thread_of_child, tmp_path):
    from tests.helpers import cli

    pid, tid = thread_of_child
    state_dir = tmp_path / "state"
    proc = cli("agents", "add", "t", "--pid", str(tid), state_dir=state_dir)
    assert proc.returncode == 2 and f"pid {tid} is a thread of process {pid}, not a process: register --pid {pid}" in proc.stderr
    assert not (state_dir / "registry" / "t.json").exists()
    assert cli("agents", "add", "t", "--pid", str(pid), state_dir=state_dir).returncode == 0
