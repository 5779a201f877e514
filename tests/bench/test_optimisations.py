"""The performance work changed how some things are computed, never what they produce."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st

from fleetmon import wire
from fleetmon.store import persist
from fleetmon.store.fleet import Fleet
from fleetmon.units import rfc3339


def _reference_rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@given(st.floats(min_value=-2e9, max_value=4e9, allow_nan=False))
def test_rfc3339_matches_datetime(ts):
    assert rfc3339(ts) == _reference_rfc3339(ts)


@given(st.integers(min_value=0, max_value=4_000_000_000), st.integers(min_value=0, max_value=1_999_999))
def test_rfc3339_rounds_half_microseconds_like_datetime(sec, half_us):
    ts = sec + half_us / 2e6  # lands on (or next to) a half microsecond
    assert rfc3339(ts) == _reference_rfc3339(ts)


def test_rfc3339_cache_stays_bounded():
    for s in range(10_000):
        rfc3339(1.7e9 + s)
    from fleetmon import units

    assert len(units._SECONDS) <= 4096


def test_agent_record_with_preformatted_updated_is_the_same(tmp_path):
    from fleetmon.store.ring import Point, RingStore

    fleet = Fleet(RingStore(tmp_path, 10), lambda e: None)
    fleet.set_registry([wire.RegisteredAgent("a", "web", 42, None, wire.Thresholds())], 0)
    a = fleet.agents["a"]
    a.pid, a.create_time, a.status = 42, 1.7e9 + 0.123456, "running"
    a.last = Point(1.7e9 + 60.5, 1.0, 1, 2, 3, 4, 5, 6)
    now = 1.7e9 + 61.25
    assert a.record(now, rfc3339(now)) == a.record(now)


def test_metadata_refresh_can_be_left_for_after_the_tick(tmp_path, monkeypatch):
    """The writer persists a tick with refresh=False (changed agents only) and refreshes unchanged
    agents' files afterwards: together, the same files as one call did."""
    from fleetmon.store.layout import StateDir
    from fleetmon.store.ring import RingStore

    written: list[list[str]] = []
    monkeypatch.setattr(persist.fsutil, "atomic_write_many", lambda d, files: written.append(sorted(n for n, _ in files)))
    state = StateDir(tmp_path).create()
    fleet = Fleet(RingStore(state.history, 10), lambda e: None)
    fleet.set_registry([wire.RegisteredAgent(f"a{i}", "default", 100 + i, None, wire.Thresholds()) for i in range(4)], 0)
    t0 = 1.7e9
    assert persist.save_metadata(state, fleet, t0, refresh=False) == 4  # new agents: changed
    fleet.agents["a1"].meta_dirty = True
    later = t0 + persist.METADATA_REFRESH
    assert persist.save_metadata(state, fleet, later, refresh=False) == 1
    assert written[-1] == ["a1.json"]
    assert persist.save_metadata(state, fleet, later) == 3
    assert written[-1] == ["a0.json", "a2.json", "a3.json"]


def test_new_ring_file_is_header_points_and_allocated_zeros(tmp_path):
    """Ring files are preallocated without writing the zeros (see fsutil.preallocate): same bytes
    as header + records + zero padding, and every block allocated."""
    import os

    from fleetmon.store import ring as R

    points = [R.Point(1.7e9 + i, 1.0, i, i, None, i, 3, 1) for i in range(5)]
    r = R.Ring._create(tmp_path / "a.ring", 100, points)
    r.close()
    data = (tmp_path / "a.ring").read_bytes()
    expected = R._header(100) + b"".join(R.encode_record(i, p) for i, p in enumerate(points, start=1))
    assert data == expected + bytes(R.RECORD_SIZE * 101 - len(expected))
    assert os.stat(tmp_path / "a.ring").st_blocks * 512 >= len(data)
    assert R.read_points(tmp_path / "a.ring") == points


