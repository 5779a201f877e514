"""Fault handling of single components, without a daemon: the channel's acknowledgements and
resends, the writer's deduplication of batches sent again, short appends on a full disk, files
planted where the store expects its own."""

from __future__ import annotations

import errno
import os
import socket
import struct
import time

import msgspec
import pytest

from fleetmon import channel, wire
from fleetmon.store import persist
from fleetmon.store.layout import StateDir
from fleetmon.store.ring import Point, RingStore, read_points
from tests.helpers import in_process_writer, wait_until, writer_connection

# --- the channel ------------------------------------------------------------------------------------


def _frames(conn: channel.FramedConn, n: int, timeout: float = 5.0) -> list[bytes]:
    got: list[bytes] = []

    def more():
        try:
            got.extend(conn.recv())
        except channel.ChannelClosed:
            pass
        return len(got) >= n

    wait_until(more, timeout, 0.01, what=f"{n} frames")
    return got


def _ack(n: int) -> bytes:
    return b"A%d" % n


def _parse_ack(frame: bytes) -> int | None:
    return int(frame[1:]) if frame.startswith(b"A") else None


@pytest.fixture
def address(tmp_path):
    path = str(tmp_path / "w.sock")
    listener = channel.listen_unix(path)
    yield path, listener
    listener.close()


def _accept(listener) -> channel.FramedConn:
    sock = wait_until(lambda: _try_accept(listener), 5, 0.01, what="a connection")
    return channel.FramedConn(sock)


def _try_accept(listener):
    try:
        return listener.accept()[0]
    except BlockingIOError:
        return None


def test_frames_before_eof_are_delivered_then_eof():
    """A peer that sends its last messages and exits: they are read, then the EOF is reported."""
    a, b = socket.socketpair()
    left, right = channel.FramedConn(a), channel.FramedConn(b)
    big = b"x" * (3 << 20)  # more than one recv() chunk: several reads, the last one hits EOF
    left.send(b"one")
    left.send(big)
    got: list[bytes] = []
    deadline = time.monotonic() + 10
    while not left.flush() and time.monotonic() < deadline:
        got += right.recv()
    left.close()
    with pytest.raises(channel.ChannelClosed):
        while time.monotonic() < deadline:
            got += right.recv()
    assert got == [b"one", big]


def test_link_resends_what_the_writer_never_acknowledged(address):
    path, listener = address
    link = channel.Link(path, lambda: [b"hello"], acks=_parse_ack, resend_marker=lambda n: b"R%d" % n)
    for m in (b"m1", b"m2", b"m3"):
        link.send(m)
    w1 = _accept(listener)
    assert _frames(w1, 4) == [b"hello", b"m1", b"m2", b"m3"]
    w1.send(_ack(2))  # took m1 and m2 in, then dies with m3 unread
    w1.flush()
    w1.close()
    link.send(b"m4")  # fails on the dead connection: the ack that came before is still read
    wait_until(lambda: (link.pump(), link.conn is not None)[1], 5, 0.01, what="reconnection")
    w2 = _accept(listener)
    assert _frames(w2, 4) == [b"hello", b"R2", b"m3", b"m4"]
    assert link.lost == 0
    w2.send(_ack(2))
    w2.flush()
    wait_until(lambda: (link.recv(), not link.unacked)[1], 5, 0.01, what="everything acknowledged")
    assert link.unacked_bytes == 0
    link.close()
    w2.close()


def test_link_without_a_writer_keeps_a_bounded_outbox_and_counts_what_it_drops(tmp_path):
    link = channel.Link(str(tmp_path / "nobody.sock"), lambda: [], max_outbox=100, acks=_parse_ack)
    for i in range(10):
        link.send(b"%02d" % i + b"." * 18)  # 20 bytes each
    assert link.lost == 5 and len(link.pending) == 5 and link.pending[0].startswith(b"05")


# --- the writer: a batch sent again after a restart is not recorded twice ---------------------------


def _sample(agent: str, ts: float) -> wire.Sample:
    return wire.Sample(agent, 4242, 1000.0, ts, 1.0, 2, 3, 4, 5, 6, 7)


