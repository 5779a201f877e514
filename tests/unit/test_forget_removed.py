"""``keep_removed``: the history and metadata of an agent removed from the registry are deleted that
long after its removal, which is recorded in its metadata file and so survives a restart."""

from __future__ import annotations

import os

import pytest

from fleetmon.store import persist, queries
from fleetmon.store.fleet import Fleet
from fleetmon.store.layout import StateDir
from fleetmon.store.ring import RingStore
from fleetmon.wire import RegisteredAgent, Sample, Thresholds

T0 = 1_700_000_000.0
DAY = 86400.0
KEEP = 7 * DAY


def entry(agent_id: str, pid: int) -> RegisteredAgent:
    return RegisteredAgent(agent_id, "default", pid, None, Thresholds())


def sample(agent_id: str, pid: int, ts: float) -> Sample:
    return Sample(agent_id, pid, 1_600_000_000.0 + pid, ts, 1.0, 1000, 2000, 0, 0, 5, 1)


@pytest.fixture
def state(tmp_path) -> StateDir:
    return StateDir(tmp_path / "state").create()


def fleet_of(state: StateDir) -> Fleet:
    return Fleet(RingStore(state.history, capacity=20), lambda e: None)


def sampled(state: StateDir, ids: list[str], now: float) -> Fleet:
    fleet = fleet_of(state)
    fleet.set_registry([entry(i, 100 + k) for k, i in enumerate(ids)], now)
    for k, i in enumerate(ids):
        fleet.on_sample(sample(i, 100 + k, now))
    saved(state, fleet, now)
    return fleet


def forget(state: StateDir, fleet: Fleet, now: float, keep: float = KEEP, limit: int = 1000) -> list[str]:
    forgotten, failed = persist.forget_removed(state, fleet, now, keep, limit)
    assert failed == []
    return forgotten


def saved(state: StateDir, fleet: Fleet, now: float) -> None:
    """What a writer's flush leaves: the metadata files that changed, and status.json."""
    persist.save_metadata(state, fleet, now, refresh=False)
    persist.save_status(state, fleet, now)


def files(state: StateDir, agent_id: str) -> tuple[bool, bool]:
    return state.ring_file(agent_id).exists(), state.agent_file(agent_id).exists()


def test_removed_agent_is_forgotten_only_once_keep_has_passed(state):
    fleet = sampled(state, ["gone", "stays"], T0)
    fleet.set_registry([entry("stays", 101)], T0 + 10)
    saved(state, fleet, T0 + 10)  # the removal, on disk
    assert fleet.agents["gone"].removed_at == T0 + 10 and fleet.agents["stays"].removed_at is None

    assert forget(state, fleet, T0 + 10 + KEEP - 1) == []
    assert files(state, "gone") == (True, True)
    assert queries.is_known(state, "gone")  # still queryable within keep_removed

    assert forget(state, fleet, T0 + 10 + KEEP) == ["gone"]
    assert files(state, "gone") == (False, False) and "gone" not in fleet.agents
    assert files(state, "stays") == (True, True) and "stays" in fleet.agents
    assert not queries.is_known(state, "gone")  # `history gone` exits 2: unknown


def test_an_agent_registered_again_in_time_is_kept(state):
    fleet = sampled(state, ["back"], T0)
    fleet.set_registry([], T0 + 10)
    fleet.set_registry([entry("back", 100)], T0 + 20)
    assert forget(state, fleet, T0 + 30 * DAY) == []
    assert files(state, "back") == (True, True)


def test_the_removal_time_survives_a_restart(state):
    fleet = sampled(state, ["gone", "stays"], T0)
    fleet.set_registry([entry("stays", 101)], T0 + 10)
    saved(state, fleet, T0 + 10)
    fleet.rings.close_all()

    again = fleet_of(state)  # a new writer: loads both, then hears the registry
    persist.load_fleet_state(state, again)
    again.set_registry([entry("stays", 101)], T0 + 3 * DAY)
    assert again.agents["gone"].removed_at == pytest.approx(T0 + 10)
    assert forget(state, again, T0 + 10 + KEEP - 60) == []
    assert forget(state, again, T0 + 10 + KEEP) == ["gone"]
    assert files(state, "stays") == (True, True)


def test_an_old_registered_agent_is_never_forgotten(state):
    fleet = sampled(state, ["old"], T0)
    fleet.rings.close_all()
    again = fleet_of(state)
    persist.load_fleet_state(state, again)
    again.set_registry([entry("old", 100)], T0 + 365 * DAY)
    assert forget(state, again, T0 + 365 * DAY) == []
    assert files(state, "old") == (True, True)