def _reference_find_head(records, capacity):
    """ring._find_head before its fast path: every valid record tried in decreasing (seq, index)."""
    import zlib as _zlib

    from fleetmon.store import ring as R

    n = min(len(records) // R.RECORD_SIZE, capacity)
    if n == 0:
        return 0, 0
    seqs = list(records[: n * R.RECORD_SIZE].cast("I")[13::16])
    for seq, idx in sorted(((s, i) for i, s in enumerate(seqs) if s), reverse=True):
        rec = records[idx * R.RECORD_SIZE : (idx + 1) * R.RECORD_SIZE]
        if R.CRC.unpack_from(rec, 60)[0] == _zlib.crc32(rec[:60]):
            return (idx + 1) % capacity, seq
    return 0, 0


@given(
    st.integers(min_value=1, max_value=40),
    st.lists(st.tuples(st.integers(min_value=0, max_value=12), st.booleans()), max_size=40),
    st.integers(min_value=0, max_value=64 * 40),
)
def test_find_head_fast_path_agrees_with_the_reference(capacity, records, cut):
    """Highest seq first, torn records skipped, ties to the later slot, short files: as before."""
    from fleetmon.store import ring as R

    buf = bytearray(R.RECORD_SIZE * capacity)
    for i, (seq, torn) in enumerate(records[:capacity]):
        if seq:
            rec = bytearray(R.encode_record(seq, R.Point(float(i), 1.0, 1, 2, 3, 4, 5, 6)))
            if torn:
                rec[7] ^= 0xFF
            buf[i * R.RECORD_SIZE : (i + 1) * R.RECORD_SIZE] = rec
    data = memoryview(bytes(buf[: min(cut, len(buf))]))
    assert R._find_head(data, capacity) == _reference_find_head(data, capacity)


def _reference_encode_record(seq, p):
    """ring.encode_record before its fast path: the null mask built metric by metric."""
    import zlib as _zlib

    from fleetmon.store import ring as R

    values = list(p)
    mask = 0
    for bit, i in enumerate(range(1, 8)):
        if values[i] is None:
            mask |= 1 << bit
            values[i] = 0.0 if i == 1 else 0
    body = R.BODY.pack(*values, seq, mask, 0)
    return body + R.CRC.pack(_zlib.crc32(body))


_metric = st.one_of(st.none(), st.integers(min_value=0, max_value=2**62))


@given(
    st.integers(min_value=1, max_value=2**32 - 1),
    st.floats(min_value=0, max_value=4e9),
    st.one_of(st.none(), st.floats(min_value=0, max_value=1e4, width=32)),
    _metric, _metric, _metric, _metric,
    st.one_of(st.none(), st.integers(min_value=0, max_value=2**31 - 1)),
    st.one_of(st.none(), st.integers(min_value=0, max_value=2**31 - 1)),
)
def test_ring_append_fast_path_agrees_with_the_reference(seq, ts, cpu, rss, vms, rd, wr, fds, thr):
    """The record Ring.append writes (its own packing when no metric is null, else encode_record),
    mapped or with pwrite, is the reference encoding."""
    import tempfile

    from fleetmon.store import ring as R

    p = R.Point(ts, cpu, rss, vms, rd, wr, fds, thr)
    assert R.encode_record(seq, p) == _reference_encode_record(seq, p)
    with tempfile.TemporaryDirectory() as d:
        for mapped in (False, True):
            path = Path(d) / f"{mapped}.ring"
            ring = R.Ring.open(path, 4, mapped)
            ring.seq = seq - 1  # the next append is ``seq``
            ring.append(p)
            ring.close()
            data = path.read_bytes()[R.RECORD_SIZE : 2 * R.RECORD_SIZE]
            assert data == _reference_encode_record(seq, p)
            assert R.decode_records(data) == [(seq, p._replace(cpu=None if cpu is None else R._shortest_f32(cpu)))]


def test_agent_record_without_alerts_shares_an_empty_list_that_stays_empty(tmp_path):
    """Agent.record hands every alert-free agent the same empty list (no allocation per agent per
    tick): building and encoding records, with and without alerts, never puts anything in it."""
    import msgspec

    from fleetmon.store import fleet as F
    from fleetmon.store.records import AgentRecord, AlertBrief, point_json
    from fleetmon.store.ring import Point, RingStore
    from fleetmon.store.thresholds import Alert

    fleet = Fleet(RingStore(tmp_path, 10), lambda e: None)
    fleet.set_registry([wire.RegisteredAgent(i, "web", 42, None, wire.Thresholds()) for i in ("a", "b")], 0)
    a, b = fleet.agents["a"], fleet.agents["b"]
    for agent in (a, b):
        agent.pid, agent.create_time, agent.status = 42, 1.7e9, "running"
        agent.last = Point(1.7e9 + 60.5, 1.0, 1, 2, 3, 4, 5, None)
    b.alerts["cpu"] = Alert("warning", 1.7e9 + 30)
    now = 1.7e9 + 61.25
    records = [a.record(now), b.record(now)]
    msgspec.json.encode(records)
    assert F._NO_ALERTS == [] and records[0].alerts is F._NO_ALERTS
    assert records[0] == AgentRecord(
        "a", "web", 42, "running", 0, rfc3339(1.7e9), point_json(a.last), [], rfc3339(now),
    )
    assert records[1].alerts == [AlertBrief("cpu", "warning", rfc3339(1.7e9 + 30))]
    a.alerts["memory"] = Alert("error", 1.7e9 + 40)  # a's next record gets a list of its own
    again = a.record(now)
    assert again.alerts == [AlertBrief("memory", "error", rfc3339(1.7e9 + 40))]
    assert again.alerts is not F._NO_ALERTS and F._NO_ALERTS == [] and records[0].alerts == []


def _record_log():
    """The messages logged from now on (DEBUG and up), and the function that stops recording them."""
    from loguru import logger

    lines: list = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="DEBUG")
    return lines, lambda: logger.remove(sink)


