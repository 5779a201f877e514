"""alerts.jsonl is bounded: past ``alerts_max_size`` it moves to alerts.jsonl.1 and starts again, and
``fleetmon alerts`` reads both, oldest first, without losing or repeating a line."""

from __future__ import annotations

import os

import msgspec
import pytest

from fleetmon.store import persist, queries
from fleetmon.store import thresholds as th
from fleetmon.store.layout import StateDir


def _event(i: int) -> th.Event:
    return th.Event(f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}Z", f"a{i}", "cpu", "warning", float(i), 1.0,
                    "2026-01-01T00:00:00Z", None)


def _line_size() -> int:
    return len(persist._json.encode(_event(0))) + 1


@pytest.fixture
def state(tmp_path) -> StateDir:
    return StateDir(tmp_path / "state").create()


def _log(state: StateDir, max_size: int) -> persist.AlertLog:
    return persist.AlertLog(state.alerts, state.alerts_previous, max_size)


def _agents(path) -> list[str]:
    return [msgspec.json.decode(x)["agent_id"] for x in path.read_bytes().splitlines()]


def test_rotates_once_the_file_reaches_its_bound_and_drops_only_the_generation_before(state):
    line = _line_size()
    log = _log(state, 3 * line)
    for i in range(8):  # one write per event: rotations after the 3rd and the 6th
        log.add(_event(i))
        log.write()
    log.close()
    assert _agents(state.alerts_previous) == ["a3", "a4", "a5"]  # a0-a2 dropped with the first generation
    assert _agents(state.alerts) == ["a6", "a7"]
    assert os.stat(state.alerts_previous).st_mode & 0o777 == 0o600
    events = queries.alerts(state, since=10 * 365 * 86400.0, now=1.8e9).events
    assert [e.agent_id for e in events] == ["a3", "a4", "a5", "a6", "a7"]


def test_a_batch_past_the_bound_is_kept_whole_before_the_rotation(state):
    log = _log(state, _line_size())
    for i in range(5):
        log.add(_event(i))
    log.write()  # all five in one write, then moved
    log.add(_event(5))
    log.write()
    log.close()
    assert _agents(state.alerts_previous) == ["a5"]  # the five were dropped by the next rotation
    assert not state.alerts.exists()  # (created again by the next write)


def test_the_size_of_a_file_left_by_an_earlier_writer_counts(state):
    state.alerts.write_bytes(persist._json.encode(_event(0)) + b"\n")
    log = _log(state, 2 * _line_size())
    log.add(_event(1))
    log.write()
    log.close()
    assert _agents(state.alerts_previous) == ["a0", "a1"] and not state.alerts.exists()


def test_no_bound_never_rotates(state):
    log = _log(state, 0)
    for i in range(50):
        log.add(_event(i))
        log.write()
    log.close()
    assert len(_agents(state.alerts)) == 50 and not state.alerts_previous.exists()


def test_a_rotation_that_fails_loses_nothing_is_logged_once_and_tried_again(state, monkeypatch):
    from loguru import logger

    lines = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
    log = _log(state, _line_size())
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(13, "Permission denied")))
    for i in range(2):
        log.add(_event(i))
        log.write()  # the lines are written: no error for the write itself
    assert _agents(state.alerts) == ["a0", "a1"]  # written, and not written twice
    assert [m for m in lines if "cannot move" in m] == [
        "cannot move alerts.jsonl to alerts.jsonl.1 (Permission denied): it grows on past alerts_max_size until that works"
    ]
    monkeypatch.setattr(os, "replace", real)
    log.add(_event(2))
    log.write()
    log.close()
    logger.remove(sink)
    assert _agents(state.alerts_previous) == ["a0", "a1", "a2"]


def test_a_file_moved_or_deleted_by_something_else_is_let_go_at_the_next_write(state):
    """logrotate, or an operator freeing disk, moved or deleted alerts.jsonl: appending on to the
    open file would hide every later change from the queries (and keep a deleted file's space)."""
    from loguru import logger

    warnings = []
    sink = logger.add(lambda m: warnings.append(m.record["message"]), level="WARNING")
    log = _log(state, 100 * _line_size())
    log.add(_event(0))
    log.write()
    moved = state.root / "alerts.jsonl-20260101"
    os.replace(state.alerts, moved)
    log.add(_event(1))
    log.write()
    assert _agents(moved) == ["a0"] and _agents(state.alerts) == ["a1"]
    state.alerts.unlink()
    log.add(_event(2))
    log.write()
    assert _agents(state.alerts) == ["a2"]
    log.close()
    logger.remove(sink)
    assert warnings == ["alerts.jsonl was moved or deleted by something else: a new one is started"] * 2


def test_a_rotation_never_renames_a_file_it_did_not_write(state, monkeypatch):
    """The name changed hands between the write and the rotation after it: only let go."""
    log = _log(state, _line_size())
    log.add(_event(0))
    monkeypatch.setattr(log, "_moved", lambda: True)  # (asked only by the rotation: the file was just opened)
    log.write()
    assert log.fd == -1 and _agents(state.alerts) == ["a0"] and not state.alerts_previous.exists()


