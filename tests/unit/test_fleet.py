"""The writer's fleet model end to end, with a temp RingStore and a fake clock (sample timestamps)."""

from __future__ import annotations

import functools

import pytest
from loguru import logger

from fleetmon.store.fleet import Fleet
from fleetmon.store.ring import RingStore, read_points
from fleetmon.units import parse_rfc3339
from fleetmon.wire import Gone, RegisteredAgent, Sample, Thresholds

T0 = 1_700_000_000.0
CT = 1_699_999_000.0  # create time of the agent's process


@pytest.fixture
def rings(tmp_path):
    store = RingStore(tmp_path / "history", capacity=50)
    (tmp_path / "history").mkdir()
    yield store
    store.close_all()


@pytest.fixture
def events():
    return []


@pytest.fixture
def logs():
    records = []
    sink = logger.add(lambda m: records.append(m.record), level="DEBUG")
    yield records
    logger.remove(sink)


def make_fleet(rings, events, **thresholds):
    fleet = Fleet(rings, events.append, alert_repeat=600.0)
    fleet.set_registry([RegisteredAgent("a1", "default", 100, None, Thresholds(**thresholds))], T0)
    return fleet


def sample(ts, pid=100, create_time=CT, cpu=1.0, rss=1000, fds=5, agent="a1"):
    return Sample(agent, pid, create_time, ts, cpu, rss, 2000, 0, 0, fds, 1)


def test_events_warning_error_ok_in_order(rings, events, logs):
    fleet = make_fleet(rings, events, cpu_threshold=50, threshold_duration=1)
    fleet.on_sample(sample(T0, cpu=10))
    fleet.on_sample(sample(T0 + 1, cpu=80))
    fleet.on_sample(sample(T0 + 1.5, cpu=90))
    fleet.on_sample(sample(T0 + 2, cpu=90))
    fleet.on_sample(sample(T0 + 3, cpu=95))
    fleet.on_sample(sample(T0 + 4, cpu=20))
    assert [(e.resource, e.state) for e in events] == [("cpu", "warning"), ("cpu", "error"), ("cpu", "ok")]
    warning, error, ok = events
    assert parse_rfc3339(warning.timestamp) == pytest.approx(T0 + 1)
    assert parse_rfc3339(error.timestamp) == pytest.approx(T0 + 2)
    assert parse_rfc3339(ok.timestamp) == pytest.approx(T0 + 4)
    assert warning.since == error.since == ok.since == warning.timestamp
    assert (warning.value, error.value, ok.value) == (80, 90, 20)
    assert warning.threshold == 50
    assert ok.reason is None
    levels = [r["level"].name for r in logs if r["extra"].get("resource") == "cpu"]
    assert levels == ["WARNING", "ERROR", "INFO"]
    assert all(r["extra"]["agent_id"] == "a1" for r in logs if r["extra"].get("resource") == "cpu")
    assert fleet.agents["a1"].alerts == {}


def test_open_episode_listed_on_the_agent(rings, events):
    fleet = make_fleet(rings, events, memory_threshold=100, threshold_duration=60)
    fleet.on_sample(sample(T0, rss=200))
    rec = fleet.agents["a1"].record(T0)
    assert [(b.resource, b.state) for b in rec.alerts] == [("memory", "warning")]
    assert parse_rfc3339(rec.alerts[0].since) == pytest.approx(T0)


def test_repeat_log_at_most_every_alert_repeat(rings, events, logs):
    fleet = make_fleet(rings, events, cpu_threshold=50, threshold_duration=1000)
    fleet.alert_repeat = 10.0
    for i in range(21):
        fleet.on_sample(sample(T0 + i, cpu=80))
    warnings = [r for r in logs if r["level"].name == "WARNING" and r["extra"].get("resource") == "cpu"]
    assert len(warnings) == 3  # at 0 (change), then repeated at 10 and 20: alert_repeat after, not later
    assert len(events) == 1