def _thresholds(cpu, memory, fds, duration) -> wire.Thresholds:
    return wire.Thresholds(cpu_threshold=cpu, memory_threshold=memory, open_files_threshold=fds, threshold_duration=duration)


_limit = st.integers(min_value=0, max_value=4)  # small: values land on the limits often
_value = st.one_of(st.none(), st.integers(min_value=0, max_value=6))


@settings(deadline=None)  # a RingStore per example: file creation time varies on a shared host
@given(
    cpu=_limit, memory=_limit, fds=_limit,
    duration=st.sampled_from([0, 1, 3]),
    repeat=st.sampled_from([0.0, 2.0, 600.0]),
    readings=st.lists(st.tuples(_value, _value, _value), max_size=30),
)
def test_skipping_the_state_machine_under_the_limits_changes_nothing(tmp_path_factory, cpu, memory, fds, duration, repeat, readings):
    """``Fleet.on_sample`` runs the threshold state machine only when an episode is open or a value
    is over its limit. Against a fleet that runs it for every sample: the same events, alerts and log
    lines, whatever the limits (0 = off), values (None = unreadable) and repeat interval."""
    from fleetmon.store.ring import RingStore

    thresholds = _thresholds(cpu, memory, fds, duration)
    runs = []
    for gate in (True, False):
        events: list = []
        lines, stop_recording = _record_log()
        rings = RingStore(tmp_path_factory.mktemp("h"), 50)
        try:
            fleet = Fleet(rings, events.append, alert_repeat=repeat)
            fleet.set_registry([wire.RegisteredAgent("a", "default", 7, None, thresholds)], 0)
            a = fleet.agents["a"]
            if not gate:  # every non-None value passes the gate: the state machine runs for each sample
                a.cpu_max = a.rss_max = a.fds_max = float("-inf")
            for i, (c, m, f) in enumerate(readings):
                fleet.on_sample(wire.Sample("a", 7, 1.7e9, 1.7e9 + 100 + i, None if c is None else float(c), m, 1, 0, 0, f, 1))
            runs.append((events, {r: (x.state, x.since, x.logged) for r, x in a.alerts.items()}, lines))
        finally:
            stop_recording()
            rings.close_all()
    assert runs[0] == runs[1]


