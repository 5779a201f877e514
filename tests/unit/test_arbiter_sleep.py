"""How long the supervisor's loop sleeps (``Arbiter._sleep_for``): until the next deadline, never
longer than one stall-check period, briefly while bytes wait to be sent, and never in a busy spin
because of a child that is not meant to run yet."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from fleetmon.supervisor.arbiter import Arbiter
from fleetmon.supervisor.children import Child


class Conn:
    def __init__(self, want_write=False):
        self.want_write = want_write


def running():
    return SimpleNamespace(exitcode=None)


def arbiter(stall_timeout=10.0, ping_in=3600.0, sending=False, connected=True, retry_in=0.4):
    workers = [Child("worker 0", 0), Child("worker 1", 1)]
    for w in workers:
        w.proc = running()
        w.ctl = Conn()
    writer = Child("writer", -1)
    writer.proc = running()
    quarantine = Child("quarantine worker", 99)  # not started: proc None, respawn_at 0.0
    return SimpleNamespace(
        config=SimpleNamespace(stall_timeout=stall_timeout),
        notifier=SimpleNamespace(wait_hint=lambda now=None: ping_in),
        workers=workers,
        writer=writer,
        quarantine_worker=quarantine,
        link=SimpleNamespace(
            pending=[b"x"] if sending else [],
            want_write=False,
            conn=object() if connected else None,
            retry_at=time.monotonic() + retry_in,
        ),
    )


def sleep_for(a, next_tick):
    return Arbiter._sleep_for(a, next_tick)


def test_idle_sleeps_one_stall_check_period_not_a_quarter_second():
    a = arbiter(stall_timeout=10.0)
    assert sleep_for(a, time.monotonic() + 60) == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("stall_timeout, period", [(3.0, 0.3), (0.5, 0.1), (600.0, 1.0)])
def test_stall_check_period_follows_stall_timeout(stall_timeout, period):
    assert sleep_for(arbiter(stall_timeout), time.monotonic() + 60) == pytest.approx(period, abs=0.01)


def test_wakes_for_the_tick_the_ping_and_a_restart():
    now = time.monotonic()
    assert sleep_for(arbiter(), now + 0.2) == pytest.approx(0.2, abs=0.01)
    assert sleep_for(arbiter(ping_in=0.4), now + 60) == pytest.approx(0.4, abs=0.01)
    a = arbiter()
    a.workers[1].proc, a.workers[1].respawn_at = None, now + 0.3  # a worker restarting after backoff
    assert sleep_for(a, now + 60) == pytest.approx(0.3, abs=0.01)
    assert sleep_for(a, now - 5) == 0.0  # a tick overdue


def test_unstarted_quarantine_worker_does_not_make_it_spin():
    assert sleep_for(arbiter(), time.monotonic() + 60) > 0.5


def test_short_sleep_while_bytes_wait_to_be_sent():
    # (now + 0.05) - now is not exactly 0.05 in floating point at a large monotonic clock
    assert sleep_for(arbiter(sending=True), time.monotonic() + 60) == pytest.approx(0.05, abs=1e-6)
    a = arbiter()
    a.workers[0].ctl.want_write = True
    assert sleep_for(a, time.monotonic() + 60) == pytest.approx(0.05, abs=1e-6)


def test_a_child_dead_since_the_last_check_is_reaped_at_once():
    a = arbiter()
    a.workers[0].proc = SimpleNamespace(exitcode=-9)  # its sentinel is not in the wait list any more
    assert sleep_for(a, time.monotonic() + 60) == 0.0


def test_writer_away_waits_for_the_reconnect_not_a_spin():
    a = arbiter(sending=True, connected=False, retry_in=0.4)
    assert sleep_for(a, time.monotonic() + 60) == pytest.approx(0.4, abs=0.01)
