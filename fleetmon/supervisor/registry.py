"""The registry: ``<state>/registry/<id>.json``, one agent to watch per file, written by
``fleetmon agents add`` or any other tool.

The supervisor rescans it every tick, cheaply: the directory's mtime says whether files came or went,
and a full stat pass (no reads) runs every ``FULL_RESCAN`` seconds to catch files edited in place. A
file is only read again when its (mtime, size, inode) changed. An invalid file is skipped with one
ERROR naming it, and named again only once it changes.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from pathlib import Path

import msgspec
from loguru import logger

from fleetmon.store import fsutil
from fleetmon.units import MAX_LIMIT, check_agent_id, check_agent_type
from fleetmon.wire import Thresholds

MAX_ENTRY_BYTES = 64 * 1024
FULL_RESCAN = 10.0
MAX_PID = 2**31 - 1  # pid_t; a larger number is no pid (and would not fit the wire)


class RegistryEntry(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    id: str
    type: str | None = None  # "default" when absent; always written out
    pid: int | None = None
    pidfile: str | None = None
    thresholds: Thresholds | None = None

    def __post_init__(self) -> None:
        check_agent_id(self.id)
        if self.type is None:
            self.type = "default"
        if (self.pid is None) == (self.pidfile is None):
            raise ValueError("an entry names exactly one of pid and pidfile")
        if self.pid is not None and (isinstance(self.pid, bool) or not 0 < self.pid <= MAX_PID):
            raise ValueError(f"pid must be a positive integer up to {MAX_PID}, not {self.pid!r}")
        if self.pidfile is not None and (not self.pidfile or "\0" in self.pidfile):
            raise ValueError("pidfile must be a non-empty path")
        if self.pidfile is not None and not self.pidfile.isascii():
            try:  # (bytes that are not UTF-8, from the command line: a registry file is JSON, UTF-8 only)
                self.pidfile.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(
                    f"pidfile must be a path in UTF-8: {self.pidfile.encode('utf-8', 'surrogateescape')[:200]!r} is not"
                ) from None
        if self.pidfile is not None and not self.pidfile.startswith("/"):
            # (read from wherever the daemon was started: / under systemd, another directory by hand)
            raise ValueError(f"pidfile must be an absolute path, not {self.pidfile[:200]!r}")
        check_agent_type(self.type)
        t = self.thresholds
        if t is not None:
            for key in ("cpu_threshold", "memory_threshold", "open_files_threshold", "threshold_duration"):
                value = getattr(t, key)
                if value is not None and not 0 <= value <= MAX_LIMIT:  # (nan and inf fail it too)
                    raise ValueError(f"thresholds.{key} must be a finite number from 0 to {MAX_LIMIT}")


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(RegistryEntry)


class InvalidEntry(ValueError):
    pass


def parse_entry(data: bytes, filename: str) -> RegistryEntry:
    """Decode one registry file. Raises InvalidEntry with a one-line reason."""
    try:
        entry = _decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:  # (bytes not UTF-8)
        raise InvalidEntry(str(exc).splitlines()[0]) from None
    if filename != f"{entry.id}.json":
        raise InvalidEntry(f"id {entry.id!r} does not match the file name {filename!r}")
    return entry


def encode_entry(entry: RegistryEntry) -> bytes:
    return msgspec.json.format(_encoder.encode(entry), indent=2) + b"\n"


def write_entry(directory: Path, entry: RegistryEntry) -> Path:
    fsutil.ensure_dir(directory)
    path = directory / f"{entry.id}.json"
    try:
        fsutil.atomic_write(path, encode_entry(entry), owner=fsutil.owner_for(directory))
    except OSError as exc:
        if exc.filename is None:  # (a write of the temp file: ENOSPC, EDQUOT, EIO) named after the entry
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    return path


MAX_IMPORT_BYTES = 64 * 1024 * 1024


def parse_many(data: bytes) -> list[RegistryEntry]:
    """Entries for ``agents import``: JSON objects one after another, each a registry entry (JSON
    Lines, or registry files concatenated: ``cat registry/*.json``), or the document ``agents ls
    --json`` prints ({"agents": [...]}). Raises InvalidEntry naming the line of the first bad entry;
    an id given twice is one, and so is no entry at all."""
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InvalidEntry(f"line {line}: not UTF-8 text") from None
    decoder = json.JSONDecoder()
    found: list[tuple[int, object]] = []  # (line, the decoded object)
    pos, end = 0, len(text)
    while True:
        while pos < end and text[pos] in " \t\r\n":
            pos += 1
        if pos >= end:
            break
        line = text.count("\n", 0, pos) + 1
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise InvalidEntry(f"line {line}: not JSON: {exc.msg} (line {exc.lineno} column {exc.colno})") from None
        found.append((line, obj))
    document = len(found) == 1 and isinstance(found[0][1], dict) and "agents" in found[0][1]
    if document:
        listed = found[0][1]["agents"]  # type: ignore[index]
        if not isinstance(listed, list):
            raise InvalidEntry(f'line {found[0][0]}: "agents" is not a list')
        found = [(found[0][0], obj) for obj in listed]
    entries: list[RegistryEntry] = []
    seen: dict[str, int] = {}
    for i, (line, obj) in enumerate(found, start=1):
        at = f'entry {i} of "agents"' if document else f"line {line}"
        try:
            entry = msgspec.convert(obj, RegistryEntry)
        except (msgspec.ValidationError, ValueError) as exc:
            raise InvalidEntry(f"{at}: {str(exc).splitlines()[0]}") from None
        if entry.id in seen:
            raise InvalidEntry(f"{at}: id {entry.id!r} given a second time")
        seen[entry.id] = line
        entries.append(entry)
    if not entries:
        raise InvalidEntry("no entries")
    return entries


def write_entries(directory: Path, entries: list[RegistryEntry]) -> None:
    """Every entry as ``write_entry`` would, all or none: each written to a temp file, one filesystem
    sync, then the renames (a full disk fails before any entry changes; a sync per file would take
    minutes for thousands)."""
    fsutil.ensure_dir(directory)
    fsutil.atomic_write_many(directory, [(f"{e.id}.json", encode_entry(e)) for e in entries], owner=fsutil.owner_for(directory))


def remove_entry(directory: Path, agent_id: str) -> bool:
    check_agent_id(agent_id)
    try:
        os.unlink(directory / f"{agent_id}.json")
    except FileNotFoundError:
        return False
    fsutil.fsync_dir(directory)
    return True


def read_all(directory: Path) -> tuple[dict[str, RegistryEntry], dict[str, str]]:
    """Every valid entry by id, and every invalid file with its reason (for the CLI)."""
    entries: dict[str, RegistryEntry] = {}
    errors: dict[str, str] = {}
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return entries, errors
    for name in names:
        if not name.endswith(".json") or name.startswith("."):
            continue
        try:
            entry = parse_entry(fsutil.read_private(directory / name, MAX_ENTRY_BYTES), name)
        except (OSError, InvalidEntry) as exc:
            if isinstance(exc, OSError) and exc.errno == errno.ELOOP:  # (opened without following links)
                errors[name] = "a symlink (symlinks are not followed)"
            else:
                errors[name] = getattr(exc, "strerror", None) or str(exc)
            continue
        entries[entry.id] = entry
    return entries, errors


def registry_changes(before: dict, after: dict, names: int = 5) -> str:
    """``3 agents: added a, b; removed c; changed d`` (at most ``names`` ids named per kind)."""

    def listed(ids: list[str]) -> str:
        ids = sorted(ids)
        more = f" and {len(ids) - names} more" if len(ids) > names else ""
        return ", ".join(ids[:names]) + more

    count = f"{len(after)} agent{'' if len(after) == 1 else 's'}"
    added = [i for i in after if i not in before]
    removed = [i for i in before if i not in after]
    changed = [i for i in after if i in before and after[i] != before[i]]
    kinds = [(w, ids) for w, ids in (("added", added), ("removed", removed), ("changed", changed)) if ids]
    return count + (": " + "; ".join(f"{w} {listed(ids)}" for w, ids in kinds) if kinds else "")


class RegistryScanner:
    """Incremental rescans for the supervisor."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._files: dict[str, tuple[tuple[int, int, int], RegistryEntry | None]] = {}
        self._dir_mtime = -1
        self._last_full = 0.0
        self.entries: dict[str, RegistryEntry] = {}

    def scan(self, force: bool = False, full: bool = True) -> bool:
        """Bring ``entries`` up to date. True when they changed. ``full``: also the rescan every
        FULL_RESCAN of a directory that did not change (files edited in place change theirs only)."""
        now = time.monotonic()
        try:
            dir_mtime = os.stat(self.directory).st_mtime_ns
        except FileNotFoundError:
            dir_mtime = 0
        # A directory changed within the last 2 s may change again within its mtime granularity.
        recent = time.time_ns() - dir_mtime < 2_000_000_000
        if not force and dir_mtime == self._dir_mtime and not recent and (not full or now - self._last_full < FULL_RESCAN):
            return False
        self._dir_mtime = dir_mtime
        self._last_full = now
        try:
            names = [n for n in os.listdir(self.directory) if n.endswith(".json") and not n.startswith(".")]
        except FileNotFoundError:
            names = []
        changed = False
        seen = set(names)
        for name in list(self._files):
            if name not in seen:
                del self._files[name]
                changed = True
        for name in names:
            path = self.directory / name
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
            old = self._files.get(name)
            if old is not None and old[0] == key:
                continue
            entry = self._load(path, name, st, old[1] if old is not None else None)
            self._files[name] = (key, entry)
            if old is None or old[1] != entry:
                changed = True
        if changed:
            self.entries = {e.id: e for _, e in self._files.values() if e is not None}
        return changed

    def _load(self, path: Path, name: str, st: os.stat_result, had: RegistryEntry | None) -> RegistryEntry | None:
        """The file's entry; if it is not valid, None (skipped), or, when it was valid before
        (``had``), that entry: a file written in place and caught half-written, or an edit gone
        wrong, must not remove the agent (its alerts closed as removed, reopened with a new since)."""
        log = logger.bind(file=str(path))
        then = "its agent keeps its last valid entry until the file is fixed (or removed)" if had is not None else "skipped"
        if stat.S_ISLNK(st.st_mode):
            log.error("registry file {} is a symlink: {} (symlinks are not followed)", path, then)
            return had
        if not stat.S_ISREG(st.st_mode):  # a directory, FIFO or device: never opened
            log.error("registry file {} is not a regular file: {}", path, then)
            return had
        try:
            return parse_entry(fsutil.read_private(path, MAX_ENTRY_BYTES), name)
        except OSError as exc:
            log.error("registry file {} cannot be read: {}: {}", path, exc.strerror or exc, then)
        except InvalidEntry as exc:
            log.error("registry file {} is invalid: {}: {}", path, exc, then)
        return had