def test_new_limits_reach_the_gate(tmp_path):
    """Limits changed by a reload (``set_thresholds``) or the registry are the ones the gate uses."""
    from fleetmon.store.ring import RingStore

    events: list = []
    fleet = Fleet(RingStore(tmp_path, 10), events.append)
    fleet.set_registry([wire.RegisteredAgent("a", "default", 7, None, wire.Thresholds())], 0)

    def feed(ts, cpu, fds=1):
        fleet.on_sample(wire.Sample("a", 7, 1.7e9, ts, cpu, 100, 1, 0, 0, fds, 1))

    feed(1.7e9 + 1, 80.0)
    assert events == []  # no limits
    fleet.set_thresholds(wire.Thresholds(cpu_threshold=50, threshold_duration=0), {}, 0)
    feed(1.7e9 + 2, 80.0)
    assert [(e.resource, e.state) for e in events] == [("cpu", "error")]
    fleet.set_registry([wire.RegisteredAgent("a", "default", 7, None, wire.Thresholds(cpu_threshold=90, open_files_threshold=2))], 0)
    feed(1.7e9 + 3, 80.0)  # under the agent's own 90: the episode closes
    assert [(e.resource, e.state) for e in events][1:] == [("cpu", "ok")]
    feed(1.7e9 + 4, 10.0, fds=5)  # no episode open, over the agent's own open-files limit
    assert [(e.resource, e.state) for e in events][2:] == [("open_files", "error")]


def test_status_records_are_not_tracked_by_the_garbage_collector(tmp_path):
    """The writer builds a record per agent for every status.json: tracked, they set off a
    collection every ~700 and a full one every few seconds (12% of its CPU at 10,000 agents, 1 s)."""
    import gc

    from fleetmon.store.ring import Point, RingStore
    from fleetmon.store.thresholds import Alert

    fleet = Fleet(RingStore(tmp_path, 10), lambda e: None)
    fleet.set_registry([wire.RegisteredAgent("a", "web", 42, None, wire.Thresholds())], 0)
    a = fleet.agents["a"]
    a.last = Point(1.7e9, 1.0, 1, 2, 3, 4, 5, 6)
    a.alerts["cpu"] = Alert("warning", 1.7e9)
    record = a.record(1.7e9 + 1)
    assert record.last_sample is not None and record.alerts
    assert not gc.is_tracked(record) and not gc.is_tracked(record.last_sample) and not gc.is_tracked(record.alerts[0])


_AGENTS = ("a", "b")
_PIDS = {"a": 100, "b": 200}
# Weighted towards the common case (the same process, every metric read, under the limits), so that
# the fast path and every way out of it come up in most scripts.
_reading = st.sampled_from([None] + [0, 1, 1, 2, 2, 3] * 3 + [5, 6])
_sample = st.tuples(
    st.sampled_from(_AGENTS),
    st.sampled_from([0] * 15 + [1]),  # the agent's pid, or the next one: a restart, or a stranger
    st.sampled_from([1.7e9] * 20 + [1.7e9 + 0.01, 1.7e9 + 5, 0.0]),  # create time: within the tolerance, another process, unreadable
    _reading, _reading, _reading,  # cpu, rss, open files (None: unreadable; over the small limits often)
    st.sampled_from([None] * 16 + ["vms", "read", "write", "threads"]),  # one of the other metrics unreadable
)
_SAME = ("a", 0, 1.7e9, 1, 1, 1, None)  # a sample of agent a's process, every metric read, small values
_batch = st.tuples(st.just("batch"), st.lists(_sample, min_size=1, max_size=8))
_step = st.one_of(
    _batch, _batch, _batch, _batch,  # most of a script
    st.tuples(st.just("gone"), st.sampled_from(_AGENTS), st.sampled_from(["no_process", "no_pidfile", "reused"])),
    st.tuples(st.just("stalled"), st.sampled_from(_AGENTS), st.booleans()),
    st.tuples(st.just("registry"), st.sampled_from([("a",), (), _AGENTS, _AGENTS, _AGENTS])),  # removed, added back
    st.tuples(st.just("close"), st.sampled_from(_AGENTS)),
    st.tuples(st.just("settle")),  # status.json written: the fast path's last samples made objects
)


def _as_a_writer_takes_them(fleet: Fleet, samples: list[wire.Sample], one_by_one: bool = False) -> None:
    """As the writer applies a worker's batches: packed (``wire.pack_samples``), the packed ones with
    ``on_packed``, then the others (``one_by_one``: each with ``on_sample``, in that order). A batch
    never holds an agent twice (a worker samples it once a tick): a run of samples is cut where an
    agent comes again."""
    while samples:
        seen: set[str] = set()
        n = 0
        while n < len(samples) and samples[n].agent_id not in seen:
            seen.add(samples[n].agent_id)
            n += 1
        rest, packed_ids, packed = wire.pack_samples(samples[:n])
        if one_by_one:
            for s in wire.unpack_samples(packed_ids, packed) + rest:
                fleet.on_sample(s)
        else:
            fleet.on_packed(packed_ids, packed)
            fleet.on_samples(rest)
            fleet.cols.check(fleet)
        samples = samples[n:]