def test_a_query_during_a_rotation_reads_again(state, monkeypatch):
    """The writer moves alerts.jsonl to alerts.jsonl.1 between the query's two reads: without
    reading again, its lines would be read twice (as alerts.jsonl, then as alerts.jsonl.1)."""
    state.alerts_previous.write_bytes(persist._json.encode(_event(0)) + b"\n")
    state.alerts.write_bytes(persist._json.encode(_event(1)) + b"\n")
    real = queries._lines_back
    moved = []

    def read(path, stop_before):
        yield from real(path, stop_before)
        if path == state.alerts and not moved:  # after alerts.jsonl was read: rotate
            moved.append(True)
            os.replace(state.alerts, state.alerts_previous)
            state.alerts.write_bytes(persist._json.encode(_event(2)) + b"\n")

    monkeypatch.setattr(queries, "_lines_back", read)
    events = queries.alerts(state, since=10 * 365 * 86400.0, now=1.8e9).events
    assert [e.agent_id for e in events] == ["a1", "a2"]


def _at(ts: float, agent: str, st: str = "warning") -> bytes:
    from fleetmon.units import rfc3339

    return persist._json.encode(th.Event(rfc3339(ts), agent, "cpu", st, 1.0, 1.0, rfc3339(ts), None)) + b"\n"


NOW = 1.8e9


def test_a_query_reads_back_from_the_end_only_as_far_as_its_window(state, monkeypatch):
    old = b"".join(_at(NOW - 3 * 3600 + i * 0.001, f"old{i}") for i in range(40_000))  # ~7 MB, 3 h ago
    state.alerts.write_bytes(old + b"".join(_at(NOW - 60 + i, f"new{i}") for i in range(10)))
    reads = []
    real = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, off: reads.append(n) or real(fd, n, off))
    events = queries.alerts(state, since=3600.0, now=NOW).events
    assert [e.agent_id for e in events] == [f"new{i}" for i in range(10)]
    assert sum(reads) <= 2 * queries._CHUNK < len(old)  # not the whole file


def test_the_limit_bounds_what_is_read(state, monkeypatch):
    state.alerts.write_bytes(b"".join(_at(NOW - 1000 + i * 0.01, f"a{i}") for i in range(40_000)))  # all in the window
    reads = []
    real = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, off: reads.append(n) or real(fd, n, off))
    events, oldest = queries.alerts_window(state, 3600.0, NOW, limit=10)
    assert [e.agent_id for e in events.events] == [f"a{i}" for i in range(39_990, 40_000)]
    assert sum(reads) <= queries._CHUNK
    state.alerts_previous.write_bytes(_at(NOW - 2000, "p"))  # rotated once, but not read: the limit came first
    assert queries.alerts_window(state, 3600.0, NOW, limit=10)[1] is None


def test_a_change_appended_out_of_order_does_not_end_the_search(state):
    """A batch a worker held while the writer was down lands after newer changes: one line (or a
    few) far older than the window must not hide the window's changes before it."""
    lines = [_at(NOW - 120, "before"), _at(NOW - 5 * 3600, "late"), _at(NOW - 30, "after")]
    state.alerts.write_bytes(b"".join(lines))
    assert [e.agent_id for e in queries.alerts(state, since=300.0, now=NOW).events] == ["before", "after"]


def test_changes_are_listed_oldest_first_by_time_not_by_line(state):
    """Two workers' batches of one tick reach the writer in either order: the file is not sorted."""
    state.alerts.write_bytes(_at(NOW - 30, "w0-a") + _at(NOW - 29.5, "w0-b") + _at(NOW - 29.9, "w1-a") + _at(NOW - 29.9, "w1-b"))
    assert [e.agent_id for e in queries.alerts(state, since=300.0, now=NOW).events] == ["w0-a", "w1-a", "w1-b", "w0-b"]


def test_a_window_longer_than_the_epoch_is_everything(state):
    state.alerts.write_bytes(_at(NOW - 60, "a") + _at(NOW - 30, "b"))
    for since in (NOW + 1e6, 400_000 * 86400.0, 1e15):
        assert [e.agent_id for e in queries.alerts(state, since=since, now=NOW).events] == ["a", "b"]


def test_lines_across_the_chunks_read_back_stay_whole(state, monkeypatch):
    monkeypatch.setattr(queries, "_CHUNK", 97)  # shorter than a line
    state.alerts_previous.write_bytes(b"".join(_at(NOW - 100 + i, f"p{i}") for i in range(5)))
    state.alerts.write_bytes(b"".join(_at(NOW - 50 + i, f"c{i}") for i in range(5)))
    events = queries.alerts(state, since=3600.0, now=NOW).events
    assert [e.agent_id for e in events] == [f"p{i}" for i in range(5)] + [f"c{i}" for i in range(5)]


