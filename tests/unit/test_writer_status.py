"""When the writer replaces status.json: after every tick at intervals of a second or more; at most
once a second (and then with the newest samples) at sub-second intervals. A fake clock drives it."""

from __future__ import annotations

import os

import pytest

from fleetmon import channel, wire
from fleetmon.store import writer as writer_mod
from fleetmon.store.layout import StateDir
from fleetmon.store.persist import _status_decoder
from fleetmon.store.ring import read_points
from tests.helpers import in_process_writer, writer_connection


class Clock:
    def __init__(self, start: float = 1_000.0):
        self.now = start

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1.7e9 + self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(writer_mod, "time", c)
    return c


@pytest.fixture
def setup(tmp_path, clock):
    listener = channel.listen_unix(str(tmp_path / "w.sock"))
    state = StateDir(tmp_path / "state").create()
    w = in_process_writer(state, listener)
    ends = {role: writer_connection(w, role) for role in (-1, 0)}
    conns = {role: conn for role, (conn, _) in ends.items()}
    w._dispatch(conns[-1], wire.Registry([wire.RegisteredAgent("x", "default", 4242, None, wire.Thresholds())]))
    yield w, conns, state
    w.rings.close_all()
    for pair in ends.values():
        for c in pair:
            c.close()
    listener.close()


def _tick(w, conns, clock, tick: int, interval: float, pid: int = 4242) -> float:
    """The supervisor's DaemonInfo for ``tick``, then worker 0's batch for it; returns its timestamp."""
    ts = clock.time()
    w._dispatch(conns[-1], wire.DaemonInfo(1, os.getpid(), [wire.WorkerInfo(0, 2, 1)], tick, interval))
    w._dispatch(conns[0], wire.Batch(0, tick, ts, ts, [wire.Sample("x", pid, float(pid), ts, 1.0, 2, 3, 4, 5, 6, 7)]))
    w._maybe_flush()
    return ts


def _status_sample(state: StateDir) -> float:
    snap = _status_decoder.decode(state.status.read_bytes())
    from fleetmon.units import parse_rfc3339

    return parse_rfc3339(snap.agents[0].last_sample.timestamp)


def test_sub_second_interval_replaces_status_at_most_once_a_second(setup, clock):
    w, conns, state = setup
    first = _tick(w, conns, clock, 1, 0.1)
    assert _status_sample(state) == pytest.approx(first)
    stamps = [first]
    for tick in range(2, 10):  # 0.1 .. 0.8 s later: history gets every tick, status.json waits
        clock.now += 0.1
        stamps.append(_tick(w, conns, clock, tick, 0.1))
        assert _status_sample(state) == pytest.approx(first)
    assert w.status_pending
    assert [p.timestamp for p in read_points(state.ring_file("x"))] == pytest.approx(stamps)
    assert 0 < w._wait_time() <= 0.2 + 1e-9  # the loop wakes when the second is up
    clock.now += 0.2  # a second after the last write, no tick coming: the loop writes it alone
    w._maybe_flush()
    assert _status_sample(state) == pytest.approx(stamps[-1])
    assert not w.status_pending
    clock.now += 0.1
    last = _tick(w, conns, clock, 10, 0.1)
    assert _status_sample(state) == pytest.approx(stamps[-1])
    w._flush(final=True)  # stopping: always the newest
    assert _status_sample(state) == pytest.approx(last)


def test_a_change_of_an_agent_is_in_status_json_at_once_at_sub_second_intervals(setup, clock):
    """Only new samples wait for the second: a new pid (a restart), like a status or an alert
    change, is written with the tick that brought it, as agents/<id>.json and alerts.jsonl are."""
    w, conns, state = setup
    _tick(w, conns, clock, 1, 0.1)
    clock.now += 0.1
    ts = _tick(w, conns, clock, 2, 0.1, pid=4343)
    rec = _status_decoder.decode(state.status.read_bytes()).agents[0]
    assert (rec.pid, rec.restart_count) == (4343, 1)
    assert _status_sample(state) == pytest.approx(ts)
    assert not w.status_pending


@pytest.mark.parametrize("interval", [1.0, 60.0])
def test_interval_of_a_second_or_more_replaces_status_after_every_tick(setup, clock, interval):
    w, conns, state = setup
    for tick in range(1, 5):
        clock.now += 0.3  # flushes closer together than a second (a late tick, then an early one)
        ts = _tick(w, conns, clock, tick, interval)
        assert _status_sample(state) == pytest.approx(ts)
        assert not w.status_pending


