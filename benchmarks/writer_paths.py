"""What does the writer's batch-at-a-time path save, and what would a columnar writer save beyond it?

The writer's CPU per sample is what keeps 2 workers under 2x of 1 on 2 cores (benchmarks/README.md,
"What is left"). This script feeds the same synthetic batches (two workers' worth per tick, every
agent with limits that no sample crosses) to:

- **today's writer**, in process: the msgpack decode of each Batch as a worker sends it (the samples
  packed, ``wire.pack_samples``), ``Fleet.on_packed`` (``fastpath.Columns``: identity and limits
  checked as arrays, the 64-byte records and their CRC32s built at once, each copied into its
  agent's ring file through its memory map), and the flush after each tick, at a 0.02 s interval
  (status.json at most once a second), as in a CPU-bound run;
- **the per-sample path** (what the writer did before, and still does for a sample the fast path
  leaves): the Batch's samples as msgpack structs, ``Fleet.on_sample`` for each, and the same flush;
- **a prototype** (numpy; not fleetmon code): every agent's ring a fixed slot of one memory-mapped
  file; a batch one packed array; identity and limits checked as arrays (a Python path would take
  only the samples that fail them: none here); sequence numbers, heads and a checksum (not CRC32:
  numpy has none) computed as arrays; the records scattered into the map in one assignment.

All write one 64-byte record per sample into files of the same total size on the same filesystem,
and all are read back at the end: every agent's history must hold as many records as were written
(up to its capacity), the newest one from the last tick. Reported: microseconds per sample (minimum
and median over ``--repeat`` runs of ``--ticks`` ticks); for the writer's paths, decode-and-apply apart from
the flush after each batch (status.json at most once a second, daemon.json, alerts), which the
prototype leaves out; and what it costs a worker to encode a batch for each.

    python -m benchmarks.writer_paths                  # 4000 agents, 30 ticks, 5 repeats

Prints a table and writes ``benchmarks/results/writer_paths-<time>.json``.
"""

from __future__ import annotations

import argparse
import mmap
import os
import resource
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path

import msgspec
import numpy as np
from loguru import logger
from rich.table import Table

from benchmarks import harness as H
from benchmarks.pipeline import synthetic_samples
from fleetmon import wire

RECORD = np.dtype(
    [
        ("ts", "<f8"), ("cpu", "<f4"), ("rss", "<i8"), ("vms", "<i8"), ("rd", "<i8"), ("wr", "<i8"),
        ("fds", "<i4"), ("thr", "<i4"), ("seq", "<u4"), ("mask", "<u2"), ("pad", "<u2"), ("sum", "<u4"),
    ]
)  # the layout of today's ring records
ROW = np.dtype(
    [
        ("slot", "<u4"), ("pid", "<i4"), ("ctime", "<f8"), ("ts", "<f8"), ("cpu", "<f4"), ("rss", "<i8"),
        ("vms", "<i8"), ("rd", "<i8"), ("wr", "<i8"), ("fds", "<i4"), ("thr", "<i4"), ("mask", "<u2"),
    ]
)  # one sample on the wire, packed by the worker
_MIX = np.array(
    [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
     0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, 0x27D4EB2F165667C5],
    dtype=np.uint64,
)
LIMITS = wire.Thresholds(**H.THRESHOLDS)


class Columnar:
    """The prototype: every agent a slot of ``capacity + 1`` records in one memory-mapped file."""

    def __init__(self, path: Path, agents: int, capacity: int, pids: np.ndarray, ctimes: np.ndarray):
        self.capacity = capacity
        size = agents * (capacity + 1) * RECORD.itemsize
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
            self.map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.history = np.frombuffer(self.map, dtype=RECORD).reshape(agents, capacity + 1)
        self.pid, self.ctime = pids, ctimes
        self.seq = np.zeros(agents, np.uint32)
        self.head = np.zeros(agents, np.int64)
        self.cpu_max = np.full(agents, float(LIMITS.cpu_threshold), np.float32)
        self.rss_max = np.full(agents, LIMITS.memory_threshold, np.int64)
        self.fds_max = np.full(agents, LIMITS.open_files_threshold, np.int32)
        self.alerts_open = np.zeros(agents, bool)
        self.last = np.zeros(agents, RECORD)

    def apply(self, blob: bytes) -> int:
        rows = np.frombuffer(blob, ROW)
        slots = rows["slot"].astype(np.int64)
        stranger = (self.pid[slots] != rows["pid"]) | (np.abs(self.ctime[slots] - rows["ctime"]) > 0.05)
        check = self.alerts_open[slots] | (rows["cpu"] > self.cpu_max[slots]) | (rows["rss"] > self.rss_max[slots])
        check |= rows["fds"] > self.fds_max[slots]
        if stranger.any() or check.any():
            raise RuntimeError("the prototype has no per-sample path: the benchmark's samples never need one")
        seq = self.seq[slots] + 1
        self.seq[slots] = seq
        head = self.head[slots]
        self.head[slots] = (head + 1) % self.capacity
        out = np.empty(len(rows), RECORD)
        for field in ("ts", "cpu", "rss", "vms", "rd", "wr", "fds", "thr", "mask"):
            out[field] = rows[field]
        out["seq"], out["pad"] = seq, 0
        words = out.view(np.uint64).reshape(len(rows), 8)[:, :7]
        out["sum"] = ((words * _MIX).sum(axis=1, dtype=np.uint64) >> np.uint64(32)).astype(np.uint32)
        self.history[slots, head + 1] = out
        self.last[slots] = out
        return len(rows)

    def records_written(self) -> np.ndarray:
        return (self.history["seq"][:, 1:] != 0).sum(axis=1)

    def close(self) -> None:
        del self.history
        self.map.close()


