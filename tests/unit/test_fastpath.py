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