def test_a_repeat_is_saved_so_that_a_new_writer_repeats_alert_repeat_after_it(tmp_path, rings, events, logs):
    """The repeat's time was kept in memory only: a writer started again (killed, or the daemon
    restarted) repeated alert_repeat after the change, i.e. at once, one early line per episode."""
    from fleetmon.store import persist
    from fleetmon.store.layout import StateDir

    state = StateDir(tmp_path / "state").create()
    limits = [RegisteredAgent("a1", "default", 100, None, Thresholds(cpu_threshold=50, threshold_duration=1000))]
    fleet = Fleet(RingStore(state.history, 50), events.append, alert_repeat=10.0)
    fleet.set_registry(limits, T0)
    fleet.on_sample(sample(T0, cpu=80))
    fleet.alerts_dirty = False  # (saved by the writer's flush)
    for i in range(1, 10):
        fleet.on_sample(sample(T0 + i, cpu=80))
    assert not fleet.alerts_dirty  # nothing logged: nothing to save
    fleet.on_sample(sample(T0 + 10, cpu=80))  # the repeat
    assert fleet.alerts_dirty
    persist.save_metadata(state, fleet, T0 + 10, refresh=False)  # what the writer's flush writes
    persist.save_status(state, fleet, T0 + 10)
    persist.save_alert_state(state, fleet, None)
    fleet.rings.close_all()
    again = Fleet(RingStore(state.history, 50), events.append, alert_repeat=10.0)
    persist.load_fleet_state(state, again)
    again.set_registry(limits, T0 + 11)
    assert again.agents["a1"].alerts["cpu"].logged == T0 + 10
    before = len(logs)
    for i in range(11, 20):
        again.on_sample(sample(T0 + i, cpu=80))
    assert not [r for r in logs[before:] if r["level"].name == "WARNING"]  # the next repeat is due at T0 + 20
    again.on_sample(sample(T0 + 20, cpu=80))
    assert [r for r in logs[before:] if r["level"].name == "WARNING"]
    again.rings.close_all()
    every = make_fleet(rings, events, cpu_threshold=50, threshold_duration=1000)
    every.alert_repeat = 0.0  # every sample repeats: no time to keep, no thresholds.json per sample
    every.on_sample(sample(T0, cpu=80))
    every.alerts_dirty = False
    every.on_sample(sample(T0 + 1, cpu=80))
    assert not every.alerts_dirty


def test_exited_closes_alerts_with_reason(rings, events):
    fleet = make_fleet(rings, events, open_files_threshold=3, threshold_duration=0)
    fleet.on_sample(sample(T0, fds=10))
    assert [e.state for e in events] == ["error"]
    fleet.on_gone(Gone("a1", 100, T0 + 1, "no_process"))
    a = fleet.agents["a1"]
    assert a.status == "exited"
    assert [e.state for e in events] == ["error", "ok"]
    ok = events[-1]
    assert ok.reason == "exited" and ok.value is None and ok.resource == "open_files"
    assert ok.since == events[0].since
    assert a.alerts == {}
    # staying gone emits nothing more
    fleet.on_gone(Gone("a1", 100, T0 + 2, "no_process"))
    assert len(events) == 2 and a.status == "exited"


def test_ok_lines_name_the_reading_only_when_there_is_one(rings, events, logs):
    fleet = make_fleet(rings, events, cpu_threshold=50, open_files_threshold=3, threshold_duration=0)
    fleet.on_sample(sample(T0, cpu=80, fds=10))
    fleet.on_sample(sample(T0 + 1, cpu=20, fds=10))
    fleet.on_gone(Gone("a1", 100, T0 + 3, "no_process"))
    oks = [r["message"] for r in logs if r["extra"].get("state") == "ok"]
    assert oks == [
        "agent a1 cpu back to ok at 20.0% after 1s",
        "agent a1 open_files back to ok (exited) after 3s",  # not "at null"
    ]


def test_never_seen_is_not_running(rings, events):
    fleet = make_fleet(rings, events)
    fleet.on_gone(Gone("a1", 100, T0, "no_process"))
    assert fleet.agents["a1"].status == "not_running"
    fleet.on_sample(sample(T0 + 1))
    assert fleet.agents["a1"].status == "running"


def test_pid_change_counts_a_restart(rings, events):
    fleet = make_fleet(rings, events)
    fleet.on_sample(sample(T0))
    fleet.on_sample(sample(T0 + 1))
    assert fleet.agents["a1"].restart_count == 0
    fleet.on_gone(Gone("a1", 100, T0 + 2, "no_process"))
    fleet.on_sample(sample(T0 + 3, pid=200, create_time=CT + 500))
    a = fleet.agents["a1"]
    assert a.restart_count == 1 and a.pid == 200 and a.status == "running"
    assert a.record(T0 + 3).restart_count == 1
    fleet.on_sample(sample(T0 + 4, pid=300, create_time=CT + 600))
    assert a.restart_count == 2
    assert len(read_points(rings.path("a1"))) == 4


