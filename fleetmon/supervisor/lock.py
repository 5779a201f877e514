"""One daemon per state dir: ``run/lock``, held with ``flock`` for as long as the daemon runs.

Two daemons on one state dir would be two writers of the same files, and the second one's socket
would take the first one's workers away from its writer (samples lost without an error). So
``fleetmon run`` takes an exclusive lock first, and a second one refuses to start (exit 1), naming
the pid that holds it.

The lock is on the open file, so the writer forked from the supervisor holds it too (the workers
close their copy: one stuck in a /proc read must not keep a new daemon out): after the supervisor is
killed, its writer may still be draining for a few seconds. A new daemon started meanwhile
(systemd's ``Restart=``) waits up to ``WAIT`` seconds for it to let go, and starts when it does.

On NFS the lock works only where the server's lock manager does (and ``local_lock=flock`` makes it
per host); where locking fails with ENOLCK or the like, the daemon warns and runs without it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from loguru import logger

WAIT = 10.0  # seconds a new daemon waits for the previous one's processes to let go
POLL = 0.1
# A filesystem without working locks (NFS without lockd): the daemon runs, unchecked, as before.
UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}


class StateDirBusy(Exception):
    """Another daemon holds the state dir."""


class GaveUp(Exception):
    """``give_up`` said to stop waiting (the daemon was told to stop while it waited)."""


def acquire(run_dir: Path, wait: float = WAIT, give_up=None) -> int:
    """Lock ``run_dir/lock`` and write our pid in it. Returns the descriptor (keep it open for the
    daemon's lifetime; it is closed on exit). Raises StateDirBusy after ``wait`` seconds, GaveUp as
    soon as ``give_up()`` is true while it waits."""
    path = run_dir / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + wait
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno in UNSUPPORTED:
                    logger.warning(
                        "cannot lock {} ({}): running without the check that no other fleetmon uses this "
                        "state dir", path, exc.strerror,
                    )
                    return fd
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
            # The pid is the supervisor's; after it was killed, its writer may hold the lock a while.
            holder = f"pid {_holder(fd) or 'unknown'}, or its writer"
            if give_up is not None and give_up():
                raise GaveUp()
            if time.monotonic() >= deadline:
                raise StateDirBusy(
                    f"state dir {run_dir.parent} is in use by another fleetmon ({holder}): "
                    "stop it first, or give this one another --state-dir"
                )
            if not told:
                logger.warning(
                    "state dir {} is in use by another fleetmon ({}): waiting up to {:g}s for it to stop",
                    run_dir.parent, holder, wait,
                )
                told = True
            time.sleep(POLL)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _holder(fd: int) -> int | None:
    """The pid the holder wrote in the lock file (None if unreadable)."""
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def held(run_dir: Path) -> bool | None:
    """Whether a daemon (or its writer, still draining) holds ``run_dir/lock`` now; None when that
    cannot be told (no permission to open it, a filesystem without locks)."""
    try:
        fd = os.open(run_dir / "lock", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return True if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
    finally:
        os.close(fd)  # (releases the shared lock if we got it)
    return False
