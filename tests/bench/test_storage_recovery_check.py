"""The storage benchmark's "no point lost" check can tell a recovery that rolled a ring's head back."""

from __future__ import annotations

from benchmarks import storage


def _write(history, agent_id, points, end):
    history.mkdir(exist_ok=True)
    (history / f"{agent_id}.ring").write_bytes(storage.synthetic_ring(10, points, end))


def test_newest_record_at_the_kill_must_survive(tmp_path):
    history = tmp_path / "history"
    _write(history, "kept", 5, 1000.0)
    _write(history, "rolled-back", 5, 1000.0)
    at_kill = storage.newest_records(history, ["kept", "rolled-back", "none"])
    assert at_kill == [(5, 1000.0), (5, 1000.0), None]
    _write(history, "kept", 6, 1060.0)  # one more point after the recovery, the old ones as they were
    _write(history, "rolled-back", 6, 1030.0)  # the head went back: seq 5 rewritten with another point
    after = storage.records_by_seq(history, ["kept", "rolled-back", "none"])
    lost = [k is not None and recs.get(k[0]) != k[1] for k, recs in zip(at_kill, after, strict=True)]
    assert lost == [False, True, False]
    # the highest sequence number alone (the check before) sees no loss in either
    assert [max(r) for r in after[:2]] == [6, 6]