def test_a_restart_closes_the_old_process_episodes_and_the_new_one_starts_over(rings, events):
    """An open alert belongs to the process that crossed the limit: when the agent is found running
    as a new pid (a pidfile that moved on, ``agents add`` with a new pid, or a daemon restarted after
    the agent was), the episode ends as ``ok``/``exited``, and the new process counts its own
    ``threshold_duration`` from its own first sample over."""
    fleet = make_fleet(rings, events, memory_threshold=100, threshold_duration=60)
    fleet.on_sample(sample(T0, rss=200))
    fleet.on_sample(sample(T0 + 70, rss=200))
    assert [e.state for e in events] == ["warning", "error"]
    fleet.on_sample(sample(T0 + 80, pid=200, create_time=CT + 75, rss=300))
    assert [(e.state, e.reason) for e in events[2:]] == [("ok", "exited"), ("warning", None)]
    ok, warning = events[2:]
    assert ok.value is None and ok.since == events[0].since
    assert parse_rfc3339(warning.since) == pytest.approx(T0 + 80)
    a = fleet.agents["a1"]
    assert a.restart_count == 1 and a.alerts["memory"].state == "warning"
    # a sample without a readable create time (access denied) from yet another pid: the same
    fleet.on_sample(sample(T0 + 90, pid=300, create_time=0.0, rss=50))
    assert [(e.state, e.reason) for e in events[4:]] == [("ok", "exited")]
    assert a.pid == 300 and a.alerts == {} and a.create_time is None
    # its create time readable later: learned, not taken for pid reuse (the old one's is forgotten)
    fleet.on_sample(sample(T0 + 100, pid=300, create_time=CT + 85, rss=50))
    assert a.status == "running" and a.create_time == CT + 85 and fleet.retired == []


def test_pid_reuse_marks_exited_and_is_not_recorded(rings, events):
    fleet = make_fleet(rings, events, cpu_threshold=50, threshold_duration=10)
    fleet.on_sample(sample(T0, cpu=80))
    fleet.on_sample(sample(T0 + 1, cpu=80))
    assert [e.state for e in events] == ["warning"]
    # the same pid, a different process (create time differs by far more than a jiffy)
    fleet.on_sample(sample(T0 + 2, create_time=CT + 30, cpu=99, rss=123456))
    a = fleet.agents["a1"]
    assert a.status == "exited"
    assert a.restart_count == 0
    assert a.last.timestamp == T0 + 1 and a.last.memory_rss == 1000
    points = read_points(rings.path("a1"))
    assert [p.timestamp for p in points] == [T0, T0 + 1]
    assert [(e.state, e.reason) for e in events] == [("warning", None), ("ok", "exited")]
    assert fleet.retired == [("a1", 100, CT)]
    # and it stays out: the stranger's later samples are never recorded either
    fleet.on_sample(sample(T0 + 3, create_time=CT + 30))
    assert len(read_points(rings.path("a1"))) == 2 and a.status == "exited"


def test_create_time_jitter_is_not_pid_reuse(rings, events):
    fleet = make_fleet(rings, events)
    fleet.on_sample(sample(T0))
    fleet.on_sample(sample(T0 + 1, create_time=CT + 0.01))
    assert fleet.agents["a1"].status == "running"
    assert len(read_points(rings.path("a1"))) == 2


def test_samples_land_in_history_in_order(rings, events):
    fleet = make_fleet(rings, events)
    for i in range(10):
        fleet.on_sample(sample(T0 + i, cpu=float(i), rss=1000 + i))
    points = read_points(rings.path("a1"))
    assert [p.cpu for p in points] == [float(i) for i in range(10)]
    assert [p.memory_rss for p in points] == [1000 + i for i in range(10)]
    assert fleet.samples_total == 10


def test_unregistered_agent_is_ignored(rings, events):
    fleet = make_fleet(rings, events)
    fleet.on_sample(sample(T0, agent="stranger"))
    assert "stranger" not in fleet.agents
    assert not rings.path("stranger").exists()


def test_removed_from_registry_closes_alerts(rings, events):
    fleet = make_fleet(rings, events, cpu_threshold=50)
    fleet.on_sample(sample(T0, cpu=80))
    fleet.set_registry([], T0 + 1)
    assert [(e.state, e.reason) for e in events] == [("error", None), ("ok", "removed")]
    fleet.on_sample(sample(T0 + 2, cpu=80))
    assert len(read_points(rings.path("a1"))) == 1


