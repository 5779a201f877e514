"""The threshold state machine as a pure function, with the clock injected as the sample time.

Mirrors the seed's own cases: cpu 80 over 50 records ``since``; memory 200 MB over 100 MB records
``since``; after a 1 s duration the state is error; recovery clears; duration 0 is error at once.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fleetmon.store.thresholds import Alert, Limits, resolve, step, value_of
from fleetmon.wire import Thresholds

T0 = 1_700_000_000.0
MB = 1_000_000


def test_cpu_over_records_since():
    alert, change = step(None, 80.0, 50.0, 1.0, T0)
    assert change == "warning"
    assert alert is not None and alert.state == "warning" and alert.since == T0


def test_memory_over_records_since():
    alert, change = step(None, 200 * MB, 100 * MB, 1.0, T0)
    assert change == "warning"
    assert alert.state == "warning" and alert.since == T0


def test_error_after_duration_keeps_since():
    alert, _ = step(None, 80.0, 50.0, 1.0, T0)
    alert, change = step(alert, 85.0, 50.0, 1.0, T0 + 0.5)
    assert change is None and alert.state == "warning" and alert.since == T0
    alert, change = step(alert, 85.0, 50.0, 1.0, T0 + 0.999)
    assert change is None and alert.state == "warning"
    alert, change = step(alert, 85.0, 50.0, 1.0, T0 + 1.0)  # exactly the duration: >=
    assert change == "error"
    assert alert.state == "error" and alert.since == T0
    alert, change = step(alert, 99.0, 50.0, 1.0, T0 + 5.0)  # stays error, no new change
    assert change is None and alert.state == "error" and alert.since == T0


def test_recovery_clears():
    alert, _ = step(None, 80.0, 50.0, 1.0, T0)
    alert, _ = step(alert, 80.0, 50.0, 1.0, T0 + 2)
    assert alert.state == "error"
    alert, change = step(alert, 10.0, 50.0, 1.0, T0 + 3)
    assert change == "ok" and alert is None
    # a new episode starts with a new since
    alert, change = step(alert, 60.0, 50.0, 1.0, T0 + 4)
    assert change == "warning" and alert.since == T0 + 4


def test_recovery_from_warning_clears():
    alert, _ = step(None, 80.0, 50.0, 10.0, T0)
    alert, change = step(alert, 20.0, 50.0, 10.0, T0 + 1)
    assert change == "ok" and alert is None


def test_at_threshold_is_not_over():
    assert step(None, 50.0, 50.0, 0.0, T0) == (None, None)
    alert, _ = step(None, 51.0, 50.0, 0.0, T0)
    alert, change = step(alert, 50.0, 50.0, 0.0, T0 + 1)
    assert change == "ok" and alert is None


def test_duration_zero_is_error_at_once():
    alert, change = step(None, 80.0, 50.0, 0.0, T0)
    assert change == "error" and alert.state == "error" and alert.since == T0


def test_null_leaves_state_alone():
    assert step(None, None, 50.0, 1.0, T0) == (None, None)
    warning = Alert("warning", T0)
    alert, change = step(warning, None, 50.0, 1.0, T0 + 100)  # even long after the duration
    assert change is None and alert is warning and alert.state == "warning" and alert.since == T0
    error = Alert("error", T0)
    alert, change = step(error, None, 50.0, 1.0, T0 + 100)
    assert change is None and alert.state == "error"


def test_threshold_off_closes_an_open_episode():
    assert step(None, 1e9, 0, 0.0, T0) == (None, None)
    alert, change = step(Alert("warning", T0), 1e9, 0, 1.0, T0 + 1)
    assert alert is None and change == "ok"


@given(
    values=st.lists(st.one_of(st.none(), st.floats(min_value=0, max_value=200, allow_nan=False)), min_size=1, max_size=40),
    threshold=st.floats(min_value=1, max_value=150, allow_nan=False),
    duration=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
)
def test_state_machine_matches_a_reference_model(values, threshold, duration):
    """Fold samples one second apart through ``step`` and compare with a direct reading of the rules."""
    alert = None
    state, since = "ok", None
    for i, v in enumerate(values):
        ts = T0 + i
        alert, change = step(alert, v, threshold, duration, ts)
        expected_change = None
        if v is not None:
            if v > threshold:
                if state == "ok":
                    since = ts
                    state = "error" if duration == 0 else "warning"
                    expected_change = state
                elif state == "warning" and ts - since >= duration:
                    state = expected_change = "error"
            elif state != "ok":
                state, since, expected_change = "ok", None, "ok"
        assert change == expected_change
        if state == "ok":
            assert alert is None
        else:
            assert alert.state == state and alert.since == since


def test_resolve_most_specific_first_field_by_field():
    own = Thresholds(cpu_threshold=80)
    by_type = Thresholds(cpu_threshold=50, memory_threshold=2 << 30)
    default = Thresholds(cpu_threshold=90, memory_threshold=1 << 30, open_files_threshold=1000, threshold_duration=300)
    assert resolve(own, by_type, default) == Limits(cpu=80, memory=2 << 30, open_files=1000, duration=300)
    assert resolve(None, None, default) == Limits(cpu=90, memory=1 << 30, open_files=1000, duration=300)
    assert resolve(None, None, None) == Limits()
    assert not Limits().any


def test_resolve_zero_turns_a_field_off():
    limits = resolve(Thresholds(cpu_threshold=0), None, Thresholds(cpu_threshold=90, memory_threshold=5))
    assert limits.cpu == 0 and limits.memory == 5


def test_value_of_picks_the_resource():
    assert value_of("cpu", 1.5, 2, 3) == 1.5
    assert value_of("memory", 1.5, 2, 3) == 2
    assert value_of("open_files", 1.5, 2, 3) == 3
