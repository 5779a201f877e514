"""History windows and epoch-aligned bucket means."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetmon.store.aggregate import aggregate, bucket_start, window
from fleetmon.store.ring import Point

T0 = 1_700_000_040.0  # a multiple of 60: 2023-11-14T22:34:00Z


def pt(ts, cpu=None, rss=None, fds=None):
    return Point(ts, cpu, rss, None, None, None, fds, None)


def test_seed_case_10_20_30_within_a_minute_give_20():
    pts = [pt(T0 + 5, 10.0, 10), pt(T0 + 25, 20.0, 20), pt(T0 + 45, 30.0, 30)]
    (bucket,) = aggregate(pts, 60)
    assert bucket.timestamp == T0
    assert bucket.cpu == 20.0 and bucket.memory_rss == 20.0
    assert isinstance(bucket.memory_rss, float)


def test_nulls_are_skipped_and_all_null_is_null():
    pts = [pt(T0 + 1, 10.0, None), pt(T0 + 2, None, None), pt(T0 + 3, 40.0, None)]
    (bucket,) = aggregate(pts, 60)
    assert bucket.cpu == 25.0  # (10 + 40) / 2, not / 3
    assert bucket.memory_rss is None
    assert bucket.memory_vms is None


def test_buckets_are_aligned_to_the_epoch_not_the_first_point():
    pts = [pt(T0 + 59, 1.0), pt(T0 + 61, 3.0), pt(T0 + 119.999, 5.0), pt(T0 + 120, 7.0)]
    out = aggregate(pts, 60)
    assert [b.timestamp for b in out] == [T0, T0 + 60, T0 + 120]
    assert [b.cpu for b in out] == [1.0, 4.0, 7.0]
    # 5 minute buckets: 22:30, 22:35 (T0 = 22:34)
    out = aggregate([pt(T0, 1.0), pt(T0 + 59, 2.0), pt(T0 + 60, 3.0)], 300)
    assert [b.timestamp for b in out] == [T0 - 240, T0 + 60]


def test_empty_buckets_are_left_out():
    out = aggregate([pt(T0, 1.0), pt(T0 + 600, 2.0)], 60)
    assert [b.timestamp for b in out] == [T0, T0 + 600]
    assert aggregate([], 60) == []


def test_every_must_be_positive():
    with pytest.raises(ValueError):
        aggregate([pt(T0, 1.0)], 0)


def test_bucket_start_sub_second():
    assert bucket_start(T0 + 0.37, 0.25) == pytest.approx(T0 + 0.25)


def test_window_inclusive_and_sorted():
    pts = [pt(T0 + 30), pt(T0 + 10), pt(T0 + 20), pt(T0)]
    got = window(pts, since=20, now=T0 + 30)
    assert [p.timestamp for p in got] == [T0 + 10, T0 + 20, T0 + 30]
    assert window(pts, since=1000, now=T0 + 30)[0].timestamp == T0
    assert window(pts, since=5, now=T0 + 100) == []


values = st.one_of(st.none(), st.floats(min_value=0, max_value=1e12, allow_nan=False))


@given(
    samples=st.lists(st.tuples(st.floats(min_value=0, max_value=86_400 * 3), values, values), max_size=80),
    every=st.sampled_from([0.25, 1.0, 7.0, 60.0, 300.0, 3600.0]),
)
def test_aggregation_equals_the_mean(samples, every):
    pts = [Point(T0 + ts, cpu, rss, None, None, None, None, None) for ts, cpu, rss in samples]
    out = aggregate(pts, every)
    starts = [b.timestamp for b in out]
    assert starts == sorted(set(starts))
    assert sum(1 for _ in out) == len({math.floor(p.timestamp / every) for p in pts})
    for b in out:
        assert math.isclose(b.timestamp / every, round(b.timestamp / every), abs_tol=1e-6)  # aligned to the epoch
        members = [p for p in pts if math.floor(p.timestamp / every) * every == b.timestamp]
        assert members
        for field in ("cpu", "memory_rss"):
            vals = [getattr(p, field) for p in members if getattr(p, field) is not None]
            got = getattr(b, field)
            if vals:
                assert got == pytest.approx(math.fsum(vals) / len(vals), rel=1e-9)
                slack = 1e-9 * max(vals)
                assert min(vals) - slack <= got <= max(vals) + slack
            else:
                assert got is None


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 4_000_000_000 * 10**6),
    st.sampled_from([1, 50_000, 100_000, 200_000, 250_000, 10**6, 5 * 10**6, 60 * 10**6, 86_400 * 10**6]),
    st.booleans(),
)
def test_a_point_falls_in_the_bucket_its_shown_time_is_in(us, every_us, on_edge):
    """Shown to the microsecond, a point is in [bucket start, bucket start + every), and the start is
    a whole multiple of ``every`` since the epoch (Go's Truncate), whatever binary floats make of
    the two (a float division put ...59.600000 in the .500000 bucket at 100ms)."""
    from datetime import UTC, datetime

    from fleetmon.units import rfc3339

    def shown_us(ts: float) -> int:
        d = datetime.strptime(rfc3339(ts), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        return (d - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)

    if on_edge:
        us -= us % every_us
    ts = us / 1e6
    start = shown_us(bucket_start(ts, every_us / 1e6))
    assert start % every_us == 0
    assert start <= shown_us(ts) < start + every_us


def test_a_bucket_of_one_point_is_a_float_too():
    """Each metric of a bucket is the mean as a float, even of a single (integer) value."""
    (bucket,) = aggregate([Point(T0 + 1, 10.0, 1000, 2000, 3, 4, 5, 6)], 60)
    assert bucket == (T0, 10.0, 1000.0, 2000.0, 3.0, 4.0, 5.0, 6.0)
    assert all(isinstance(v, float) for v in bucket)