def _restarted_with_an_error_open(tmp_path, events):
    """A fleet with a1 in error on open files, saved, and loaded by a new one (a daemon started again)."""
    from fleetmon.store import persist
    from fleetmon.store.layout import StateDir

    state = StateDir(tmp_path / "state").create()
    entry = RegisteredAgent("a1", "default", 100, None, Thresholds(open_files_threshold=3, threshold_duration=5))
    fleet = Fleet(RingStore(state.history, 50), events.append)
    fleet.set_registry([entry], T0)
    fleet.on_sample(sample(T0, fds=10))
    fleet.on_sample(sample(T0 + 5, fds=10))
    assert [e.state for e in events] == ["warning", "error"]
    persist.save_metadata(state, fleet, T0 + 5, refresh=False)
    persist.save_status(state, fleet, T0 + 5)
    persist.save_alert_state(state, fleet, None)
    fleet.rings.close_all()
    again = Fleet(RingStore(state.history, 50), events.append)
    persist.load_fleet_state(state, again)
    return state, entry, again


def test_removed_while_no_daemon_ran_closes_alerts_at_the_next_start(tmp_path, events):
    """An agent taken out of the registry while the daemon was stopped kept its open episode for
    ever (no ``removed`` event), and resumed it, old ``since`` and all, when registered again."""
    from fleetmon.store import persist

    state, entry, again = _restarted_with_an_error_open(tmp_path, events)
    again.set_registry([], T0 + 20)  # the daemon starts again: a1 was removed meanwhile
    assert [(e.state, e.reason) for e in events[2:]] == [("ok", "removed")]
    assert parse_rfc3339(events[2].since) == pytest.approx(T0)
    assert events[2].threshold == 3  # (its own, gone with its entry: kept in thresholds.json, not 0 = off)
    assert again.agents["a1"].alerts == {}
    persist.save_alert_state(state, again, None)
    assert "a1" not in persist.fsutil.read_private(state.alert_state).decode()
    again.set_registry([entry], T0 + 30)  # registered again: a new episode, not the old one
    again.on_sample(sample(T0 + 31, fds=10))
    assert [(e.state, parse_rfc3339(e.since)) for e in events[3:]] == [("warning", pytest.approx(T0 + 31))]
    again.rings.close_all()


def test_a_registry_file_that_does_not_parse_at_the_next_start_keeps_alerts_open(tmp_path, events):
    """As in a running daemon, which keeps a broken file's last valid entry: not taken for a removal."""
    state, entry, again = _restarted_with_an_error_open(tmp_path, events)
    again.listed = lambda agent_id: agent_id == "a1"  # (registry/a1.json there, but not valid)
    again.set_registry([], T0 + 20)
    assert [e.state for e in events] == ["warning", "error"] and again.agents["a1"].alerts["open_files"].state == "error"
    again.set_thresholds(Thresholds(cpu_threshold=90), {}, T0 + 25)  # a reload: its own limits unknown, not "off"
    assert len(events) == 2 and again.agents["a1"].alerts["open_files"].state == "error"
    again.set_registry([entry], T0 + 30)  # fixed: the episode goes on
    again.on_sample(sample(T0 + 31, fds=10))
    assert len(events) == 2 and again.agents["a1"].alerts["open_files"].since == pytest.approx(T0)
    again.rings.close_all()


def test_status_shows_an_agent_whose_registry_file_does_not_parse_at_the_next_start(tmp_path, events):
    """Its alerts are kept open at a start (as a running daemon keeps them), and status goes on showing
    it with them, as it does while a daemon runs: status.json left it out, so `status`, /api/status
    and /metrics hid an open error that thresholds.json still held. Fixed or removed, as usual."""
    from fleetmon.store import persist, queries

    state, entry, again = _restarted_with_an_error_open(tmp_path, events)
    state.registry.mkdir(exist_ok=True)
    state.registry_file("a1").write_text("{not json")
    again.listed = functools.partial(persist.registry_file_there, state)
    again.set_registry([], T0 + 20)
    persist.save_status(state, again, T0 + 21)
    shown = queries.status(state).agents
    assert [(r.id, [(x.resource, x.state) for x in r.alerts]) for r in shown] == [("a1", [("open_files", "error")])]
    state.registry_file("a1").unlink()  # then removed: closed as removed, and no longer shown
    again.set_registry([], T0 + 30)
    persist.save_status(state, again, T0 + 31)
    assert [(e.state, e.reason) for e in events[2:]] == [("ok", "removed")]
    assert queries.status(state).agents == []
    again.rings.close_all()