def test_status_write_failure_is_retried_a_second_later_not_in_a_busy_loop(setup, clock, monkeypatch):
    from loguru import logger

    w, conns, state = setup
    _tick(w, conns, clock, 1, 0.1)
    calls, said = [], []
    sink = logger.add(lambda m: said.append(m.record["message"]), level="INFO")
    real = writer_mod.persist.save_status

    def fail(*args):
        calls.append(clock.now)
        raise OSError(28, "No space left on device")

    try:
        monkeypatch.setattr(writer_mod.persist, "save_status", fail)
        clock.now += 1.0
        _tick(w, conns, clock, 2, 0.1)
        assert len(calls) == 1 and w.status_pending
        w._maybe_flush()  # the failed flush is tried again at once: status.json is left out of it
        assert len(calls) == 1  # not again at once
        assert w._wait_time() == 0.5  # the loop's longest sleep: nothing is due sooner
        clock.now += 1.0
        w._maybe_flush()
        assert len(calls) == 2
        assert not [m for m in said if "works again" in m]  # a status.json left out proves nothing
        monkeypatch.setattr(writer_mod.persist, "save_status", real)
        clock.now += 1.0
        ts = _tick(w, conns, clock, 3, 0.1)
        assert _status_sample(state) == pytest.approx(ts)
        assert len([m for m in said if "works again" in m]) == 1
    finally:
        logger.remove(sink)


def test_a_registry_change_is_in_status_json_at_once(setup, clock):
    """An agent added (which changes its metadata) or removed (which changes no agent's file) shows
    in status.json with the next tick."""
    w, conns, state = setup

    def registry(*ids):
        w._dispatch(conns[-1], wire.Registry([wire.RegisteredAgent(i, "default", 4242, None, wire.Thresholds()) for i in ids]))

    def listed():
        return [r.id for r in _status_decoder.decode(state.status.read_bytes()).agents]

    _tick(w, conns, clock, 1, 0.1)
    for tick, ids in ((2, ("x", "y")), (3, ("x",))):
        clock.now += 0.1
        registry(*ids)
        _tick(w, conns, clock, tick, 0.1)
        assert listed() == list(ids)
    clock.now += 0.1
    _tick(w, conns, clock, 4, 0.1)  # and the next tick waits for the second again
    assert w.status_pending


def test_before_the_first_tick_info_status_json_is_not_held_back(setup, clock):
    """No DaemonInfo yet (no interval known): nothing is left out."""
    w, conns, state = setup
    ts = clock.time()
    w._dispatch(conns[0], wire.Batch(0, 1, ts, ts, [wire.Sample("x", 4242, 1000.0, ts, 1.0, 2, 3, 4, 5, 6, 7)]))
    clock.now += writer_mod.FLUSH_AFTER
    w._maybe_flush()
    assert _status_sample(state) == pytest.approx(ts)
    assert not w.status_pending


def test_a_left_out_status_json_waits_for_a_tick_in_progress(setup, clock):
    """While a tick is only partly in (dirty), status.json is written by that tick's flush, not
    ahead of it, and the loop does not spin meanwhile."""
    w, conns, state = setup
    _tick(w, conns, clock, 1, 0.1)
    clock.now += 0.1
    _tick(w, conns, clock, 2, 0.1)
    assert w.status_pending
    clock.now += 1.0
    w._dispatch(conns[-1], wire.DaemonInfo(1, os.getpid(), [wire.WorkerInfo(0, 2, 1), wire.WorkerInfo(1, 3, 1)], 3, 0.1))
    ts = clock.time()
    w._dispatch(conns[0], wire.Batch(0, 3, ts, ts, [wire.Sample("x", 4242, 4242.0, ts, 1.0, 2, 3, 4, 5, 6, 7)]))
    w._maybe_flush()  # worker 1's batch has not come
    assert w.dirty and w.status_pending and _status_sample(state) < ts
    assert w._wait_time() == 0.5  # not 0: the flush delay (1 s from now) governs
    clock.now += writer_mod.FLUSH_AFTER
    w._maybe_flush()
    assert _status_sample(state) == pytest.approx(ts) and not w.status_pending



def test_a_config_update_applies_retention_without_a_restart(setup, clock):
    """SIGHUP's ConfigUpdate: alerts_max_size for the next append, keep_removed for the next look
    for removed agents (which comes at once, not up to an hour later by the old setting)."""
    w, conns, state = setup
    _tick(w, conns, clock, 1, 1.0)
    w._dispatch(conns[-1], wire.Registry([]))  # x removed
    _tick(w, conns, clock, 2, 1.0)
    assert state.agent_file("x").exists() and w.config.keep_removed == 7 * 86400.0
    update = wire.ConfigUpdate(wire.Thresholds(), {}, 600.0, 4096, 5.0)
    w._dispatch(conns[-1], update)
    assert w.alert_log.max_size == 4096 and w.config.keep_removed == 5.0
    clock.now += 10  # (the writer's wall clock follows the fake one)
    w._flush()
    assert "x" not in w.fleet.agents and not state.agent_file("x").exists()
    w._dispatch(conns[-1], wire.ConfigUpdate(wire.Thresholds(), {}, 600.0))  # None: unchanged
    assert w.alert_log.max_size == 4096 and w.config.keep_removed == 5.0