@settings(deadline=None, max_examples=300)
@given(
    limits=st.tuples(*[st.sampled_from([0, 0, 5, 5, 2])] * 3, st.sampled_from([0, 2])),  # 0: off; 2: often over
    max_open=st.sampled_from([1, 2, 64, 64]),  # 1: rings evicted and reopened; 2: kept in LRU order
    capacity=st.sampled_from([5, 66]),  # 5: wraps around often; 66: a page boundary after record 63
    script=st.lists(_step, min_size=3, max_size=25),
)
@example(  # an agent seen gone, then its process again: on_sample makes it running again
    limits=(0, 0, 0, 0), max_open=64, capacity=5, script=[("batch", [_SAME]), ("gone", "a", "no_process"), ("batch", [_SAME])],
)
@example(  # both rings open at max_open 2: the LRU order is kept, so the fast path steps aside
    limits=(0, 0, 0, 0), max_open=2, capacity=5, script=[("batch", [_SAME, ("b", *_SAME[1:]), _SAME])],
)
@example(  # past a page boundary and a wrap-around, on the fast path between them
    limits=(0, 0, 0, 0), max_open=64, capacity=66, script=[("batch", [_SAME] * 8)] * 10,
)
def test_packed_fast_path_is_on_sample_for_each(tmp_path_factory, limits, max_open, capacity, script):
    """``Fleet.on_packed`` takes the common case a batch at a time and hands the rest to ``on_sample``.
    Against ``on_sample`` for every sample, over random scripts of batches (restarts, strangers,
    unreadable metrics, values over the limits), disappearances, stalls, registry changes and rings
    closed or evicted: the same events, log lines, agents, retired pids and history files, and the
    fast path's arrays what the agents and rings are after every step (``Columns.check``)."""
    from fleetmon.store.ring import RingStore, read_points

    cpu, memory, fds, duration = limits
    thresholds = _thresholds(cpu, memory, fds, duration)
    runs = []
    for batched in (True, False):
        events: list = []
        lines, stop_recording = _record_log()
        directory = tmp_path_factory.mktemp("h")
        rings = RingStore(directory, capacity, max_open=max_open, mapped=True)
        try:
            fleet = Fleet(rings, events.append)
            fleet.set_registry([wire.RegisteredAgent(i, "default", _PIDS[i], None, thresholds) for i in _AGENTS], 0)
            ts = 1.7e9 + 100
            # Each agent's process known to begin with, as after the first tick; either way, then the script.
            fleet.on_samples([wire.Sample(i, _PIDS[i], 1.7e9, ts, 0.0, 0, 1, 1, 1, 0, 1, (), 0.0) for i in _AGENTS])
            for step in script:
                ts += 1
                kind = step[0]
                if kind == "batch":
                    samples = []
                    for agent, next_pid, ctime, c, m, f, missing in step[1]:
                        ts += 0.25
                        vms, rd, wr, thr = (None if missing == k else 1 for k in ("vms", "read", "write", "threads"))
                        pid = _PIDS[agent] + next_pid
                        samples.append(
                            wire.Sample(agent, pid, ctime, ts, None if c is None else float(c), m, vms, rd, wr, f, thr, (), ts / 1e6)
                        )
                    _as_a_writer_takes_them(fleet, samples, one_by_one=not batched)
                elif kind == "gone":
                    fleet.on_gone(wire.Gone(step[1], _PIDS[step[1]], ts, step[2]))
                elif kind == "stalled":
                    fleet.on_stalled(step[1], _PIDS[step[1]], step[2])
                elif kind == "registry":
                    fleet.set_registry([wire.RegisteredAgent(i, "default", _PIDS[i], None, thresholds) for i in sorted(step[1])], ts)
                elif kind == "settle":
                    fleet.settle_last()
                else:
                    rings.close(step[1])
                if batched:
                    fleet.cols.check(fleet)
            agents = {
                a.id: (
                    a.pid, a.create_time, a.status, a.restart_count, a.registered,
                    {r: (x.state, x.since, x.logged) for r, x in a.alerts.items()}, a.last,
                )
                for a in fleet.agents.values()
            }
            lru = list(rings.opened)  # the order eviction goes by
            heads = {i: (r.head, r.seq, r.last_ts, r.page) for i, r in rings.opened.items()}  # (last_ts: RingStore.newest)
            rings.close_all()
            history = {p.name: read_points(p) for p in sorted(directory.iterdir())}
            runs.append((events, lines, agents, fleet.samples_total, fleet.retired, lru, heads, history))
        finally:
            stop_recording()
            rings.close_all()
    assert runs[0] == runs[1]