def test_a_sample_that_beats_the_registry_naming_its_agent_is_applied_when_it_comes(rings, events):
    """The Registry (from the supervisor) and the first batch of the new agent's worker come on
    different connections: the batch can win. Its sample is kept, and applied (thresholds too)."""
    fleet = make_fleet(rings, events)
    fleet.on_sample(sample(T0 + 1, pid=200, cpu=99, agent="new"))
    fleet.on_sample(sample(T0 + 1, pid=300, agent="never"))  # a worker's, for an agent not registered after all
    assert "new" not in fleet.agents and not rings.path("new").exists()
    new = RegisteredAgent("new", "default", 200, None, Thresholds(cpu_threshold=50, threshold_duration=0))
    fleet.set_registry([RegisteredAgent("a1", "default", 100, None, Thresholds()), new], T0 + 1.5)
    a = fleet.agents["new"]
    assert a.status == "running" and a.pid == 200 and a.last.cpu == 99
    assert [p.timestamp for p in read_points(rings.path("new"))] == [T0 + 1]
    assert [(e.agent_id, e.state) for e in events] == [("new", "error")]
    assert "never" not in fleet.agents and fleet._unknown == {}  # not kept past the update
    # one that was kept too long is not applied: the registry took over a minute to name it
    fleet.on_sample(sample(T0 + 2, pid=400, agent="late"))
    fleet.set_registry([new, RegisteredAgent("late", "default", 400, None, Thresholds())], T0 + 2 + 61)
    assert fleet.agents["late"].last is None and not rings.path("late").exists()


def test_a_null_reading_keeps_the_episode_without_repeating_its_log_line(rings, events, logs):
    fleet = Fleet(rings, events.append, alert_repeat=0.0)  # the seed's every-sample repeat
    fleet.set_registry([RegisteredAgent("a1", "default", 100, None, Thresholds(cpu_threshold=50, threshold_duration=60))], T0)
    fleet.on_sample(sample(T0, cpu=80))
    fleet.on_sample(sample(T0 + 1, cpu=None))  # e.g. the first reading after a restart of fleetmon
    fleet.on_sample(sample(T0 + 2, cpu=90))
    lines = [r["message"] for r in logs if r["level"].name == "WARNING"]
    assert lines == ["agent a1 cpu 80.0% over 50.0% for 0ms", "agent a1 cpu 90.0% over 50.0% for 2s (still)"]
    assert [e.state for e in events] == ["warning"] and fleet.agents["a1"].alerts["cpu"].since == T0


def test_the_start_time_in_the_record_follows_the_agent_s_process(rings, events):
    fleet = make_fleet(rings, events)
    a = fleet.agents["a1"]
    assert a.record(T0).start_time is None  # no process seen yet
    fleet.on_sample(sample(T0))
    assert parse_rfc3339(a.record(T0).start_time) == pytest.approx(CT)
    fleet.on_sample(sample(T0 + 1, pid=101, create_time=CT + 500))  # restarted: a new process
    assert parse_rfc3339(a.record(T0 + 1).start_time) == pytest.approx(CT + 500)


def test_threshold_sources_type_then_default(rings, events):
    fleet = Fleet(
        rings, events.append,
        default_thresholds=Thresholds(cpu_threshold=90, threshold_duration=0),
        type_thresholds={"web": Thresholds(cpu_threshold=50)},
    )
    fleet.set_registry([
        RegisteredAgent("w", "web", 1, None, Thresholds()),
        RegisteredAgent("d", "default", 2, None, Thresholds()),
        RegisteredAgent("own", "web", 3, None, Thresholds(cpu_threshold=70)),
    ], T0)
    for agent, pid in (("w", 1), ("d", 2), ("own", 3)):
        fleet.on_sample(sample(T0, pid=pid, cpu=60, agent=agent))
    assert [(e.agent_id, e.state, e.threshold) for e in events] == [("w", "error", 50)]


# --- found by mutation testing: the batch path, thresholds changed while an episode is open, and
# --- each event's threshold