def _batch(tick: int, samples: list[wire.Sample], packed: bool) -> wire.Batch:
    """A batch of ``samples``; ``packed``: as a worker sends them (every metric read: packed)."""
    if not packed:
        return wire.Batch(0, tick, 0, 0, samples)
    batch = wire.Batch.sent(0, tick, 0, 0, [msgspec.structs.replace(s, cpu_seconds=0.5) for s in samples])
    assert batch.samples == []
    return batch


@pytest.mark.parametrize("packed", [False, True])
def test_writer_skips_samples_it_already_had_in_a_batch_sent_again(tmp_path, address, packed):
    _, listener = address
    state = StateDir(tmp_path / "state").create()
    registry = wire.Registry([wire.RegisteredAgent("x", "default", 4242, None, wire.Thresholds())])
    w = in_process_writer(state, listener)
    sup, _ = writer_connection(w, -1)
    conn, peer = writer_connection(w, 0)
    w._dispatch(conn, _batch(1, [_sample("x", 100.0)], packed))  # held until the registry comes
    w._dispatch(sup, registry)
    w._dispatch(conn, _batch(2, [_sample("x", 101.0)], packed))
    w._dispatch(conn, _batch(3, [_sample("x", 102.0)], packed))  # (packed: the fast path, the ring open)
    w._send_acks()
    acks = [msgspec.msgpack.decode(f, type=wire.Ack).count for f in _frames(peer, 1)]
    assert acks[-1] == 3
    w.rings.close_all()
    # Restarted: the worker sends ticks 2 and 3 again (the acks may have been lost) and then tick 4.
    w2 = in_process_writer(state, listener)
    persist.load_fleet_state(state, w2.fleet)
    sup2, _ = writer_connection(w2, -1)
    w2._dispatch(sup2, registry)
    conn2, peer2 = writer_connection(w2, 0)
    w2._dispatch(conn2, wire.Resend(2))
    w2._dispatch(conn2, _batch(2, [_sample("x", 101.0)], packed))
    w2._dispatch(conn2, _batch(3, [_sample("x", 102.0)], packed))
    w2._dispatch(conn2, _batch(4, [_sample("x", 103.0)], packed))
    w2._dispatch(conn2, _batch(5, [_sample("x", 104.0)], packed))
    w2._send_acks()
    w2.rings.close_all()
    assert [p.timestamp for p in read_points(state.ring_file("x"))] == [100.0, 101.0, 102.0, 103.0, 104.0]
    assert msgspec.msgpack.decode(_frames(peer2, 1)[-1], type=wire.Ack).count == 4
    assert w2.fleet.samples_total == 2 and w2.fleet.agents["x"].last.timestamp == 104.0


def test_a_malformed_packed_batch_changes_nothing_then_is_dropped_when_sent_again(tmp_path, address):
    """Packed samples that do not match their ids (a bug: a worker never sends such a batch) raise
    before any is applied; sent again to a new writer, the batch is dropped and counted lost."""
    state = StateDir(tmp_path / "state").create()
    w, conn, _ = _registered_writer(state, address[1])
    good = _batch(1, [_sample("x", 100.0), _sample("y", 100.0)], packed=True)
    bad = msgspec.structs.replace(_batch(2, [_sample("x", 101.0), _sample("y", 101.0)], packed=True), packed_ids="x")
    w._dispatch(conn, good)
    with pytest.raises(ValueError, match="do not match"):
        w._dispatch(conn, bad)
    assert w.fleet.samples_total == 2 and w.fleet.agents["x"].last.timestamp == 100.0
    w.rings.close_all()
    w2, conn2, peer2 = _registered_writer(state, address[1])
    w2._dispatch(conn2, wire.Resend(1))
    w2._dispatch(conn2, bad)
    w2._dispatch(conn2, _batch(3, [_sample("x", 102.0)], packed=True))
    w2._send_acks()
    assert msgspec.msgpack.decode(_frames(peer2, 1)[-1], type=wire.Ack).count == 2 and w2.lost_batches == 1
    w2.rings.close_all()
    assert [p.timestamp for p in read_points(state.ring_file("x"))] == [100.0, 102.0]


