"""The read side's own decisions, on a state dir written by hand: which record ``status`` shows for
an agent, which processes a new supervisor is told about, and ``history`` with ``--every``."""

from __future__ import annotations

import msgspec

from fleetmon.store import fsutil, queries
from fleetmon.store.layout import StateDir
from fleetmon.store.records import AgentRecord, StatusSnapshot
from fleetmon.store.ring import Point, Ring
from fleetmon.supervisor import registry as reg
from fleetmon.units import rfc3339

T0 = 1_700_000_040.0  # a multiple of 60
CT = 1_699_990_000.0


def _state(tmp_path, *ids: str) -> StateDir:
    state = StateDir(tmp_path / "state").create()
    for agent_id in ids:
        reg.write_entry(state.registry, reg.RegistryEntry(agent_id, "default", pid=1))
    return state


def _record(agent_id: str, pid: int, status: str, start: float | None, restarts: int = 0) -> AgentRecord:
    return AgentRecord(agent_id, "default", pid, status, restarts, rfc3339(start), None, [])


def test_history_with_every_groups_the_window_into_bucket_means(tmp_path):
    state = _state(tmp_path, "a")
    ring = Ring.open(state.ring_file("a"), 100)
    for ts, cpu in ((T0 - 30, 99.0), (T0 + 5, 10.0), (T0 + 25, 20.0), (T0 + 45, 30.0), (T0 + 65, 7.0)):
        ring.append(Point(ts, cpu, 100, None, None, None, 5, None))
    ring.close()
    raw = queries.history_points(state, "a", since=70, now=T0 + 65)  # the window starts at T0 - 5
    assert [p.timestamp for p in raw] == [T0 + 5, T0 + 25, T0 + 45, T0 + 65]
    out = queries.history_points(state, "a", since=70, every=60, now=T0 + 65)
    assert [(b.timestamp, b.cpu, b.memory_rss, b.memory_vms) for b in out] == [
        (T0, 20.0, 100.0, None),
        (T0 + 60, 7.0, 100.0, None),
    ]


def test_status_falls_back_to_the_agent_s_metadata_file(tmp_path):
    """An agent that status.json does not list (none written yet, or it was registered again after
    the daemon stopped) is shown from agents/<id>.json when there is one, else as not_running."""
    state = _state(tmp_path, "known", "new")
    fsutil.atomic_write(state.agent_file("known"), msgspec.json.encode(_record("known", 7, "exited", CT, restarts=3)))
    agents = {a.id: a for a in queries.status(state).agents}
    assert (agents["known"].status, agents["known"].restart_count, agents["known"].pid) == ("exited", 3, 7)
    assert (agents["new"].status, agents["new"].restart_count, agents["new"].pid) == ("not_running", 0, 1)


def test_last_processes_are_the_running_and_stalled_ones_of_status_json(tmp_path):
    """A new supervisor's workers are told where each agent ran: a stalled agent's process runs
    too (it is the one that stalled a worker); an exited one's does not."""
    state = _state(tmp_path)
    records = [
        _record("run", 10, "running", CT),
        _record("stuck", 11, "stalled", CT + 1),
        _record("gone", 12, "exited", CT + 2),
        _record("never", 13, "not_running", None),
    ]
    fsutil.atomic_write(state.status, msgspec.json.encode(StatusSnapshot(rfc3339(T0), records)))
    assert queries.last_processes(state) == {"run": (10, CT), "stuck": (11, CT + 1)}