def test_packed_fast_path_takes_the_common_case_without_on_sample(tmp_path, monkeypatch):
    """The fast path is taken (else the test above would pass with ``on_packed`` a plain loop): a
    second sample of the same process, under its limits, never reaches ``on_sample``."""
    from fleetmon.store.ring import RingStore, read_points

    fleet = Fleet(RingStore(tmp_path, 10, mapped=True), lambda e: None)
    fleet.set_registry([wire.RegisteredAgent("a", "default", 7, None, wire.Thresholds(cpu_threshold=90))], 0)

    def packed(s: wire.Sample) -> None:
        rest, packed_ids, data = wire.pack_samples([s])
        assert rest == [] and packed_ids == s.agent_id
        fleet.on_packed(packed_ids, data)

    first = wire.Sample("a", 7, 1.7e9, 1.7e9 + 1, 5.0, 100, 200, 0, 0, 3, 1, (), 0.5)
    packed(first)  # learns the process, opens the ring: on_sample
    calls: list = []
    on_sample = fleet.on_sample
    monkeypatch.setattr(fleet, "on_sample", lambda s: (calls.append(s), on_sample(s)))
    second = wire.Sample("a", 7, 1.7e9, 1.7e9 + 2, 6.0, 110, 200, 1, 1, 3, 1, (), 0.75)
    packed(second)
    assert calls == [] and fleet.samples_total == 2 and fleet.agents["a"].last == second
    over = wire.Sample("a", 7, 1.7e9, 1.7e9 + 3, 95.0, 110, 200, 1, 1, 3, 1, (), 1.0)
    packed(over)
    assert calls == [over]  # over its limit: the state machine's business
    fleet.rings.close_all()
    assert [p.timestamp for p in read_points(tmp_path / "a.ring")] == [1.7e9 + 1, 1.7e9 + 2, 1.7e9 + 3]


def test_on_samples_write_error_is_reported_once_like_on_sample(tmp_path, monkeypatch):
    """A write that fails (EIO) is one write error, tried once, on either path; only a ring cut
    short (ESTALE) is opened again and written (RingStore.append_failed, shared)."""
    import errno
    import os

    from fleetmon.store import ring as R

    tries: list = []
    pwrite = os.pwrite

    def eio(*args):
        tries.append(args)
        raise OSError(errno.EIO, "Input/output error")

    for batched in (True, False):
        fleet = Fleet(R.RingStore(tmp_path / str(batched), 10, mapped=False), lambda e: None)
        (tmp_path / str(batched)).mkdir()
        fleet.set_registry([wire.RegisteredAgent("a", "default", 7, None, wire.Thresholds())], 0)
        fleet.on_samples([wire.Sample("a", 7, 1.7e9, 1.7e9 + 1, 1.0, 1, 1, 1, 1, 1, 1)])
        tries.clear()
        monkeypatch.setattr(R.os, "pwrite", eio)
        second = wire.Sample("a", 7, 1.7e9, 1.7e9 + 2, 1.0, 1, 1, 1, 1, 1, 1, (), 1.0)
        if batched:
            _as_a_writer_takes_them(fleet, [second])
        else:
            fleet.on_sample(second)
        monkeypatch.setattr(R.os, "pwrite", pwrite)
        assert len(tries) == 1 and fleet.write_errors == 1 and fleet.samples_total == 2, batched
        fleet.rings.close_all()
