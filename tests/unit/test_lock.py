"""One daemon per state dir (``supervisor/lock.py``): a second one is refused, naming the holder, or
starts as soon as the previous one lets go."""

from __future__ import annotations

import os
import threading
import time

import pytest

from fleetmon.supervisor import lock


def test_a_held_state_dir_is_refused_with_the_holders_pid(tmp_path):
    first = lock.acquire(tmp_path, wait=0)
    try:
        assert (tmp_path / "lock").read_text() == f"{os.getpid()}\n"
        started = time.monotonic()
        with pytest.raises(lock.StateDirBusy, match=rf"in use by another fleetmon \(pid {os.getpid()}, or its writer\)"):
            lock.acquire(tmp_path, wait=0.3)
        assert time.monotonic() - started >= 0.3  # it waited before giving up
    finally:
        os.close(first)
    again = lock.acquire(tmp_path, wait=0)  # let go: free at once
    os.close(again)


@pytest.mark.timeout(30)
def test_a_new_daemon_waits_for_the_previous_one_to_let_go(tmp_path):
    first = lock.acquire(tmp_path, wait=0)
    threading.Timer(0.5, os.close, (first,)).start()
    started = time.monotonic()
    second = lock.acquire(tmp_path, wait=10)
    try:
        assert 0.4 <= time.monotonic() - started < 5
    finally:
        os.close(second)


def test_a_forked_child_that_closes_its_copy_does_not_free_the_lock(tmp_path):
    """The workers close the copy fork gave them; the lock stays with the supervisor (and writer)."""
    fd = lock.acquire(tmp_path, wait=0)
    try:
        pid = os.fork()
        if pid == 0:
            os.close(fd)
            os._exit(0)
        os.waitpid(pid, 0)
        with pytest.raises(lock.StateDirBusy):
            lock.acquire(tmp_path, wait=0)
    finally:
        os.close(fd)


def test_a_filesystem_without_locks_warns_and_runs_unchecked(tmp_path, monkeypatch):
    """NFS without a lock manager answers ENOLCK: the daemon runs as it did before the lock existed,
    and says so, rather than refusing a state dir that used to work."""
    import errno
    import fcntl

    from loguru import logger

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    lines: list = []
    sink = logger.add(lambda m: lines.append((m.record["level"].name, m.record["message"])), level="WARNING")
    try:
        fd = lock.acquire(tmp_path, wait=0)
    finally:
        logger.remove(sink)
    os.close(fd)
    assert lines == [("WARNING", f"cannot lock {tmp_path / 'lock'} (No locks available): running without the check "
                                 "that no other fleetmon uses this state dir")]
