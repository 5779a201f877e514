"""fastpath.Columns against Fleet.on_sample: cases the hypothesis test in
tests/bench/test_optimisations.py does not generate."""

from __future__ import annotations

from fleetmon import wire
from fleetmon.store.fleet import Fleet
from fleetmon.store.ring import RingStore, read_points

CT = 1.7e9


def _sample(ts: float, cpu: float, agent: str = "a", pid: int = 7) -> wire.Sample:
    return wire.Sample(agent, pid, CT, ts, cpu, 100, 200, 1, 1, 3, 1, (), ts / 1e6)


def _fleet(directory, cpu_threshold: float = 50.0) -> tuple[Fleet, list]:
    events: list = []
    fleet = Fleet(RingStore(directory, 100, mapped=True), events.append)
    fleet.set_registry([wire.RegisteredAgent("a", "default", 7, None, wire.Thresholds(cpu_threshold=cpu_threshold))], 0)
    fleet.on_sample(_sample(CT + 1, 1.0))  # the process learned, the ring open and mapped: the slot ok
    assert fleet.cols.ok[fleet.agents["a"].slot]
    return fleet, events


def _outcome(fleet: Fleet, directory, events: list):
    a = fleet.agents["a"]
    fleet.rings.close_all()
    return (
        [(e.state, e.since) for e in events], {r: x.state for r, x in a.alerts.items()}, a.last,
        [p.timestamp for p in read_points(directory / "a.ring")], fleet.samples_total,
    )


def test_an_agent_twice_in_a_packed_batch_is_applied_in_order(tmp_path):
    """An agent twice in one batch, the first sample over its limit and the second under: the fast
    path must not take the second before ``on_sample`` has applied the first."""
    over, under = _sample(CT + 2, 90.0), _sample(CT + 3, 10.0)
    ref_dir, fast_dir = tmp_path / "ref", tmp_path / "fast"
    ref_dir.mkdir(), fast_dir.mkdir()
    ref, ref_events = _fleet(ref_dir)
    for s in (over, under):
        ref.on_sample(s)
    fast, fast_events = _fleet(fast_dir)
    rest, packed_ids, packed = wire.pack_samples([over, under])
    assert rest == []
    fast.on_packed(packed_ids, packed)
    assert _outcome(fast, fast_dir, fast_events) == _outcome(ref, ref_dir, ref_events)


def test_last_read_from_another_thread_is_one_sample_never_a_mix(tmp_path):
    """The HTTP thread reads ``Agent.last`` while the writer's thread applies batches. numpy lets go
    of the GIL while it copies a batch's rows into ``Columns.last``: a row read meanwhile must still
    be one sample (here every number of sample k is k), not part of one and part of the next."""
    import threading
    import time

    n = 4096
    ids = [f"a{i}" for i in range(n)]
    fleet = Fleet(RingStore(tmp_path, 130, max_open=2 * n + 16, mapped=True), lambda e: None)
    fleet.set_registry([wire.RegisteredAgent(i, "default", 7, None, wire.Thresholds()) for i in ids], 0)

    def batch(k: int) -> tuple[str, bytes]:
        rest, packed_ids, packed = wire.pack_samples(
            [wire.Sample(i, 7, CT, CT + k, float(k), k, k, k, k, k, k, (), float(k)) for i in ids]
        )
        assert rest == []
        return packed_ids, packed

    batches = [batch(k) for k in range(1, 65)]
    for packed_ids, packed in batches[:2]:
        fleet.on_packed(packed_ids, packed)
    watched = [fleet.agents[i] for i in ids[-8:]]
    mixed: list = []
    stop = threading.Event()

    def http() -> None:
        while not stop.is_set():
            for a in watched:
                p = a.last
                if len({p.timestamp - CT, p.cpu, p.memory_rss, p.memory_vms, p.disk_read_bytes, p.num_threads, p.cpu_seconds}) != 1:
                    mixed.append(p)

    reader = threading.Thread(target=http)
    reader.start()
    try:
        deadline = time.monotonic() + 2.0
        k = 2
        while time.monotonic() < deadline and not mixed:
            packed_ids, packed = batches[k % len(batches)]
            fleet.on_packed(packed_ids, packed)
            k += 1
    finally:
        stop.set()
        reader.join(10)
        fleet.rings.close_all()
    assert mixed == []