def _packed(samples: list[wire.Sample], slot: dict[str, int]) -> bytes:
    """What a worker would send for the prototype: its batch as one packed array."""
    return np.array(
        [
            (slot[s.agent_id], s.pid, s.create_time, s.timestamp, s.cpu, s.memory_rss, s.memory_vms,
             s.disk_read_bytes, s.disk_write_bytes, s.open_files, s.num_threads, 0)
            for s in samples
        ],
        dtype=ROW,
    ).tobytes()


def measure(args) -> dict:
    from fleetmon.store.layout import StateDir
    from fleetmon.store.ring import read_points
    from fleetmon.store.writer import Writer
    from fleetmon.supervisor.config import Config

    n, half = args.agents, args.agents // 2
    ids = H.agent_ids(n)
    slot = {agent_id: i for i, agent_id in enumerate(ids)}
    root = Path(tempfile.mkdtemp(prefix="fleetmon-bench-", dir=args.workdir or H.default_workdir()))
    logger.disable("fleetmon")
    listener = socket.socket(socket.AF_UNIX)
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)  # the Writer raises it for its rings
    writers: dict[str, Writer] = {}
    columnar = None
    try:
        for name in ("today", "per_sample"):
            state = StateDir(root / name).create()
            w = writers[name] = Writer(state, Config(history_size=args.history_size), listener, "token", [0.0, 0.0], os.getppid())
            w.fleet.set_registry([wire.RegisteredAgent(i, "default", 10_000 + k, None, LIMITS) for k, i in enumerate(ids)], time.time())
            w.early = None
        pids = 10_000 + np.arange(n, dtype=np.int32)
        ctimes = 1.7e9 + np.arange(n, dtype=np.float64)  # synthetic_samples' create times
        columnar = Columnar(root / "history.bin", n, args.history_size, pids, ctimes)
        encoder, decoder = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(wire.ToWriter)
        infos = [wire.WorkerInfo(0, 1, half), wire.WorkerInfo(1, 2, n - half)]
        tick, last_ts = 0, 0.0
        apply_us: dict[str, list[float]] = {"today": [], "per_sample": []}
        flush_us: dict[str, list[float]] = {"today": [], "per_sample": []}
        proto_us: list[float] = []
        encode_us: dict[str, list[float]] = {"packed batch": [], "msgpack": [], "packed array": []}

        def batches(count: int):
            nonlocal tick, last_ts
            out = []
            for _ in range(count):
                last_ts = time.time() + tick * 0.02
                samples = synthetic_samples(ids, tick, last_ts)
                parts = (samples[:half], samples[half:])
                started = time.process_time()
                msgs = {}
                msgs["today"] = [encoder.encode(wire.Batch.sent(w, tick, 0.0, 0.0, part)) for w, part in enumerate(parts)]
                encode_us["packed batch"].append((time.process_time() - started) / n * 1e6)
                started = time.process_time()
                msgs["per_sample"] = [encoder.encode(wire.Batch(w, tick, 0.0, 0.0, part)) for w, part in enumerate(parts)]
                encode_us["msgpack"].append((time.process_time() - started) / n * 1e6)
                started = time.process_time()
                packed = [_packed(part, slot) for part in parts]
                encode_us["packed array"].append((time.process_time() - started) / n * 1e6)
                out.append((tick, msgs, packed))
                tick += 1
            return out

        def run_writer(name: str, ticks) -> None:
            """Decode and apply, then flush, in us per sample, into ``apply_us`` and ``flush_us``."""
            writer = writers[name]
            apply = flush = 0.0
            clock = time.process_time
            for t, msgs, _ in ticks:
                writer.daemon = wire.DaemonInfo(1, 2, infos, t, 0.02)
                for w, msg in enumerate(msgs[name]):
                    started = clock()
                    writer._on_batch(w, decoder.decode(msg))
                    between = clock()
                    writer._maybe_flush()
                    apply, flush = apply + between - started, flush + clock() - between
            apply_us[name].append(apply / (n * len(ticks)) * 1e6)
            flush_us[name].append(flush / (n * len(ticks)) * 1e6)

        def run_prototype(ticks) -> float:
            started = time.process_time()
            for _, _, packed in ticks:
                for blob in packed:
                    columnar.apply(blob)
            return (time.process_time() - started) / (n * len(ticks)) * 1e6

        warm = batches(2)
        runs = {"today": lambda ticks: run_writer("today", ticks), "per_sample": lambda ticks: run_writer("per_sample", ticks),
                "prototype": lambda ticks: proto_us.append(run_prototype(ticks))}
        for run in runs.values():
            run(warm)
        for writer in writers.values():
            while any(a.meta_dirty for a in writer.fleet.agents.values()):  # every agents/<id>.json out of the way
                writer._flush()
        for r in range(args.repeat):  # taking turns at going first
            ticks = batches(args.ticks)
            order = list(runs)
            for name in order[r % 3 :] + order[: r % 3]:
                runs[name](ticks)
        del proto_us[0]  # (the warm-up)
        for v in (*apply_us.values(), *flush_us.values()):
            del v[0]
        expected = min(tick, args.history_size)

        def holds_all(writer: Writer) -> bool:
            writer.rings.close_all()
            for agent_id in ids:
                points = read_points(writer.rings.path(agent_id))
                if len(points) != expected or points[-1].timestamp != last_ts:
                    return False
            return True

        written = {name: holds_all(w) for name, w in writers.items()}
        newest = columnar.history["seq"].argmax(axis=1)
        proto_ok = bool(
            (columnar.records_written() == expected).all()
            and (columnar.history["seq"].max(axis=1) == tick).all()
            and (columnar.history["ts"][np.arange(n), newest] == last_ts).all()
        )
    finally:
        with H.cleanup():
            if columnar is not None:
                columnar.close()
            for writer in writers.values():
                writer.ring_sync.close(5.0)
                writer.rings.close_all()
                writer.alert_log.close()
                writer.sel.close()
            listener.close()
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
            logger.enable("fleetmon")
            shutil.rmtree(root, ignore_errors=True)

    def summary(values: list[float]) -> dict:
        return {"min_us": round(min(values), 3), "median_us": round(statistics.median(values), 3), "runs_us": [round(v, 3) for v in values]}

    return {
        "benchmark": "writer_paths",
        "command": "python -m benchmarks.writer_paths " + " ".join(args.argv),
        "machine": H.machine(),
        "params": {"agents": n, "ticks": args.ticks, "repeat": args.repeat, "history_size": args.history_size},
        **{
            name: {**summary(apply_us[name]), "flush": summary(flush_us[name]), "every_record_written": written[name]}
            for name in writers
        },
        "prototype": {**summary(proto_us), "every_record_written": proto_ok},
        "today_vs_per_sample": round(min(apply_us["today"]) / min(apply_us["per_sample"]), 3),  # decode and apply
        "prototype_vs_today": round(min(proto_us) / min(apply_us["today"]), 3),  # decode and apply, flush left out
        "worker_encode": {k: summary(v) for k, v in encode_us.items()},
    }


