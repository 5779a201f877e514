"""File primitives: atomic replace, private modes, no symlinks followed, corrupt files moved aside.

Atomic replace = exclusive temp file in the same directory, write, flush, fsync, ``os.replace``, fsync
the directory. Many files at once are synced with one ``syncfs`` where Linux has it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
import secrets
import stat
import sys
import time
from collections.abc import Iterable
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600

_libc = None

# Filesystems where a write through a shared memory map into a preallocated file never allocates a
# block, so it cannot fail on a full disk (which would be SIGBUS, not an error to log): ext2/3/4 and
# tmpfs. Not xfs: a ring copied with reflinks (cp's default there) shares its blocks, and a write
# into it allocates. Copy-on-write ones (btrfs, zfs, ...) and anything else keep pwrite.
MAPPED_WRITE_FILESYSTEMS = {0xEF53: "ext4", 0x01021994: "tmpfs"}
MAP_COUNT_DEFAULT = 65530  # Linux's vm.max_map_count when /proc does not say


def map_count_limit() -> int:
    """How many memory maps this process may hold (vm.max_map_count)."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read())
    except (OSError, ValueError):
        return MAP_COUNT_DEFAULT


def _libc_call(name: str):
    """A function of the C library (Linux), or None where there is none."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        except OSError:
            _libc = False
    return getattr(_libc, name, None) if _libc else None


def _syncfs(fd: int) -> bool:
    """syncfs(2) on Linux: one call flushes every file of the filesystem. False where unavailable."""
    syncfs = _libc_call("syncfs")
    if syncfs is None:
        return False
    if syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return True


def mapped_writes_safe(path: Path) -> str | None:
    """The name of the filesystem holding ``path`` when writes through a memory map are safe there
    (see MAPPED_WRITE_FILESYSTEMS), else None (also off Linux, or when statfs(2) fails)."""
    statfs = _libc_call("statfs") if sys.platform.startswith("linux") else None
    if statfs is None:
        return None
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type, a C long, comes first
    if statfs(os.fsencode(path), buf) != 0:
        return None
    return MAPPED_WRITE_FILESYSTEMS.get(ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF)


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (and parents) with mode 0700; refuse a symlink; tighten the mode if needed."""
    missing = []
    parent = path.parent
    while parent != parent.parent and not os.path.lexists(parent):
        missing.append(parent)
        parent = parent.parent
    for d in reversed(missing):  # (mkdir's parents=True makes them with the umask: 0755, readable by all)
        d.mkdir(mode=DIR_MODE, exist_ok=True)
    try:
        path.mkdir(mode=DIR_MODE, exist_ok=True)
    except FileExistsError:  # a file (or a link to one) is there: named below, as a link is
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, f"{path} is not a directory (symlinks are not followed)")
    if stat.S_IMODE(st.st_mode) != DIR_MODE:
        try:
            os.chmod(path, DIR_MODE)
        except PermissionError:
            raise PermissionError(
                errno.EPERM, f"{path} is mode {stat.S_IMODE(st.st_mode):04o} and belongs to uid {st.st_uid}, not to "
                f"uid {os.geteuid()}: it cannot be made private (0700); chown it to this user, or use another state dir",
            ) from None
    return path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(
    directory: Path, name: str, data: bytes, sync: bool, size: int | None = None, owner: tuple[int, int] | None = None,
) -> Path:
    tmp = directory / f".{name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if size is not None and size > len(data):
            preallocate(fd, size)
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    os.close(fd)
    return tmp


def inode(path: Path) -> int | None:
    """The inode at ``path`` (a symlink's own, not followed), or None when nothing is there."""
    try:
        return os.stat(path, follow_symlinks=False).st_ino
    except FileNotFoundError:
        return None


def remove_stale_temps(directories: list[Path]) -> tuple[int, int]:
    """Delete the temporary files (``.<name>.<hex>.tmp``, see ``_write_temp``) that a writer killed in
    the middle of an atomic write left in ``directories``: a copy of status.json, or a new ring
    preallocated to its full size. Only for a writer that holds the state dir's lock (no other can
    be writing). Returns (files, bytes) removed."""
    files = size = 0
    for directory in directories:
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            continue
        for entry in entries:
            if not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            files += 1
            size += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return files, size


def preallocate(fd: int, size: int) -> None:
    """Extend the file to ``size`` bytes of zeros with every block allocated (so a full disk cannot
    fail a later write into it), without writing the zeros: a big write would leave the file in the
    page cache as large folios, and every later small write in place would cost in proportion to
    their size (measured on Linux 6.18 ext4: a 64-byte pwrite into a 900 KB file written at once,
    5x the cost of one into a file preallocated so)."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        end = os.fstat(fd).st_size  # no fallocate on this filesystem: write the zeros
        os.pwrite(fd, bytes(size - end), end)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def atomic_write(
    path: Path, data: bytes, *, sync: bool = True, size: int | None = None, owner: tuple[int, int] | None = None,
) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old or the new file, never a mix.
    ``size``: the new file is ``size`` bytes, zeros after ``data``, with its blocks allocated.
    ``owner``: (uid, gid) of the new file (see ``owner_for``)."""
    tmp = _write_temp(path.parent, path.name, data, sync, size, owner)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    if sync:
        fsync_dir(path.parent)


