"""Atomic replace: an interrupted write leaves the previous file whole and no temp file behind."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import pytest

from fleetmon.store import fsutil


class Interrupted(Exception):
    pass


def interrupt_writes(monkeypatch, after_bytes: int, exc: BaseException):
    """Make ``os.write`` write up to ``after_bytes`` bytes, then raise ``exc`` (a crash or full disk
    midway through the temp file)."""
    real_write = os.write
    written = {"n": 0}

    def write(fd, data):
        left = after_bytes - written["n"]
        if left <= 0:
            raise exc
        n = real_write(fd, bytes(data)[: min(left, 4096)])
        written["n"] += n
        return n

    monkeypatch.setattr(os, "write", write)
    return written


def listing(d):
    return sorted(p.name for p in d.iterdir())


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"), Interrupted("killed"), KeyboardInterrupt()])
def test_interrupted_atomic_write_leaves_the_previous_file(tmp_path, monkeypatch, exc):
    path = tmp_path / "status.json"
    old = b'{"old": true}\n' * 100
    fsutil.atomic_write(path, old)
    new = b'{"new": true}\n' * 10_000
    written = interrupt_writes(monkeypatch, after_bytes=len(new) // 2, exc=exc)
    with pytest.raises(type(exc)):
        fsutil.atomic_write(path, new)
    monkeypatch.undo()
    assert written["n"] > 0  # the interruption really happened midway
    assert path.read_bytes() == old
    assert listing(tmp_path) == ["status.json"]


def test_interrupted_rename_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    fsutil.atomic_write(path, b"old")

    def boom(*a, **k):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        fsutil.atomic_write(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert listing(tmp_path) == ["a.json"]


def test_atomic_write_replaces_and_is_private(tmp_path):
    path = tmp_path / "a.json"
    old_umask = os.umask(0)
    try:
        fsutil.atomic_write(path, b"one")
        fsutil.atomic_write(path, b"two")
    finally:
        os.umask(old_umask)
    assert path.read_bytes() == b"two"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert listing(tmp_path) == ["a.json"]


def test_interrupted_write_many_keeps_every_file_whole(tmp_path, monkeypatch):
    names = [f"agent-{i}.json" for i in range(8)]
    for n in names:
        fsutil.atomic_write(tmp_path / n, b"old " + n.encode())
    new = [(n, b"new " + n.encode() * 500) for n in names]
    interrupt_writes(monkeypatch, after_bytes=len(new[0][1]) * 3 + 100, exc=OSError(errno.ENOSPC, "full"))
    with pytest.raises(OSError):
        fsutil.atomic_write_many(tmp_path, new)
    monkeypatch.undo()
    assert listing(tmp_path) == sorted(names)
    for n in names:
        data = (tmp_path / n).read_bytes()
        assert data in (b"old " + n.encode(), b"new " + n.encode() * 500)
    assert fsutil.atomic_write_many(tmp_path, new) == len(names)
    assert all((tmp_path / n).read_bytes() == d for n, d in new)
    assert listing(tmp_path) == sorted(names)


@pytest.mark.skipif(fsutil._libc_call("syncfs") is None, reason="syncfs(2) is Linux's")
def test_write_many_syncs_the_filesystem_once(tmp_path, monkeypatch):
    """Many files, one syncfs(2) (not a probe call first: each flushes every dirty page of the
    filesystem, the rings' too, in the writer's main thread), and no fsync per file."""
    calls = {"syncfs": 0, "fsync": 0}
    real_syncfs, real_fsync = fsutil._syncfs, os.fsync

    def syncfs(fd):
        calls["syncfs"] += 1
        return real_syncfs(fd)

    def fsync(fd):
        calls["fsync"] += 1
        return real_fsync(fd)

    monkeypatch.setattr(fsutil, "_syncfs", syncfs)
    monkeypatch.setattr(os, "fsync", fsync)
    assert fsutil.atomic_write_many(tmp_path, [(f"a{i}.json", b"{}") for i in range(10)]) == 10
    assert calls == {"syncfs": 1, "fsync": 1}  # the one fsync: the directory, after the renames

    def refused(fd):  # a seccomp filter: the call is there, and refused
        calls["syncfs"] += 1
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fsutil, "_syncfs", refused)
    calls.update(syncfs=0, fsync=0)
    assert fsutil.atomic_write_many(tmp_path, [(f"b{i}.json", b"{}") for i in range(10)]) == 10
    assert calls == {"syncfs": 1, "fsync": 11}  # then a sync per file, and the directory's


def test_ensure_dir_mode_and_refuses_symlinks(tmp_path):
    old_umask = os.umask(0)
    try:
        d = fsutil.ensure_dir(tmp_path / "a" / "b")
    finally:
        os.umask(old_umask)
    assert os.stat(d).st_mode & 0o777 == 0o700
    # the parents it made too: the listener (`agents add` too) recreating a deleted state dir as
    # <state>/registry made <state> 0755 with the usual umask
    assert os.stat(tmp_path / "a").st_mode & 0o777 == 0o700
    os.chmod(d, 0o755)
    fsutil.ensure_dir(d)
    assert os.stat(d).st_mode & 0o777 == 0o700
    link = tmp_path / "link"
    link.symlink_to(d)
    with pytest.raises(OSError):
        fsutil.ensure_dir(link)


def test_ensure_dir_names_a_file_in_the_way(tmp_path):
    """A file where the state dir should be: the CLI said only "<path>: File exists"."""
    in_the_way = tmp_path / "state"
    in_the_way.write_text("x")
    with pytest.raises(OSError, match="is not a directory") as exc:
        fsutil.ensure_dir(in_the_way)
    assert exc.value.errno == errno.ENOTDIR


def test_ensure_dir_leaves_the_modes_of_parents_that_were_there(tmp_path):
    os.chmod(tmp_path, 0o755)
    fsutil.ensure_dir(tmp_path / "state" / "registry")
    assert os.stat(tmp_path).st_mode & 0o777 == 0o755  # (not ours to tighten)
    assert os.stat(tmp_path / "state").st_mode & 0o777 == 0o700


def test_read_private_does_not_follow_symlinks(tmp_path):
    target = tmp_path / "secret"
    target.write_text("x")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(OSError):
        fsutil.read_private(link)
    assert fsutil.read_private(target) == b"x"


def test_move_aside(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("garbage")
    aside = fsutil.move_aside(path)
    assert not path.exists() and aside.read_text() == "garbage"
    assert aside.name.startswith("a.json.corrupt-")



def _mount_type(path: Path) -> str:
    """The filesystem type of the mount holding ``path``, from /proc/self/mountinfo."""
    best, fstype = "", ""
    target = str(path.resolve())
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        point = fields[4].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fstype = point, fields[fields.index("-") + 1]
    return fstype


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="statfs(2) magic numbers are Linux's")
def test_mapped_writes_only_on_filesystems_that_cannot_fail_them(tmp_path):
    """ext2/3/4 and tmpfs (preallocated blocks: a write through a map never allocates), as the mount
    table names them; not xfs (reflinked copies share blocks), not procfs, nor a path that does not
    exist (statfs fails)."""
    safe = {"ext2": "ext4", "ext3": "ext4", "ext4": "ext4", "tmpfs": "tmpfs"}
    for path in (tmp_path, Path("/dev/shm"), Path("/proc")):
        if path.is_dir():
            assert fsutil.mapped_writes_safe(path) == safe.get(_mount_type(path)), path
    assert fsutil.mapped_writes_safe(Path("/proc")) is None
    assert fsutil.mapped_writes_safe(tmp_path / "missing") is None


def test_move_aside_keeps_the_newest_copies_of_a_name_only(tmp_path):
    """A file found corrupt at every start must not fill the disk with copies of itself."""
    older_version = tmp_path / "status.json.corrupt-20200101T000000-abcd"  # local time, no Z
    older_version.write_text("oldest")
    other = tmp_path / "thresholds.json.corrupt-20200101T000000-abcd"
    other.write_text("another file's copy")
    path = tmp_path / "status.json"
    moved = []
    for i in range(fsutil.CORRUPT_KEEP + 2):
        path.write_text(f"garbage {i}")
        moved.append(fsutil.move_aside(path))
        assert moved[-1].read_text() == f"garbage {i}"  # the copy just moved aside is always kept
    left = sorted(tmp_path.glob("status.json.corrupt-*"))
    assert len(left) == fsutil.CORRUPT_KEEP
    assert not older_version.exists()
    assert other.exists()
    assert moved[-1] in left
    assert all(p.name.split(".corrupt-")[1][15] == "Z" for p in left)


def test_pruning_takes_only_copies_move_aside_made_not_an_agent_named_like_one(tmp_path):
    """An agent may be called "web.ring.corrupt-a" (its ring: web.ring.corrupt-a.ring): moving web.ring
    aside deleted such agents' live history as if it were old copies of web.ring."""
    others = [tmp_path / f"web.ring.corrupt-{x}.ring" for x in ("a", "b", "c", "20260101T000000Z-abcd")]
    for p in others:
        p.write_bytes(b"another agent's history")
    for _ in range(fsutil.CORRUPT_KEEP + 1):
        (tmp_path / "web.ring").write_bytes(b"garbage")
        fsutil.move_aside(tmp_path / "web.ring")
    assert all(p.exists() for p in others)
    assert len(list(tmp_path.glob("web.ring.corrupt-*Z-????"))) == fsutil.CORRUPT_KEEP
