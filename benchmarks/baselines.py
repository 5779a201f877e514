"""The psutil loops fleetmon is compared with: ``bare`` (one process, a cached ``psutil.Process`` and
``oneshot()``: the floor for CPU per sample) and ``naive`` (a new ``Process`` per sample, no
``oneshot()``), run in a forked process of their own so that their CPU is measured alone, either back
to back (``psutil_baseline``) or a pass at a time between the daemon's ticks (``BareProbe``)."""

from __future__ import annotations

import statistics
import time

from benchmarks.harness import cleanup, join_or_kill, kill_pids


def _rusage_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _bare_pass(procs) -> int:
    """One pass of the floor: cached Process, every metric inside oneshot()."""
    import psutil

    n = 0
    for p in procs:
        try:
            with p.oneshot():
                p.cpu_times()
                p.memory_info()
                p.io_counters()
                p.num_fds()
                p.num_threads()
            n += 1
        except psutil.Error:
            pass
    return n


def _naive_pass(pids) -> int:
    """One pass of the naive loop: a new Process every time, no oneshot()."""
    import psutil

    n = 0
    for pid in pids:
        try:
            p = psutil.Process(pid)
            p.cpu_times()
            p.memory_info()
            p.io_counters()
            p.num_fds()
            p.num_threads()
            n += 1
        except psutil.Error:
            pass
    return n


def _runner(kind: str, pids: list[int]):
    """One pass of a loop over ``pids``, as a function: ``bare`` (primed: what fleetmon's workers
    have done before a measured window), ``naive`` or ``procfs``."""
    if kind == "bare":
        import psutil

        procs = [psutil.Process(pid) for pid in pids]
        _bare_pass(procs)
        return lambda: _bare_pass(procs)
    if kind == "naive":
        return lambda: _naive_pass(pids)
    return lambda: _procfs_pass(pids)


def _baseline_child(kind: str, pids: list[int], seconds: float, conn) -> None:
    run = _runner(kind, pids)
    cpu0, wall0, samples, passes = _rusage_cpu(), time.perf_counter(), 0, 0
    while passes < 3 or time.perf_counter() - wall0 < seconds:
        samples += run()
        passes += 1
    cpu, wall = _rusage_cpu() - cpu0, time.perf_counter() - wall0
    conn.send(
        {
            "passes": passes,
            "samples": samples,
            "cpu_s": cpu,
            "wall_s": wall,
            "cpu_per_sample_us": cpu / max(samples, 1) * 1e6,
            "samples_per_s": samples / wall if wall else None,
        }
    )
    conn.close()


