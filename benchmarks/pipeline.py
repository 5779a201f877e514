"""Where does the time go after /proc: what is the ceiling of transport plus writer?

Runs the real writer process (started the way the supervisor starts it, on a fresh state dir) and
feeds it synthetic samples: W fake workers (forked processes) each build one ``Batch`` of their
shard per tick with made-up readings, encode it with msgspec and send it over their own connection
to the writer's socket, exactly as real workers do; this process plays the supervisor (Hello,
Registry, a DaemonInfo per tick). Closed loop: the next tick is sent as soon as the writer reports
the previous one persisted, so the throughput is the ceiling of everything but the /proc reads.

Measured: samples persisted per second, tick latency (tick sent to ``Persisted`` received) p50/p99,
writer CPU per sample, fake-worker CPU per sample (build + encode + send: what a real worker spends
besides psutil), writer RSS. Baseline: the same closed loop with the writer replaced by a sink that
only reads and decodes the batches (``--sink``), i.e. the cost of transport alone.

    python -m benchmarks.pipeline                            # 10,000 agents, 2 fake workers
    python -m benchmarks.pipeline --agents 2000 --workers 1 --ticks 50

Prints a table and writes ``benchmarks/results/pipeline-<time>.json`` (and ``pipeline-latest.json``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import resource
import secrets
import shutil
import socket
import tempfile
import time
from pathlib import Path

import msgspec
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from benchmarks import harness as H
from fleetmon import channel, wire

console = Console(stderr=True)
CTX = multiprocessing.get_context("fork")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def synthetic_samples(ids: list[str], tick: int, now: float) -> list[wire.Sample]:
    """Readings that change from tick to tick like real ones (cpu, growing I/O counters)."""
    return [
        wire.Sample(
            agent_id,
            10_000 + i,
            1.7e9 + i,
            now,
            float((i + tick) % 50),
            50_000_000 + 4096 * (tick % 64),
            900_000_000,
            4096 * tick,
            8192 * tick,
            12 + tick % 3,
            3,
            (),
            0.01 * tick,
        )
        for i, agent_id in enumerate(ids)
    ]


def fake_worker(index: int, ids: list[str], address: str, token: str, commands, results) -> None:
    """Connects like a worker; on each tick number from ``commands`` sends one batch; None stops."""
    encoder = msgspec.msgpack.Encoder()
    conn = channel.FramedConn(channel.connect_unix(address, timeout=5.0))
    conn.send(encoder.encode(wire.Hello(index, os.getpid(), token)))
    cpu = 0.0
    while True:
        tick = commands.get()
        if tick is None:
            break
        c = _cpu()
        now = time.time()
        batch = wire.Batch.sent(index, tick, now, now, synthetic_samples(ids, tick, now))
        conn.send(encoder.encode(batch))
        while not conn.flush():
            conn.recv()  # acknowledgements: read so the writer's outbox to us stays empty
            time.sleep(0.0005)
        conn.recv()
        cpu += _cpu() - c
    results.put((index, cpu))
    conn.close()


def sink(listener: socket.socket, token: str, workers: int, stop, results) -> None:
    """The baseline writer: accepts connections, reads and decodes every batch, persists nothing;
    answers ``Persisted`` to the supervisor's connection once every worker's batch of a tick came."""
    import selectors

    decoder = msgspec.msgpack.Decoder(wire.ToWriter)
    encoder = msgspec.msgpack.Encoder()
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    roles: dict[channel.FramedConn, int] = {}
    got: dict[int, int] = {}
    samples = 0
    supervisor = None
    c0 = _cpu()
    while not stop.is_set():
        for key, _ in sel.select(0.1):
            if key.data is None:
                sock, _ = listener.accept()
                conn = channel.FramedConn(sock)
                sel.register(sock, selectors.EVENT_READ, conn)
                continue
            conn = key.data
            try:
                frames = conn.recv()
            except channel.ChannelClosed:
                sel.unregister(conn.sock)
                continue
            for frame in frames:
                msg = decoder.decode(frame)
                if isinstance(msg, wire.Hello):
                    roles[conn] = msg.worker
                    if msg.worker == -1:
                        supervisor = conn
                elif isinstance(msg, wire.Batch):
                    samples += len(msg.samples)
                    got[msg.tick] = got.get(msg.tick, 0) + 1
                    if got[msg.tick] == workers and supervisor is not None:
                        supervisor.send(encoder.encode(wire.Persisted(msg.tick, samples)))
    results.put(("sink", _cpu() - c0))


def closed_loop(args, state_dir: Path, use_sink: bool, progress: Progress) -> dict:
    from fleetmon.store.layout import StateDir
    from fleetmon.supervisor import children
    from fleetmon.supervisor.config import load as load_config

    n, w = args.agents, args.workers
    ids = H.agent_ids(n)
    shards = [ids[i::w] for i in range(w)]
    token = secrets.token_hex(16)
    state = StateDir(state_dir).create()
    address = state.writer_socket()
    listener = channel.listen_unix(address)
    config = load_config(None, {"history_size": args.history_size, "interval": 1.0, "workers": w})
    results = CTX.Queue()
    writer = children.Child("writer", -1)
    stop = CTX.Event()
    sink_proc = None
    if use_sink:
        sink_proc = CTX.Process(target=sink, args=(listener, token, w, stop, results))
        sink_proc.start()
        writer_pid = sink_proc.pid
    else:
        children.start_writer(writer, str(state_dir), config, listener, token, [])
        writer_pid = writer.pid
    queues = [CTX.Queue() for _ in range(w)]
    procs = [CTX.Process(target=fake_worker, args=(i, shards[i], address, token, queues[i], results)) for i in range(w)]
    encoder = msgspec.msgpack.Encoder()
    decoder = msgspec.msgpack.Decoder(wire.ToSupervisor)
    infos = [wire.WorkerInfo(i, 0, len(shards[i])) for i in range(w)]
    registry = wire.Registry([wire.RegisteredAgent(a, "default", 10_000 + i, None, wire.Thresholds()) for i, a in enumerate(ids)])

    def daemon_info(tick: int) -> wire.DaemonInfo:
        return wire.DaemonInfo(os.getpid(), writer_pid, infos, tick, 1.0, tick_wall=time.time())

    link = channel.Link(
        address, lambda: [encoder.encode(m) for m in (wire.Hello(-1, os.getpid(), token), registry, daemon_info(0))]
    )
    latencies: list[float] = []
    peak_rss = 0
    task = progress.add_task(f"{'sink' if use_sink else 'writer'}: {n} agents, {w} fake workers", total=args.ticks + args.warmup)
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + 30
        while link.conn is None:
            link.pump()
            if time.monotonic() > deadline:
                raise RuntimeError("cannot connect to the writer")
            time.sleep(0.05)
        c0 = w0 = None
        for tick in range(1, args.ticks + args.warmup + 1):
            if tick == args.warmup + 1:
                c0, w0, s0 = H.cpu_seconds(writer_pid), time.perf_counter(), tick
            sent = time.perf_counter()
            link.send(encoder.encode(daemon_info(tick)))
            for q in queues:
                q.put(tick)
            done = False
            deadline = time.monotonic() + 120
            while not done:
                link.pump()
                for frame in link.recv():
                    msg = decoder.decode(frame)
                    if isinstance(msg, wire.Persisted) and msg.tick >= tick:
                        done = True
                if time.monotonic() > deadline:
                    raise RuntimeError(f"tick {tick} not persisted within 120 s")
                if not done:
                    time.sleep(0.0005)
            if tick > args.warmup:
                latencies.append(time.perf_counter() - sent)
                peak_rss = max(peak_rss, H.rss_bytes(writer_pid))
            progress.update(task, completed=tick)
        writer_cpu = H.cpu_seconds(writer_pid) - c0
        wall = time.perf_counter() - w0
        ticks = args.ticks + args.warmup + 1 - s0
    finally:
        with H.cleanup():
            for q in queues:
                q.put(None)
            worker_cpu = {}
            started = [p for p in procs if p.pid is not None]  # an interrupt may come before all are
            deadline = time.monotonic() + 30
            while len(worker_cpu) < len(started) and time.monotonic() < deadline:
                alive = any(p.is_alive() for p in started)
                try:
                    index, cpu = results.get(timeout=0.2)
                    worker_cpu[index] = cpu
                except queue.Empty:
                    if not alive:  # the rest died (Ctrl-C reaches them too): their CPU is unknown
                        break
            for p in started:
                H.join_or_kill(p)
            stop.set()
            link.close()
            if sink_proc is not None:
                H.join_or_kill(sink_proc)
            if writer.alive:
                children.stop_all([writer], grace=10.0)
            listener.close()
            progress.remove_task(task)
    samples = ticks * n
    total_worker_cpu = sum(worker_cpu.values())
    return {
        "mode": "sink" if use_sink else "writer",
        "agents": n,
        "workers": w,
        "ticks": ticks,
        "samples": samples,
        "samples_per_s": round(samples / wall, 1),
        "tick_latency_p50_s": H.percentile(latencies, 50),
        "tick_latency_p99_s": H.percentile(latencies, 99),
        "writer_cpu_per_sample_us": round(writer_cpu / samples * 1e6, 2),
        # the fake workers' CPU covers warm-up ticks too: per sample over all the ticks they sent
        "worker_cpu_per_sample_us": round(total_worker_cpu / ((args.ticks + args.warmup) * n) * 1e6, 2),
        "writer_rss_mb": round(H.mib(peak_rss), 1),
    }


def run(args) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="fleetmon-pipeline-", dir=args.workdir or H.default_workdir()))
    out = {
        "benchmark": "pipeline",
        "command": "python -m benchmarks.pipeline " + " ".join(args.argv),
        "machine": H.machine(),
        "params": {
            "agents": args.agents,
            "workers": args.workers,
            "ticks": args.ticks,
            "warmup": args.warmup,
            "history_size": args.history_size,
        },
        "runs": [],
    }
    try:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console, transient=True
        ) as progress:
            for use_sink in [True] if args.sink_only else [True, False]:
                out["runs"].append(closed_loop(args, workdir / ("sink" if use_sink else "state"), use_sink, progress))
    finally:
        with H.cleanup():
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
    sink_run = next((r for r in out["runs"] if r["mode"] == "sink"), None)
    for r in out["runs"]:
        r["samples_per_s_vs_sink"] = H.ratio(r["samples_per_s"], sink_run["samples_per_s"]) if sink_run else None
    return out


def table(result: dict) -> Table:
    t = Table(title="pipeline only: synthetic samples, no /proc (closed loop: the ceiling)")
    for col in (
        "receiver",
        "agents",
        "workers",
        "samples/s",
        "x sink",
        "tick p50",
        "tick p99",
        "receiver CPU/sample",
        "worker CPU/sample",
        "receiver RSS",
    ):
        t.add_column(col, justify="right")
    for r in result["runs"]:
        t.add_row(
            "writer" if r["mode"] == "writer" else "sink (decode only)",
            str(r["agents"]),
            str(r["workers"]),
            H.fmt(r["samples_per_s"], ".0f"),
            H.fmt(r["samples_per_s_vs_sink"], ".2f"),
            H.fmt(r["tick_latency_p50_s"], ".3f", "s"),
            H.fmt(r["tick_latency_p99_s"], ".3f", "s"),
            H.fmt(r["writer_cpu_per_sample_us"], ".1f", "us"),
            H.fmt(r["worker_cpu_per_sample_us"], ".1f", "us"),
            H.fmt(r["writer_rss_mb"], ".0f", "MB"),
        )
    return t


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pipeline", description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=H.count(1), default=10_000)
    p.add_argument("--workers", type=H.count(1), default=2)
    p.add_argument("--ticks", type=H.count(1), default=30, help="measured ticks (default 30)")
    p.add_argument("--warmup", type=H.count(0), default=3, help="ticks before the measurement (rings created) (default 3)")
    p.add_argument("--history-size", type=H.count(1), default=1440)
    p.add_argument("--sink-only", action="store_true", help="measure the transport baseline only")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/pipeline-<time>.json)")
    args = p.parse_args(argv)
    args.argv = argv
    return args


main = H.entry_point("pipeline", parse_args, run, table, 140)

if __name__ == "__main__":
    H.run_script(main)