@pytest.mark.parametrize(
    "resource, over, under",
    [("cpu", {"cpu": 80.0}, {"cpu": 10.0}), ("memory", {"rss": 200}, {"rss": 50}), ("open_files", {"fds": 10}, {"fds": 1})],
)
def test_the_batch_path_opens_and_closes_an_episode_for_each_resource(rings, events, resource, over, under):
    """``Fleet.on_samples`` (what the writer calls for every batch) takes a sample of a known process
    with no episode open inline: a value over any one of the limits must still reach the state
    machine, and with an episode open the recovering sample must close it. The agent's process is
    learned by the first sample, so the rest take the inline path."""
    fleet = make_fleet(rings, events, cpu_threshold=50, memory_threshold=100, open_files_threshold=3, threshold_duration=1)
    quiet = {"cpu": 1.0, "rss": 10, "fds": 1}
    fleet.on_samples([sample(T0, **quiet)])
    fleet.on_samples([sample(T0 + 1, **quiet)])
    assert events == []
    fleet.on_samples([sample(T0 + 2, **{**quiet, **over})])
    fleet.on_samples([sample(T0 + 3, **{**quiet, **over})])
    fleet.on_samples([sample(T0 + 4, **{**quiet, **under})])
    assert [(e.resource, e.state) for e in events] == [(resource, "warning"), (resource, "error"), (resource, "ok")]
    assert [parse_rfc3339(e.timestamp) for e in events] == [T0 + 2, T0 + 3, T0 + 4]
    assert fleet.agents["a1"].alerts == {}
    assert len(read_points(rings.path("a1"))) == 5


def test_a_threshold_turned_off_closes_its_open_episode_and_only_that_one(rings, events):
    """A threshold set to 0 (registry entry rewritten, or config reloaded) is off: its open episode
    ends at once with an ``ok`` event, reason ``threshold_off``, no value, and the episode's since;
    the other resource's episode stays open. Off stays off."""
    fleet = make_fleet(rings, events, cpu_threshold=50, memory_threshold=100, threshold_duration=60)
    fleet.on_sample(sample(T0, cpu=80, rss=200))
    assert [(e.resource, e.state) for e in events] == [("cpu", "warning"), ("memory", "warning")]
    off = Thresholds(cpu_threshold=0, memory_threshold=100, threshold_duration=60)
    fleet.set_registry([RegisteredAgent("a1", "default", 100, None, off)], T0 + 5)
    (closed,) = events[2:]
    assert (closed.resource, closed.state, closed.reason, closed.value) == ("cpu", "ok", "threshold_off", None)
    assert closed.since == events[0].since and parse_rfc3339(closed.timestamp) == T0 + 5
    assert list(fleet.agents["a1"].alerts) == ["memory"]
    fleet.on_sample(sample(T0 + 6, cpu=500, rss=200))
    assert len(events) == 3


def test_a_config_reload_keeps_each_agent_s_own_thresholds_first(rings, events):
    """``set_thresholds`` (SIGHUP with a config file) changes the type and default sources; an agent's
    registry entry still wins over them, field by field."""
    fleet = Fleet(rings, events.append, default_thresholds=Thresholds(cpu_threshold=90, threshold_duration=0))
    fleet.set_registry(
        [
            RegisteredAgent("own", "web", 1, None, Thresholds(cpu_threshold=50)),
            RegisteredAgent("plain", "web", 2, None, Thresholds()),
        ],
        T0,
    )
    fleet.set_thresholds(Thresholds(cpu_threshold=95, threshold_duration=0), {"web": Thresholds(cpu_threshold=70)}, T0 + 1)
    fleet.on_sample(sample(T0 + 2, pid=1, cpu=60, agent="own"))
    fleet.on_sample(sample(T0 + 2, pid=2, cpu=60, agent="plain"))
    assert [(e.agent_id, e.state, e.threshold) for e in events] == [("own", "error", 50)]
    fleet.on_sample(sample(T0 + 3, pid=2, cpu=80, agent="plain"))
    assert [(e.agent_id, e.state, e.threshold) for e in events[1:]] == [("plain", "error", 70)]


def test_each_event_carries_its_own_resource_s_threshold(rings, events):
    fleet = make_fleet(rings, events, cpu_threshold=50, memory_threshold=100, open_files_threshold=3, threshold_duration=0)
    fleet.on_sample(sample(T0, cpu=80, rss=200, fds=10))
    fleet.on_sample(sample(T0 + 1, cpu=10, rss=50, fds=1))
    assert [(e.resource, e.state, e.threshold, e.value) for e in events] == [
        ("cpu", "error", 50, 80),
        ("memory", "error", 100, 200),
        ("open_files", "error", 3, 10),
        ("cpu", "ok", 50, 10),
        ("memory", "ok", 100, 50),
        ("open_files", "ok", 3, 1),
    ]