def test_filters_and_the_newest_limit(state):
    state.alerts.write_bytes(b"".join(_at(NOW - 50 + i, f"a{i % 3}", ("warning", "error", "ok")[i % 3]) for i in range(9)))
    pick = lambda **kw: [(e.agent_id, e.timestamp[-9:-1]) for e in queries.alerts_window(state, 3600.0, NOW, **kw)[0].events]  # noqa: E731
    assert [a for a, _ in pick(agents={"a1"})] == ["a1"] * 3
    assert [a for a, _ in pick(states={"error", "ok"})] == ["a1", "a2"] * 3
    assert pick(limit=2) == pick()[-2:]  # the newest two, oldest first
    assert pick(agents={"a0"}, limit=1) == pick(agents={"a0"})[-1:]


def test_says_when_the_window_reaches_past_what_is_kept(state):
    state.alerts_previous.write_bytes(_at(NOW - 600, "p"))
    state.alerts.write_bytes(_at(NOW - 60, "c"))
    events, oldest = queries.alerts_window(state, 3600.0, NOW)
    assert [e.agent_id for e in events.events] == ["p", "c"] and oldest is not None and oldest.startswith("2027")
    assert queries.alerts_window(state, 300.0, NOW)[1] is None  # the window starts after it: nothing missing
    state.alerts_previous.write_bytes(_at(NOW - 3600 - 60, "older") + _at(NOW - 600, "p"))
    assert queries.alerts_window(state, 3600.0, NOW)[1] is None  # read a change before the window
    state.alerts_previous.write_bytes(_at(NOW - 9 * 3600, "much older") + _at(NOW - 600, "p"))
    assert queries.alerts_window(state, 3600.0, NOW)[1] is None  # also one past the slack
    # a change appended late to alerts.jsonl says nothing of what alerts.jsonl.1 starts with
    state.alerts_previous.write_bytes(_at(NOW - 600, "p"))
    state.alerts.write_bytes(_at(NOW - 9 * 3600, "late") + _at(NOW - 60, "c"))
    assert queries.alerts_window(state, 3600.0, NOW)[1] is not None
    state.alerts_previous.write_bytes(_at(NOW - 600, "p"))
    assert queries.alerts_window(state, 3600.0, NOW, limit=1)[1] is None  # the newest one is all that was asked
    state.alerts_previous.unlink()
    assert queries.alerts_window(state, 3600.0, NOW)[1] is None  # never rotated: nothing dropped


def test_a_torn_last_line_of_the_old_file_does_not_swallow_the_first_of_the_new(state):
    state.alerts_previous.write_bytes(persist._json.encode(_event(0)) + b"\n" + b'{"timestamp": "2026-01-0')
    state.alerts.write_bytes(persist._json.encode(_event(1)) + b"\n")
    events = queries.alerts(state, since=10 * 365 * 86400.0, now=1.8e9).events
    assert [e.agent_id for e in events] == ["a0", "a1"]


def test_a_line_cut_short_is_ended_before_the_next_one(state):
    """A writer killed in the middle of an append (or a crash before the page was on disk) leaves a
    line without its newline. The next writer's first line used to be glued onto it, and every
    reader skipped the two as one bad line: a state change lost."""
    log = _log(state, 0)
    log.add(_event(1))
    log.write()
    log.close()
    whole = state.alerts.read_bytes()
    with open(state.alerts, "ab") as f:
        f.write(whole[: len(whole) // 2])  # half of a second line, no newline
    log = _log(state, 0)
    log.add(_event(2))
    log.write()
    log.add(_event(3))  # and the file once open is not checked again
    log.write()
    log.close()
    events = queries.alerts(state, since=10 * 365 * 86400.0, now=1.8e9).events
    assert [e.agent_id for e in events] == ["a1", "a2", "a3"]
    assert state.alerts.read_bytes().count(b"\n") == 4  # the torn line ended on its own


def test_changes_dropped_past_the_pending_bound_are_logged(state, monkeypatch):
    from loguru import logger

    monkeypatch.setattr(persist.AlertLog, "MAX_PENDING", 3)
    log = _log(state, 0)
    lines: list[str] = []
    sink = logger.add(lines.append, level="ERROR", format="{message}")
    try:
        for i in range(8):  # never written (as on a full disk): the oldest go past 3
            log.add(_event(i))
    finally:
        logger.remove(sink)
    assert [msgspec.json.decode(x)["agent_id"] for x in log.pending] == ["a5", "a6", "a7"]
    assert log.dropped == 5
    assert len(lines) == 2 and "the oldest are dropped from it (1 so far)" in lines[0] and "(3 so far)" in lines[1]


def test_the_window_includes_a_change_exactly_at_its_start(state):
    """``timestamp >= now - since``: a change at the very start of the window is in it."""
    state.alerts.write_bytes(_at(NOW - 300.001, "before") + _at(NOW - 300, "edge") + _at(NOW - 1, "inside"))
    assert [e.agent_id for e in queries.alerts(state, since=300.0, now=NOW).events] == ["edge", "inside"]