def test_a_history_file_without_an_agent_goes_by_its_age(state):
    fleet = sampled(state, ["known"], T0)
    for name, age in (("orphan-old", KEEP + 60), ("orphan-new", KEEP - 60)):
        path = state.ring_file(name)
        path.write_bytes(b"x")
        os.utime(path, (T0 - age, T0 - age))
    os.utime(state.ring_file("known"), (T0 - 2 * KEEP, T0 - 2 * KEEP))  # registered: never by age
    aside = state.history / "known.ring.corrupt-20260101T000000-abcd"
    aside.write_bytes(b"x")
    os.utime(aside, (T0 - 2 * KEEP, T0 - 2 * KEEP))
    assert forget(state, fleet, T0) == ["orphan-old"]
    assert sorted(p.name for p in state.history.iterdir()) == sorted(
        ["known.ring", "orphan-new.ring", aside.name]
    )


def test_at_most_limit_a_call(state):
    ids = [f"a{i}" for i in range(5)]
    fleet = sampled(state, ids, T0)
    fleet.set_registry([], T0 + 1)
    first = forget(state, fleet, T0 + KEEP + 1, KEEP, limit=3)
    second = forget(state, fleet, T0 + KEEP + 1, KEEP, limit=3)
    assert len(first) == 3 and sorted(first + second) == ids
    assert not any(state.history.iterdir()) and not any(state.agents.iterdir())


def test_an_agent_whose_registry_file_is_there_is_kept(state):
    """Its entry did not parse, so the registry left it out: a typo must not cost the history."""
    fleet = sampled(state, ["typo"], T0)
    fleet.set_registry([], T0 + 1)
    state.registry_file("typo").write_text('{"id": "typo", "pid": ')
    orphan = state.ring_file("orphan")
    orphan.write_bytes(b"x")
    os.utime(orphan, (T0 - 2 * KEEP, T0 - 2 * KEEP))
    state.registry_file("orphan").write_text("{}")
    assert forget(state, fleet, T0 + 2 * KEEP) == []
    assert files(state, "typo") == (True, True) and orphan.exists()
    state.registry_file("typo").unlink()
    assert forget(state, fleet, T0 + 2 * KEEP) == ["typo"]


def test_an_agent_removed_while_no_daemon_ran_is_kept_keep_removed_from_when_it_is_seen(state):
    """Registered when the last writer stopped (status.json lists it), removed during a month's
    downtime: the removal dates from the first registry the next writer gets, not from the
    metadata's last write a month before."""
    fleet = sampled(state, ["gone", "stays"], T0)
    fleet.rings.close_all()
    later = T0 + 30 * DAY
    again = fleet_of(state)
    persist.load_fleet_state(state, again)
    again.set_registry([entry("stays", 101)], later)
    assert again.agents["gone"].removed_at == later and again.agents["gone"].meta_dirty
    assert forget(state, again, later + 1) == []
    assert forget(state, again, later + KEEP) == ["gone"]


def test_without_status_json_the_removal_dates_from_the_first_registry(state):
    fleet = sampled(state, ["gone"], T0)
    fleet.set_registry([], T0 + 10)
    saved(state, fleet, T0 + 10)
    fleet.rings.close_all()
    state.status.unlink()  # lost: whether it was registered then is unknown, so the later time
    again = fleet_of(state)
    persist.load_fleet_state(state, again)
    again.set_registry([], T0 + 5 * DAY)
    assert forget(state, again, T0 + 10 + KEEP) == []
    assert forget(state, again, T0 + 5 * DAY + KEEP) == ["gone"]


def test_a_file_that_cannot_be_deleted_keeps_its_agent_and_the_rest_go_on(state):
    fleet = sampled(state, ["stuck", "free"], T0)
    fleet.set_registry([], T0 + 1)
    saved(state, fleet, T0 + 1)
    state.ring_file("stuck").unlink()
    state.ring_file("stuck").mkdir()  # unlink: EISDIR
    (state.ring_file("stuck") / "x").write_bytes(b"")
    forgotten, failed = persist.forget_removed(state, fleet, T0 + 1 + KEEP, KEEP)
    assert forgotten == ["free"] and [p for p, _ in failed] == [state.ring_file("stuck")]
    assert "stuck" in fleet.agents and state.agent_file("stuck").exists()  # tried again next time
    assert "free" not in fleet.agents and files(state, "free") == (False, False)


def test_a_dangling_symlink_in_the_registry_still_counts_as_its_file(state):
    fleet = sampled(state, ["linked"], T0)
    fleet.set_registry([], T0 + 1)
    state.registry_file("linked").symlink_to(state.root / "nowhere.json")
    assert forget(state, fleet, T0 + 2 * KEEP) == []
    assert files(state, "linked") == (True, True)


def test_an_orphan_that_is_not_a_regular_file_is_left_alone(state):
    fleet = sampled(state, ["known"], T0)
    odd = state.ring_file("odd")
    odd.mkdir()
    os.utime(odd, (T0 - 2 * KEEP, T0 - 2 * KEEP))
    assert forget(state, fleet, T0) == [] and odd.is_dir()