def owner_for(directory: Path) -> tuple[int, int] | None:
    """For root writing into a directory another user owns (``sudo fleetmon agents add`` into that
    user's state dir): that user, so that their daemon can read the file. Else None (as created)."""
    if os.geteuid() != 0:
        return None
    st = os.stat(directory)
    return (st.st_uid, st.st_gid) if st.st_uid != 0 else None


def atomic_write_many(directory: Path, files: Iterable[tuple[str, bytes]], owner: tuple[int, int] | None = None) -> int:
    """Atomically replace many files of one directory, with one filesystem sync for all of them.

    Returns how many were written. On an error the files already renamed stay valid (each is whole)
    and the error propagates after the temp files are removed.
    """
    items = list(files)
    if not items:
        return 0
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    temps: list[tuple[Path, Path]] = []
    try:
        bulk = len(items) > 4 and _syncfs_ok(dfd)
        for name, data in items:
            temps.append((_write_temp(directory, name, data, sync=not bulk, owner=owner), directory / name))
        if bulk:
            try:
                _syncfs(dfd)
            except OSError as exc:  # there, but refused (seccomp: ENOSYS, EPERM): a sync per file
                if exc.errno not in (errno.ENOSYS, errno.EPERM):
                    raise
                for tmp, _ in temps:
                    _fsync_path(tmp)
        for tmp, final in temps:
            os.replace(tmp, final)
        temps.clear()
        os.fsync(dfd)
    finally:
        for tmp, _ in temps:
            _unlink_quietly(tmp)
        os.close(dfd)
    return len(items)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _syncfs_ok(fd: int) -> bool:
    """Whether syncfs(2) is there to call: asked of the C library, not by calling it (a call flushes
    the whole filesystem, every ring's dirty pages with it, in the writer's main thread)."""
    return _libc_call("syncfs") is not None


def sync_filesystem(path: Path) -> None:
    """Flush every dirty page of the filesystem holding ``path`` (one syscall on Linux)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if not _syncfs(fd):
            os.sync()
    finally:
        os.close(fd)


def open_private(path: Path) -> tuple[int, os.stat_result]:
    """Open a file for reading without following a symlink at its last component; refuse anything
    not regular. O_NONBLOCK: opening a FIFO planted in place of the file must not block the reader.
    Returns the descriptor (the caller closes it) and its stat."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"{path} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_private(path: Path, limit: int = 64 * 1024 * 1024) -> bytes:
    """Read a file as ``open_private`` opens it, at most ``limit`` bytes (EFBIG past that)."""
    fd, st = open_private(path)
    try:
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"{path} is {st.st_size} bytes, more than {limit}")
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def move_aside(path: Path) -> Path:
    """Rename a corrupt file to ``<name>.corrupt-<UTC time>-<random>`` so it can be inspected and
    rebuilt. Only the newest ``CORRUPT_KEEP`` copies of a name are kept: a file that is found corrupt
    at every start (a failing disk, a tool that keeps writing garbage there) does not fill the disk."""
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(2)}")
    os.replace(path, target)
    _prune_aside(path, target)
    return target


CORRUPT_KEEP = 3


_ASIDE_SUFFIX = re.compile(r"[0-9]{8}T[0-9]{6}Z?-[0-9a-f]{4}")  # what move_aside adds (Z: UTC, since 061968e)


def _prune_aside(path: Path, newest: Path) -> None:
    prefix = path.name + ".corrupt-"
    try:
        with os.scandir(path.parent) as it:
            # Only names move_aside made: an agent may be called "web.ring.corrupt-a" (its ring:
            # web.ring.corrupt-a.ring), and that is no copy of web.ring.
            aside = [
                e.name for e in it
                if e.name.startswith(prefix) and _ASIDE_SUFFIX.fullmatch(e.name[len(prefix) :]) and e.name != newest.name
            ]
    except OSError:
        return
    # Oldest first by name: the UTC time sorts (copies named in local time by older versions come
    # first; within a second, the order is the random part's, but ``newest`` is always kept).
    for name in sorted(aside, key=lambda n: (n[len(prefix) :][15:16] == "Z", n))[: max(0, len(aside) - CORRUPT_KEEP + 1)]:
        try:
            os.unlink(path.parent / name)
        except OSError:
            pass  # (gone already, or not ours to remove: kept)
