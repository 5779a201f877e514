"""The writer syncs the history's filesystem every RING_SYNC_EVERY in a thread of its own, so that a
slow sync (0.1-1 s at 10,000 rings, more on a busy disk) delays neither the next tick nor the
writer's heartbeat; a clean stop still syncs before it returns."""

from __future__ import annotations

import errno
import threading
import time

import pytest

from fleetmon import channel
from fleetmon.store import writer as writer_mod
from fleetmon.store.layout import StateDir
from tests.helpers import in_process_writer

pytestmark = pytest.mark.timeout(30)


class SlowSync:
    """Stands in for fsutil.sync_filesystem: records the calling thread, blocks until released."""

    def __init__(self):
        self.threads: list[threading.Thread] = []
        self.called = threading.Event()
        self.release = threading.Event()
        self.fail: OSError | None = None

    def __call__(self, path):
        self.threads.append(threading.current_thread())
        self.called.set()
        assert self.release.wait(20), "never released"
        if self.fail is not None:
            raise self.fail


@pytest.fixture
def setup(tmp_path, monkeypatch):
    sync = SlowSync()
    monkeypatch.setattr(writer_mod.fsutil, "sync_filesystem", sync)
    listener = channel.listen_unix(str(tmp_path / "w.sock"))
    w = in_process_writer(StateDir(tmp_path / "state").create(), listener)
    yield w, sync
    sync.release.set()
    listener.close()


def due(w):
    w.last_ring_sync = time.monotonic() - writer_mod.RING_SYNC_EVERY - 1


def test_a_slow_sync_does_not_hold_up_the_flush(setup):
    w, sync = setup
    due(w)
    started = time.monotonic()
    w._flush()
    assert sync.called.wait(5)
    assert time.monotonic() - started < 5  # the flush returned with the sync still blocked
    assert sync.threads[0] is not threading.main_thread()
    assert not w.ring_sync.idle.is_set()

    due(w)
    w._flush()  # the previous sync still runs: no second one queued behind it
    assert len(sync.threads) == 1
    assert time.monotonic() - w.last_ring_sync > writer_mod.RING_SYNC_EVERY  # still due: asked again later

    sync.release.set()
    assert w.ring_sync.idle.wait(5)
    w._flush()  # due, and the thread free again
    assert w.ring_sync.idle.wait(5)
    assert len(sync.threads) == 2 and sync.threads[1] is sync.threads[0]


@pytest.mark.parametrize("fail", [OSError(errno.EIO, "Input/output error"), RuntimeError("unexpected")])
def test_a_failed_sync_is_reported_by_the_next_flush_and_syncs_go_on(setup, fail):
    w, sync = setup
    sync.fail = fail
    sync.release.set()
    due(w)
    w._flush()
    assert w.ring_sync.idle.wait(5)
    assert w.fleet.write_errors == 0  # (the flush that started it came before it failed)
    w._flush()
    assert w.fleet.write_errors == 1
    assert w.write_failing
    w._flush()  # reported once
    assert w.fleet.write_errors == 1

    sync.fail = None
    due(w)
    w._flush()  # the thread lived through the failure: the next sync runs
    assert w.ring_sync.idle.wait(5)
    assert len(sync.threads) == 2 and sync.threads[1] is sync.threads[0]


def test_a_clean_stop_syncs_before_it_returns_and_ends_the_thread(setup):
    w, sync = setup
    sync.release.set()
    due(w)
    w._flush()
    assert w.ring_sync.idle.wait(5)
    thread = w.ring_sync.thread
    w._flush(final=True)
    assert sync.threads == [thread, threading.main_thread()]
    thread.join(5)
    assert not thread.is_alive()
    assert not w.ring_sync.start()  # closed
