"""Durations, sizes, ids and timestamps as users type and read them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetmon.units import (
    check_agent_id,
    format_duration,
    format_size,
    parse_duration,
    parse_rfc3339,
    parse_size,
    rfc3339,
)


@pytest.mark.parametrize(
    "text, seconds",
    [("250ms", 0.25), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("1d", 86400.0), ("12", 12.0), ("1.5s", 1.5),
     (" 2m ", 120.0), ("0", 0.0), (7, 7.0), (0.5, 0.5)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "-1s", "-5", "5x", "1y", "s", "1 2s", "1e3s", True, -1, -0.5])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    "text, size",
    [("512MiB", 512 * 2**20), ("1GiB", 2**30), ("100MB", 100 * 10**6), ("123", 123), ("1.5KiB", 1536),
     ("2kb", 2000), ("1TiB", 2**40), ("7B", 7), (4096, 4096)],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text",
    ["", "lots", "1XB", "-5", "-5MiB", "MiB", "1 GiB GiB", True, -1,
     "9" * 26 + "TiB", "1" + "0" * 400, 2**63, float("inf"), float("nan")],  # past int64, or no number
)
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("agent_id", ["a", "A1", "web-1.prod_2", "0", "a" * 128])
def test_check_agent_id_accepts(agent_id):
    assert check_agent_id(agent_id) == agent_id


@pytest.mark.parametrize("agent_id", ["", "-a", ".hidden", "a/b", "..", "a b", "a" * 129, "ü", "a\n", None, 5])
def test_check_agent_id_rejects(agent_id):
    with pytest.raises(ValueError, match="invalid agent id"):
        check_agent_id(agent_id)


def test_rfc3339_format():
    assert rfc3339(0) == "1970-01-01T00:00:00.000000Z"
    assert rfc3339(1_700_000_000.25) == "2023-11-14T22:13:20.250000Z"
    assert rfc3339(None) is None


@given(st.floats(min_value=0, max_value=4_000_000_000))
def test_rfc3339_round_trip_to_the_microsecond(ts):
    assert parse_rfc3339(rfc3339(ts)) == pytest.approx(ts, abs=1e-6)


def test_formatting():
    assert format_duration(0.25) == "250ms"
    assert format_duration(300) == "5m"
    assert format_duration(3600) == "1h"
    assert format_duration(90) == "1.5m"
    assert format_size(None) == "-"
    assert format_size(512) == "512B"
    assert format_size(2**30) == "1.0GiB"


@pytest.mark.parametrize("text, seconds", [("36500d", 36500 * 86400.0), (str(36500 * 86400), 36500 * 86400.0)])
def test_parse_duration_takes_up_to_36500d(text, seconds):
    """README: durations are at most 36500d (the bound itself included)."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["36501d", "36500.001d", str(36500 * 86400 + 1), "876001h"])
def test_parse_duration_refuses_past_36500d(text):
    with pytest.raises(ValueError, match="36500d"):
        parse_duration(text)


def test_parse_size_bounds_and_decimal_units():
    assert parse_size(2**63 - 1) == 2**63 - 1  # the largest limit (a signed 64-bit int on the wire and on disk)
    assert parse_size("3TB") == 3 * 10**12 and parse_size("3tb") == 3 * 10**12  # decimal, as MB and GB
    assert parse_size("1GB") == 10**9 and parse_size("2MiB") == 2 * 2**20


def test_parse_rfc3339_is_utc_whatever_the_local_time_zone(monkeypatch):
    """The trailing Z is UTC: read as a naive time it would be local time, which only a host set
    to UTC (like most CI machines) would not notice."""
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert parse_rfc3339("2023-11-14T22:13:20.250000Z") == 1_700_000_000.25
        assert parse_rfc3339(rfc3339(1_700_000_000.5)) == 1_700_000_000.5
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize(
    "text, size",
    [(str(2**63 - 1), 2**63 - 1), ("9007199254740993", 2**53 + 1), ("9007199254740993B", 2**53 + 1), ("0.5KiB", 512)],
)
def test_parse_size_is_exact_up_to_the_largest_limit(text, size):
    """Plain bytes are read exactly, the largest limit included (its own error message names it as
    allowed): through a float, 2**53 + 1 lost its last bit and 2**63 - 1 became 2**63 and was refused."""
    assert parse_size(text) == size


def test_parse_size_refuses_one_past_the_largest_limit():
    with pytest.raises(ValueError, match="must be from 0 to"):
        parse_size(str(2**63))


@pytest.mark.parametrize("text", ["1" * 5000, "1" * 5000 + "KiB", "0" * 5000 + "1" + "0" * 19])
def test_parse_size_of_a_very_long_number_names_the_bound(text):
    """Past 4300 digits int() (under a Fraction) refused with its own words, naming neither the
    value nor the bound: the error must be parse_size's."""
    with pytest.raises(ValueError, match="must be from 0 to"):
        parse_size(text)


@pytest.mark.parametrize(
    "text, size",
    [("0." + "0" * 5000 + "1", 0), ("0" * 5000 + "12", 12), ("1." + "9" * 5000 + "KiB", 2047), ("0.0009765625KiB", 1)],
)
def test_parse_size_of_many_digits_is_still_exact(text, size):
    assert parse_size(text) == size
