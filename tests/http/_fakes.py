"""An in-memory fleet and a stand-in for the writer, for the collector and the endpoint without
processes."""

from __future__ import annotations

import time
from types import SimpleNamespace

from fleetmon import wire
from fleetmon.store.fleet import Fleet
from fleetmon.store.layout import StateDir

T0 = 1_700_000_000.0
CT = 1_699_999_000.0


class NullRings:
    """The RingStore calls Fleet makes, without files (no ring is open: the fast path takes nothing)."""

    opened: dict = {}
    lru_kept = False

    def append(self, agent_id, point) -> None:
        pass

    def close(self, agent_id) -> None:
        pass


def sample(
    agent_id: str, pid: int, ts: float = T0, cpu=1.5, rss=1 << 20, vms=1 << 22, rd=10, wr=20, fds=5, threads=2, denied=(),
    cpu_seconds=12.5,
):
    return wire.Sample(agent_id, pid, CT, ts, cpu, rss, vms, rd, wr, fds, threads, tuple(denied), cpu_seconds)


def big_fleet(n: int, now: float | None = None) -> Fleet:
    """``n`` registered, running agents with a full sample each and cpu + memory thresholds."""
    now = time.time() if now is None else now
    fleet = Fleet(NullRings(), lambda event: None)
    fleet.set_registry(
        [
            wire.RegisteredAgent(f"agent-{i:05d}", f"type{i % 3}", 10_000 + i, None, wire.Thresholds(cpu_threshold=50, memory_threshold=1 << 30))
            for i in range(n)
        ],
        now,
    )
    for i in range(n):
        fleet.on_sample(sample(f"agent-{i:05d}", 10_000 + i, now, cpu=float(i % 100), rss=(1 << 20) + i))
    return fleet


def fake_writer(fleet: Fleet, state_root=None, daemon: wire.DaemonInfo | None = None, interval: float = 1.0):
    """The attributes of ``fleetmon.store.writer.Writer`` that the HTTP endpoint reads."""
    return SimpleNamespace(
        fleet=fleet,
        daemon=daemon,
        state=StateDir(state_root) if state_root is not None else None,
        config=SimpleNamespace(interval=interval),
        flushed_tick=-1,
        flushed_at=0.0,
        persisted_at=0.0,
        lost_batches=0,
        write_failing=False,
    )


def daemon_info(workers: int = 2, tick: int = 1, interval: float = 1.0, running: bool = True, **kw) -> wire.DaemonInfo:
    return wire.DaemonInfo(
        supervisor_pid=1, writer_pid=2, workers=[wire.WorkerInfo(i, 100 + i, 3, restarts=i) for i in range(workers)],
        tick=tick, interval=interval, running=running, **kw,
    )