def table(result: dict) -> Table:
    t = Table(title=f"writer cost per sample, {result['params']['agents']} agents, 2 batches a tick")
    for col in ("path", "writer us/sample (min)", "median", "x today", "worker encode us/sample (min)", "all records written"):
        t.add_column(col, justify="left" if col == "path" else "right")
    enc = result["worker_encode"]
    today, per, proto = result["today"], result["per_sample"], result["prototype"]
    t.add_row("today (packed batch, Fleet.on_packed)", f"{today['min_us']:.2f}", f"{today['median_us']:.2f}", "1.00",
              f"{enc['packed batch']['min_us']:.2f}", str(today["every_record_written"]))
    t.add_row("  its flush after each batch", f"{today['flush']['min_us']:.2f}", f"{today['flush']['median_us']:.2f}", "", "", "")
    t.add_row("per sample (msgpack structs, on_sample each)", f"{per['min_us']:.2f}", f"{per['median_us']:.2f}",
              f"{1 / result['today_vs_per_sample']:.2f}", f"{enc['msgpack']['min_us']:.2f}", str(per["every_record_written"]))
    t.add_row("prototype (one mapped file, numpy)", f"{proto['min_us']:.2f}", f"{proto['median_us']:.2f}",
              f"{result['prototype_vs_today']:.2f}", f"{enc['packed array']['min_us']:.2f}", str(proto["every_record_written"]))
    t.caption = "writer: decode and apply, in process (the flush apart: the prototype has none); the prototype is not fleetmon code"
    return t


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.writer_paths", description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=4000, help="agents (default 4000), in two batches a tick")
    p.add_argument("--ticks", type=int, default=30, help="ticks per run (default 30)")
    p.add_argument("--repeat", type=int, default=5, help="runs of each path, alternating (default 5)")
    p.add_argument("--history-size", type=int, default=1440)
    p.add_argument("--workdir", type=Path, default=None, help="where the files go (default: beside fleetmon's default state dir)")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/writer_paths-<time>.json)")
    args = p.parse_args(argv)
    args.argv = argv
    return args


main = H.entry_point("writer_paths", parse_args, measure, table, 150)

if __name__ == "__main__":
    H.run_script(main)