# --- the store on a full disk and with planted files ------------------------------------------------


def test_alert_log_short_append_keeps_whole_lines_and_never_repeats_one(tmp_path, monkeypatch):
    from fleetmon.store import thresholds as th

    log = persist.AlertLog(tmp_path / "alerts.jsonl")
    for i in range(3):
        log.add(th.Event(f"2026-01-01T00:00:0{i}Z", "a", "cpu", "warning", float(i), 1.0, "2026-01-01T00:00:00Z", None))
    line = len(persist._json.encode(th.Event("2026-01-01T00:00:00Z", "a", "cpu", "warning", 0.0, 1.0, "2026-01-01T00:00:00Z", None))) + 1
    real_write = os.write
    budget = [line + line // 2]  # room for one line and a half

    def short_write(fd, data):
        if fd != log.fd:
            return real_write(fd, data)
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real_write(fd, bytes(data[: budget[0]]))
        budget[0] -= n
        return n

    monkeypatch.setattr(os, "write", short_write)
    with pytest.raises(OSError):
        log.write()
    with pytest.raises(OSError):
        log.write()
    monkeypatch.setattr(os, "write", real_write)
    log.write()
    log.close()
    lines = (tmp_path / "alerts.jsonl").read_bytes().splitlines()
    assert [msgspec.json.decode(x)["timestamp"][-3:-1] for x in lines] == ["00", "01", "02"]


@pytest.mark.parametrize("planted", ["symlink", "directory", "fifo", "garbage"])
def test_ring_store_moves_aside_what_is_planted_in_place_of_a_ring(tmp_path, planted):
    history = tmp_path / "history"
    history.mkdir()
    target = tmp_path / "target"
    target.write_bytes(b"keep me")
    path = history / "a.ring"
    if planted == "symlink":
        os.symlink(target, path)
    elif planted == "directory":
        path.mkdir()
    elif planted == "fifo":
        os.mkfifo(path)
    else:
        path.write_bytes(b"\xff" * 640)
    rings = RingStore(history, 10)
    rings.append("a", Point(time.time(), 1.0, 1, 1, 1, 1, 1, 1))
    rings.close_all()
    assert target.read_bytes() == b"keep me"
    assert len(read_points(path)) == 1
    assert len(list(history.glob("a.ring.corrupt-*"))) == 1


def test_corrupt_alert_state_is_rebuilt_at_once(tmp_path):
    from fleetmon.store.fleet import Fleet

    state = StateDir(tmp_path / "state").create()
    state.alert_state.write_bytes(b"\x00garbage")
    fleet = Fleet(RingStore(state.history, 10), lambda e: None)
    persist.load_fleet_state(state, fleet)
    assert fleet.alerts_dirty
    assert list(state.root.glob("thresholds.json.corrupt-*"))


@pytest.mark.parametrize(
    "field, value",
    [
        ("start_time", "2024-13-01T00:00:00.000000Z"),
        ("last_sample", {"timestamp": "yesterday", "cpu": 1.0, "memory_rss": 1, "memory_vms": 1,
                         "disk_read_bytes": 0, "disk_write_bytes": 0, "open_files": 1, "num_threads": 1}),
        ("alerts", [{"resource": "cpu", "state": "warning", "since": "soon"}]),
        ("status", "sleeping"),
    ],
)
def test_metadata_that_decodes_but_does_not_load_is_moved_aside(tmp_path, field, value):
    """Valid JSON of the right types, with a time that does not parse or a status fleetmon does not
    have, used to raise while loading: the writer failed at every start and nothing was persisted."""
    import json

    from fleetmon.store.fleet import Fleet

    state = StateDir(tmp_path / "state").create()
    good = {"id": "good", "type": "default", "pid": 5, "status": "exited", "restart_count": 2,
            "start_time": "2024-01-01T00:00:00.000000Z", "last_sample": None, "alerts": [],
            "updated": "2024-01-01T00:01:00.000000Z"}
    bad = {**good, "id": "bad", field: value}
    (state.agents / "good.json").write_text(json.dumps(good))
    (state.agents / "bad.json").write_text(json.dumps(bad))
    state.status.write_text(json.dumps({"updated": good["updated"], "agents": [good, bad]}))
    fleet = Fleet(RingStore(state.history, 10), lambda e: None)
    assert persist.load_fleet_state(state, fleet) == 1
    assert set(fleet.agents) == {"good"} and fleet.agents["good"].restart_count == 2
    assert len(list(state.agents.glob("bad.json.corrupt-*"))) == 1
    assert len(list(state.root.glob("status.json.corrupt-*"))) == 1  # it holds the bad record too
    assert (state.agents / "good.json").exists()


def test_thresholds_json_of_an_earlier_version_still_loads(tmp_path):
    """Before it recorded where alerts.jsonl ended, thresholds.json was the episodes alone."""
    import json

    from fleetmon.store.fleet import Agent, Fleet

    state = StateDir(tmp_path / "state").create()
    state.alert_state.write_text(json.dumps({"a": {"cpu": {"state": "error", "since": 1000.0, "logged": 1200.0}}}))
    state.alerts.write_text("")
    fleet = Fleet(RingStore(state.history, 10), lambda e: None)
    fleet.agents["a"] = Agent("a")
    persist.load_fleet_state(state, fleet)
    alert = fleet.agents["a"].alerts["cpu"]
    assert (alert.state, alert.since, alert.logged) == ("error", 1000.0, 1200.0)
    assert not list(state.root.glob("thresholds.json.corrupt-*"))
    assert fleet.alerts_dirty  # rewritten at the first flush with where alerts.jsonl ends, not at the next change


def test_an_episode_from_a_thresholds_json_without_thresholds_takes_its_threshold_from_the_log(tmp_path):
    """thresholds.json from before it kept each episode's threshold (0.1 stop 16): the same episode
    replayed from alerts.jsonl keeps what thresholds.json had (its ``logged``), and takes the
    threshold the log line names, for a ``removed`` event to show it rather than 0 (= off)."""
    import json

    import msgspec

    from fleetmon.store import thresholds as th
    from fleetmon.store.fleet import Agent, Fleet
    from fleetmon.units import rfc3339

    state = StateDir(tmp_path / "state").create()
    event = th.Event(rfc3339(1000.0), "a", "cpu", "warning", 80.0, 50.0, rfc3339(1000.0), None)
    state.alerts.write_bytes(msgspec.json.encode(event) + b"\n")
    saved = {"a": {"cpu": {"state": "warning", "since": 1000.0, "logged": 1200.0}}}
    state.alert_state.write_text(json.dumps({"open": saved, "alerts_log": {"inode": 0, "size": 0}}))
    fleet = Fleet(RingStore(state.history, 10), lambda e: None)
    fleet.agents["a"] = Agent("a")
    persist.load_fleet_state(state, fleet)
    alert = fleet.agents["a"].alerts["cpu"]
    assert (alert.state, alert.since, alert.logged, alert.threshold) == ("warning", 1000.0, 1200.0, 50.0)


def test_reading_a_planted_fifo_does_not_block(tmp_path):
    from fleetmon.store import fsutil

    fifo = tmp_path / "x.json"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(OSError):
        fsutil.read_private(fifo)
    assert time.monotonic() - t0 < 1.0


def test_alert_changes_after_the_last_flush_survive_a_killed_writer_without_being_logged_twice(tmp_path, address):
    """thresholds.json is written at the flush (a tick complete, or a second), the alerts.jsonl lines
    and the acknowledgement at once. A writer killed in between (kill -9, the OOM killer) used to
    restart without those changes, and log them again: x a second warning with a new ``since`` (and
    its error a whole duration late), y a second ok. The next writer takes them from alerts.jsonl."""
    _, listener = address
    state = StateDir(tmp_path / "state").create()
    limits = wire.Thresholds(cpu_threshold=50.0, threshold_duration=60.0)
    registry = wire.Registry([wire.RegisteredAgent(a, "default", 4242, None, limits) for a in ("x", "y")])

    t0 = time.time() - 10

    def batch(tick: int, ts: float, x_cpu: float, y_cpu: float) -> wire.Batch:
        return wire.Batch(0, tick, 0, 0, [wire.Sample(a, 4242, 1000.0, t0 + ts, cpu, 2, 3, 4, 5, 6, 7)
                                          for a, cpu in (("x", x_cpu), ("y", y_cpu))])

    w = in_process_writer(state, listener)
    sup, _ = writer_connection(w, -1)
    w._dispatch(sup, registry)
    conn, peer = writer_connection(w, 0)
    w._dispatch(conn, batch(1, 0.0, 10.0, 99.0))  # y over its limit: a warning
    w._flush()
    w._dispatch(conn, batch(2, 1.0, 99.0, 10.0))  # x over, y back under: not flushed yet
    w._send_acks()
    assert msgspec.msgpack.decode(_frames(peer, 1)[-1], type=wire.Ack).count == 2
    w.rings.close_all()
    logged = state.alerts.read_bytes().count(b"\n")
    assert logged == 3
    # killed here: thresholds.json still has y open and not x
    w2 = in_process_writer(state, listener)
    persist.load_fleet_state(state, w2.fleet)
    x, y = w2.fleet.agents["x"], w2.fleet.agents["y"]
    assert (x.alerts["cpu"].state, x.alerts["cpu"].since) == ("warning", pytest.approx(t0 + 1.0, abs=1e-5))
    assert y.alerts == {} and w2.fleet.alerts_dirty
    sup2, _ = writer_connection(w2, -1)
    w2._dispatch(sup2, registry)
    conn2, _ = writer_connection(w2, 0)
    w2._dispatch(conn2, batch(3, 2.0, 99.0, 10.0))  # the same states go on: nothing to log
    w2._flush()
    w2.rings.close_all()
    assert state.alerts.read_bytes().count(b"\n") == logged


def _registered_writer(state: StateDir, listener, limits: wire.Thresholds | None = None):
    """An in-process writer that has the registry (agents x and y at pid 4242, with ``limits``) and a
    connection from worker 0: (the writer, its end, the worker's end)."""
    w = in_process_writer(state, listener)
    sup, _ = writer_connection(w, -1)
    w._dispatch(sup, wire.Registry([wire.RegisteredAgent(a, "default", 4242, None, limits or wire.Thresholds())
                                    for a in ("x", "y")]))
    conn, peer = writer_connection(w, 0)
    return w, conn, peer


def test_a_batch_the_writer_cannot_apply_twice_is_dropped_and_counted_not_a_crash_loop(tmp_path, address):
    """A value the ring cannot hold (an i64 field past 2^63, which no kernel gives today) raised out
    of the writer: it died, the unacknowledged batch was sent to the next one, which died too, and
    so on, with nothing persisted. The first writer still dies (its own state may be at fault: a
    new one loads it from disk), with what it applied of the batch written; the batch that fails
    again, sent to the new writer, is dropped, counted, acknowledged, and the next one applied."""
    state = StateDir(tmp_path / "state").create()
    limits = wire.Thresholds(cpu_threshold=50.0, threshold_duration=60.0)
    w, conn, _ = _registered_writer(state, address[1], limits)
    t0 = time.time()
    poison = wire.Batch(0, 1, 0, 0, [wire.Sample("y", 4242, 1000.0, t0, 99.0, 2, 3, 4, 5, 6, 7),  # a warning
                                     wire.Sample("x", 4242, 1000.0, t0, 1.0, 2**63, 3, 4, 5, 6, 7)])
    with pytest.raises(struct.error):
        w._dispatch(conn, poison)
    assert w.fleet.agents["y"].alerts and state.alerts.read_bytes().count(b"\n") == 1  # written, not pending
    w.rings.close_all()
    # the writer died; the next one gets the batch again
    w2, conn2, peer2 = _registered_writer(state, address[1], limits)
    persist.load_fleet_state(state, w2.fleet)
    w2._dispatch(conn2, wire.Resend(2))
    w2._dispatch(conn2, poison)
    w2._dispatch(conn2, wire.Batch(0, 2, 0, 0, [_sample("x", t0 + 1)]))
    w2._send_acks()
    assert msgspec.msgpack.decode(_frames(peer2, 1)[-1], type=wire.Ack).count == 2
    assert w2.lost_batches == 1
    w2.rings.close_all()
    assert [p.timestamp for p in read_points(state.ring_file("x"))] == [t0 + 1]
    assert state.alerts.read_bytes().count(b"\n") == 1  # y's warning not logged again


def test_a_sample_its_ring_could_not_take_fails_the_flush(tmp_path, address, monkeypatch):
    """A new ring on a full disk cannot be created, while the files the flush writes may still fit:
    the flush used to pass, and /healthz called the tick persisted. It fails for such a sample, and
    the next one without works again."""
    state = StateDir(tmp_path / "state").create()
    w, conn, _ = _registered_writer(state, address[1])
    real = w.rings.ring

    def full(agent_id):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(w.rings, "ring", full)
    w._dispatch(conn, wire.Batch(0, 1, 0, 0, [_sample("x", 100.0)]))
    w._flush()
    assert w.write_failing and w.fleet.write_errors == 1
    monkeypatch.setattr(w.rings, "ring", real)
    w._dispatch(conn, wire.Batch(0, 2, 0, 0, [_sample("x", 101.0)]))
    w._flush()
    assert not w.write_failing
    w.rings.close_all()


@pytest.mark.parametrize("how", ["ok_line_unwritten", "log_moved_away"])
def test_a_restarted_writer_does_not_undo_what_thresholds_json_has_past_the_log(tmp_path, address, monkeypatch, how):
    """thresholds.json can be ahead of alerts.jsonl: the ok line could not be written (a full disk)
    while thresholds.json could, or the log was moved away (logrotate) and an older alerts.jsonl.1
    still has the warning. Replaying the log's newest line per agent reopened the closed episode;
    only what was written past the position thresholds.json records is applied."""
    state = StateDir(tmp_path / "state").create()
    limits = wire.Thresholds(cpu_threshold=50.0, threshold_duration=60.0)
    w, conn, _ = _registered_writer(state, address[1], limits)
    t0 = time.time() - 10

    def y_cpu(tick: int, cpu: float) -> wire.Batch:
        return wire.Batch(0, tick, 0, 0, [wire.Sample("y", 4242, 1000.0, t0 + tick, cpu, 2, 3, 4, 5, 6, 7)])

    w._dispatch(conn, y_cpu(1, 99.0))  # a warning, logged and saved
    w._flush()
    if how == "ok_line_unwritten":
        def full():
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(w.alert_log, "write", full)
        w._dispatch(conn, y_cpu(2, 10.0))  # ok: the line stays pending, thresholds.json has it
        w._flush()
        assert w.alert_log.pending and b'"ok"' not in state.alerts.read_bytes()
    else:
        w._dispatch(conn, y_cpu(2, 10.0))
        w._flush()
        state.alerts_previous.write_bytes(state.alerts.read_bytes().splitlines(keepends=True)[0])  # an old warning
        os.rename(state.alerts, tmp_path / "alerts.jsonl-20261129")  # moved away, not to .1
    assert w.fleet.agents["y"].alerts == {}
    w.rings.close_all()
    # killed; the next writer starts from what is on disk
    w2, _, _ = _registered_writer(state, address[1], limits)
    persist.load_fleet_state(state, w2.fleet)
    assert w2.fleet.agents["y"].alerts == {}


def test_last_tick_persisted_metric_stands_still_while_writes_fail(tmp_path, address, monkeypatch):
    """While writing to the state dir fails (a full disk), flushed_tick goes on advancing (the
    watchdog stays fed), and fleetmon_last_tick_persisted_timestamp_seconds advanced with it: the
    README's rule `time() - fleetmon_last_tick_persisted_timestamp_seconds > 3 * interval` never
    fired while /healthz answered 503 write_failing. It tells when a tick was last written whole."""
    from fleetmon.store.collector import FleetCollector

    state = StateDir(tmp_path / "state").create()
    w, conn, _ = _registered_writer(state, address[1])
    sup = next(c for fd, c in w.conns.items() if w.roles.get(fd) == -1)

    def tick(n: int) -> None:
        w._dispatch(sup, wire.DaemonInfo(1, 2, [wire.WorkerInfo(0, 3, 2)], n, 1.0))
        w._dispatch(conn, wire.Batch(0, n, 0, 0, [_sample("x", 100.0 + n), _sample("y", 100.0 + n)]))
        w._flush()

    def persisted_ts() -> float | None:
        for m in FleetCollector(w.fleet, None, w).collect_self():
            if m.name == "fleetmon_last_tick_persisted_timestamp_seconds":
                return m.samples[0].value
        return None

    tick(1)
    assert not w.write_failing and w.flushed_tick == 1
    first = persisted_ts()
    assert first is not None

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    real = persist.save_status
    monkeypatch.setattr(persist, "save_status", full)
    time.sleep(0.2)
    tick(2)
    tick(3)
    assert w.write_failing and w.flushed_tick == 3  # (the watchdog's view: ticks go on)
    assert abs(persisted_ts() - first) < 0.1, "the persisted timestamp advanced while nothing was persisted"
    monkeypatch.setattr(persist, "save_status", real)
    time.sleep(0.2)
    tick(4)
    assert not w.write_failing
    assert persisted_ts() > first + 0.3
    w.rings.close_all()


@pytest.mark.parametrize("saved", [False, True], ids=["line-only", "thresholds-json-too"])
def test_an_episode_of_an_agent_whose_metadata_was_never_written_survives_a_killed_writer(tmp_path, saved):
    """A new agent's first sample opens an episode (its line in alerts.jsonl at once; thresholds.json,
    then agents/<id>.json, at the flush after): a writer killed before its metadata was written left
    the next one with no agent to replay the episode onto. It opened a second one over it (two
    opens, the first never closed): seen in a soak with kill -9 of the writer."""
    import json

    from fleetmon.store import thresholds as th
    from fleetmon.store.fleet import Fleet
    from fleetmon.units import rfc3339

    state = StateDir(tmp_path / "state").create()
    opened = th.Event(rfc3339(1000.0), "new", "open_files", "error", 40.0, 20.0, rfc3339(1000.0), None)
    state.alerts.write_bytes(msgspec.json.encode(opened) + b"\n")
    if saved:  # killed between the thresholds.json and the metadata steps of the flush
        ep = {"new": {"open_files": {"state": "error", "since": 1000.0, "logged": 1000.0, "threshold": 20}}}
        position = {"inode": os.stat(state.alerts).st_ino, "size": os.stat(state.alerts).st_size}
        state.alert_state.write_text(json.dumps({"open": ep, "alerts_log": position}))
    events: list = []
    fleet = Fleet(RingStore(state.history, 10), events.append)
    persist.load_fleet_state(state, fleet)
    limits = wire.Thresholds(open_files_threshold=20, threshold_duration=0)
    fleet.set_registry([wire.RegisteredAgent("new", "default", 4242, None, limits)], 1001.0)
    fleet.on_sample(wire.Sample("new", 4242, 900.0, 1001.5, 1.0, 1, 1, 0, 0, 40, 1))
    fleet.on_sample(wire.Sample("new", 4242, 900.0, 1002.5, 1.0, 1, 1, 0, 0, 10, 1))
    assert [(e.state, e.since, e.reason) for e in events] == [("ok", rfc3339(1000.0), None)]
    fleet.rings.close_all()


def test_episodes_closed_later_in_the_log_leave_no_agent_behind(tmp_path):
    """Replayed from the start (no thresholds.json): an agent with no metadata (forgotten long ago)
    whose episodes all closed in the log is not brought back."""
    from fleetmon.store import thresholds as th
    from fleetmon.store.fleet import Fleet
    from fleetmon.units import rfc3339

    state = StateDir(tmp_path / "state").create()
    lines = [
        th.Event(rfc3339(1000.0), "old", "cpu", "warning", 80.0, 50.0, rfc3339(1000.0), None),
        th.Event(rfc3339(1010.0), "old", "cpu", "ok", None, 50.0, rfc3339(1000.0), "removed"),
    ]
    state.alerts.write_bytes(b"".join(msgspec.json.encode(e) + b"\n" for e in lines))
    fleet = Fleet(RingStore(state.history, 10), lambda e: None)
    persist.load_fleet_state(state, fleet)
    assert fleet.agents == {}