def psutil_baseline(kind: str, pids: list[int], seconds: float = 5.0) -> dict:
    """Run the ``bare`` or ``naive`` psutil loop over ``pids`` in a forked process of its own (so
    its CPU is measured alone): back-to-back passes for ``seconds`` (at least 3), CPU per sample
    from getrusage."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_baseline_child, args=(kind, pids, seconds, child), daemon=True)
    p.start()
    child.close()
    try:
        if not parent.poll(600):
            raise RuntimeError(f"{kind} baseline did not finish")
        return parent.recv()
    finally:
        with cleanup():
            if p.is_alive():
                kill_pids([p.pid])
            p.join(10)


def _probe_child(pids: list[int], chunk: int, conn, parent_end) -> None:
    import psutil

    parent_end.close()  # else the harness's end stays open here, and recv() never sees it go
    procs = [psutil.Process(pid) for pid in pids]
    _bare_pass(procs)  # prime, as a worker has before the measured window
    start = 0
    while True:
        try:
            if conn.recv() != "pass":
                break
        except EOFError:  # the harness is gone
            break
        idx = [(start + i) % len(procs) for i in range(min(chunk, len(procs)))]
        start = (start + len(idx)) % len(procs)
        out = []
        for kind in ("bare", "naive"):
            cpu0 = _rusage_cpu()
            n = _bare_pass([procs[i] for i in idx]) if kind == "bare" else _naive_pass([pids[i] for i in idx])
            out.append((n, _rusage_cpu() - cpu0))
        conn.send(out)
    conn.close()


class BareProbe:
    """The psutil baselines interleaved with the daemon: a forked process of its own that, whenever
    asked, runs the bare loop and then the naive loop over the next ``chunk`` pids (the harness asks
    right after a tick was persisted, while the daemon idles until the next tick). The daemon's CPU
    per sample and the baselines' are then measured over the same window, under the same noise from
    the rest of the host."""

    def __init__(self, pids: list[int], chunk: int = 500):
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        # daemon: multiprocessing's exit handler ends it rather than waiting for it forever
        self.proc = ctx.Process(target=_probe_child, args=(pids, chunk, child, self.conn), daemon=True)
        self.proc.start()
        child.close()
        self.busy = False
        self.passes = 0
        self.samples = {"bare": 0, "naive": 0}
        self.cpu_s = {"bare": 0.0, "naive": 0.0}
        self.per_pass: dict[str, list[float]] = {"bare": [], "naive": []}

    def request(self) -> None:
        self.collect()
        if not self.busy:
            self.conn.send("pass")
            self.busy = True

    def collect(self, timeout: float = 0.0) -> None:
        if self.busy and self.conn.poll(timeout):
            try:
                answer = self.conn.recv()
            except EOFError:  # the probe died (e.g. Ctrl-C reached it): no more passes
                self.busy = False
                return
            for kind, (n, cpu) in zip(("bare", "naive"), answer, strict=True):
                self.samples[kind] += n
                self.cpu_s[kind] += cpu
                if n:
                    self.per_pass[kind].append(cpu / n * 1e6)
            self.passes += 1
            self.busy = False

    def result(self) -> dict:
        self.collect(timeout=60)
        out: dict = {"passes": self.passes}
        for kind in ("bare", "naive"):
            n, cpu = self.samples[kind], self.cpu_s[kind]
            out[kind] = {
                "samples": n,
                "cpu_s": round(cpu, 4),
                "cpu_per_sample_us": round(cpu / n * 1e6, 2) if n else None,
                "median_pass_cpu_per_sample_us": round(statistics.median(self.per_pass[kind]), 2) if n else None,
            }
        return out

    def close(self) -> None:
        with cleanup():
            try:
                self.collect(timeout=60)
                self.conn.send("stop")
            except (BrokenPipeError, OSError):
                pass
            join_or_kill(self.proc)


# --- the bare loops in parallel: what this host's cores give the floor ------------------------------


def _procfs_pass(pids) -> int:
    """One pass of the bare /proc loop: the reads fleetmon's procfs reader makes (stat, statm, io,
    and a stat of fd/), with nothing around them."""
    import os

    n = 0
    for pid in pids:
        try:
            for name in ("stat", "statm", "io"):
                fd = os.open(f"/proc/{pid}/{name}", os.O_RDONLY)
                try:
                    os.read(fd, 4096)
                finally:
                    os.close(fd)
            os.stat(f"/proc/{pid}/fd")
            n += 1
        except OSError:
            pass
    return n


PARALLEL_KINDS = ("psutil", "procfs")


def _parallel_child(kind: str, pids: list[int], seconds: float, start, conn) -> None:
    run = _runner("bare" if kind == "psutil" else kind, pids)
    if not start.wait(120):  # the parent is gone
        return
    cpu0, wall0, samples = _rusage_cpu(), time.perf_counter(), 0
    while True:
        samples += run()
        if time.perf_counter() - wall0 >= seconds:
            break
    conn.send({"samples": samples, "cpu_s": _rusage_cpu() - cpu0, "wall_s": time.perf_counter() - wall0})
    conn.close()


def parallel_baseline(kind: str, pids: list[int], seconds: float, procs: int) -> dict:
    """The bare ``psutil`` loop or the bare ``procfs`` loop in ``procs`` forked processes at once,
    each over its slice of ``pids`` (``pids[i::procs]``), for ``seconds``: their total samples/s.
    With procs 1 and 2 back to back, the ratio is how far this host scales the floor itself."""
    import multiprocessing

    if kind not in PARALLEL_KINDS:
        raise ValueError(f"unknown loop {kind!r}: {', '.join(PARALLEL_KINDS)}")
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    pipes, children = [], []
    try:
        for i in range(procs):
            parent, child = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_parallel_child, args=(kind, pids[i::procs], seconds, start, child), daemon=True)
            p.start()
            child.close()
            pipes.append(parent)
            children.append(p)
        start.set()
        results = []
        deadline = time.monotonic() + seconds + 600
        for parent, p in zip(pipes, children, strict=True):
            while not parent.poll(0.5):
                if not p.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"{kind} loop died or did not finish (exit code {p.exitcode})")
            results.append(parent.recv())
    finally:
        with cleanup():
            kill_pids([p.pid for p in children if p.is_alive()])
            for p in children:
                p.join(10)
    samples = sum(r["samples"] for r in results)
    wall = max(r["wall_s"] for r in results)
    cpu = sum(r["cpu_s"] for r in results)
    return {
        "kind": kind,
        "procs": procs,
        "samples": samples,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "samples_per_s": round(samples / wall, 1) if wall else None,
        "cpu_per_sample_us": round(cpu / samples * 1e6, 2) if samples else None,
    }
