"""Per-agent history: a fixed-size ring of 64-byte records in ``history/<id>.ring``.

Persisting a sample is one write of one record in place, whatever the history length. Each record
carries a sequence number and a CRC32, so a torn or never-written record is ignored on read, and the
ring's head is found again after a restart from the highest valid sequence number. The file is
preallocated when created (and extended again if something cut it short), so a full disk cannot
fail a later write into it.

Where the filesystem allows it (``fsutil.mapped_writes_safe``: ext4, tmpfs), a record is copied
into a shared memory map of the file instead of being written with ``pwrite``: it lands in the same
page cache, without a system call per sample (a third of the writer's time went to ``pwrite``). When
the head moves on to the next page (every 64 records) the page left behind is dropped from the map,
so the writer holds one page per open ring, not the history. Past half of vm.max_map_count open
rings, the rest use ``pwrite``. A ring file cut short behind the writer's back is noticed at the next
page or wrap-around, opened again (which extends it) and the record written to it; cut short below
the page being written, it kills the writer with SIGBUS instead (the supervisor restarts it, the
workers send their batches again, and the ring is extended when opened: tried by hand, back within
0.1 s).

Record layout (little endian): timestamp f64, cpu f32, rss i64, vms i64, read i64, write i64,
fds i32, threads i32, seq u32, null-mask u16, pad u16, crc32 u32 (of the first 60 bytes).
"""

from __future__ import annotations

import errno
import math
import mmap
import os
import stat
import struct
import zlib
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from fleetmon.store import fsutil

MAGIC = b"FLMRING1"
HEADER = struct.Struct("<8sIII40sI")  # magic, record size, capacity, version, reserved, crc
BODY = struct.Struct("<dfqqqqiiIHH")
CRC = struct.Struct("<I")
RECORD_SIZE = 64
assert HEADER.size == RECORD_SIZE and BODY.size + CRC.size == RECORD_SIZE
_SEQ_WORD = 13  # index of ``seq`` when a record is viewed as sixteen u32 words
SEQ_MAX = 0xFFFFFFFF  # seq is a u32: a ring that reaches it is numbered again from 1 (Ring._renumber)
_PAGE = mmap.PAGESIZE
_PAGE_SHIFT = _PAGE.bit_length() - 1
_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)
_WILLNEED = getattr(os, "POSIX_FADV_WILLNEED", None)
_READ_AHEAD = 128 * 1024

METRICS = ("cpu", "memory_rss", "memory_vms", "disk_read_bytes", "disk_write_bytes", "open_files", "num_threads")


class Point(NamedTuple):
    timestamp: float
    cpu: float | None
    memory_rss: int | None
    memory_vms: int | None
    disk_read_bytes: int | None
    disk_write_bytes: int | None
    open_files: int | None
    num_threads: int | None


class CorruptRing(Exception):
    """The file is not a ring we can read (bad header); the caller moves it aside."""


def _header(capacity: int) -> bytes:
    body = struct.pack("<8sIII40s", MAGIC, RECORD_SIZE, capacity, 1, b"")
    return body + CRC.pack(zlib.crc32(body))


def _parse_header(data: bytes) -> int:
    if len(data) < RECORD_SIZE:
        raise CorruptRing("short header")
    magic, size, capacity, _version, _reserved, crc = HEADER.unpack_from(data)
    if magic != MAGIC or size != RECORD_SIZE or crc != zlib.crc32(data[:60]) or capacity <= 0:
        raise CorruptRing("bad header")
    return capacity


def encode_record(seq: int, p: Point | tuple) -> bytes:
    """One record, any metric null (``Ring.append_read`` packs the common case, none null, itself)."""
    ts, cpu, rss, vms, rd, wr, fds, thr = p
    mask = (
        (cpu is None) | (rss is None) << 1 | (vms is None) << 2 | (rd is None) << 3
        | (wr is None) << 4 | (fds is None) << 5 | (thr is None) << 6
    )
    body = _pack(ts, cpu or 0.0, rss or 0, vms or 0, rd or 0, wr or 0, fds or 0, thr or 0, seq, mask, 0)
    return body + _pack_crc(_crc32(body))


_pack, _pack_crc, _crc32 = BODY.pack, CRC.pack, zlib.crc32


def decode_records(data: bytes | memoryview) -> list[tuple[int, Point]]:
    """Every valid record of a ring's record area as ``(seq, point)``, in file order."""
    out = []
    crc32 = zlib.crc32
    for off in range(0, len(data) - RECORD_SIZE + 1, RECORD_SIZE):
        rec = data[off : off + RECORD_SIZE]
        ts, cpu, rss, vms, rd, wr, fds, thr, seq, mask, _pad = BODY.unpack_from(rec)
        if seq == 0 or CRC.unpack_from(rec, 60)[0] != crc32(rec[:60]):
            continue
        if mask:
            cpu = None if mask & 1 else cpu
            rss = None if mask & 2 else rss
            vms = None if mask & 4 else vms
            rd = None if mask & 8 else rd
            wr = None if mask & 16 else wr
            fds = None if mask & 32 else fds
            thr = None if mask & 64 else thr
        if cpu is not None:
            cpu = _shortest_f32(cpu) if math.isfinite(cpu) else None
        out.append((seq, Point(ts, cpu, rss, vms, rd, wr, fds, thr)))
    return out


_F32 = struct.Struct("<f")


def _shortest_f32(value: float) -> float:
    """A float32 read back as the shortest decimal that is the same float32: 12.3 is kept as
    12.300000190734863 and shown as 12.3, as status and /metrics show the sample; nothing is lost
    (packed as a float32 again, it is the same bits)."""
    bits = _F32.pack(value)
    for digits in (7, 8):
        short = float(f"{value:.{digits}g}")
        if _F32.pack(short) == bits:
            return short
    return float(f"{value:.9g}")  # (9 significant digits always name a float32 exactly)


def read_points(path: Path) -> list[Point]:
    """All valid points of a ring file, oldest first. Raises FileNotFoundError or CorruptRing."""
    data = fsutil.read_private(path, limit=1 << 31)
    _parse_header(data)
    records = decode_records(memoryview(data)[RECORD_SIZE:])
    records.sort(key=lambda r: r[0])
    return [p for _, p in records]


class Ring:
    """An open ring file: ``append`` writes one record in place."""

    __slots__ = ("path", "fd", "capacity", "head", "seq", "last_ts", "map", "page", "counted", "ino")

    def __init__(
        self, path: Path, fd: int, capacity: int, head: int, seq: int, last_ts: float = 0.0, mapped: bool = False,
        ino: int = 0,
    ):
        self.path, self.fd, self.capacity, self.head, self.seq = path, fd, capacity, head, seq
        self.last_ts = last_ts  # timestamp of the newest record (0.0: none)
        self.ino = ino or os.fstat(fd).st_ino  # the file's inode: which file ``head`` and ``seq`` are of
        self.map: mmap.mmap | None = None  # the whole file, shared, when written through a map
        self.page = -1  # the page of the map written to last: the only one left mapped in
        self.counted = False  # counted among the RingStore's mapped rings (as it was when opened)
        if mapped:
            self._map()

    @property
    def mapped(self) -> bool:
        return self.map is not None

    def _map(self) -> None:
        try:
            self.map = mmap.mmap(self.fd, RECORD_SIZE * (self.capacity + 1))
        except (OSError, ValueError) as exc:  # ENOMEM past vm.max_map_count, a filesystem without mmap
            from loguru import logger

            logger.warning("history file {}: memory map failed ({}): written with pwrite instead", self.path, exc)
            return
        except BaseException:
            os.close(self.fd)
            self.fd = -1
            raise
        os.close(self.fd)  # the map keeps a descriptor of its own (Python's mmap holds a duplicate)
        self.fd = -1

    @classmethod
    def open(cls, path: Path, capacity: int, mapped: bool = False) -> Ring:
        """Open or create the ring. A ring of another capacity is migrated (its newest points kept);
        a file with a bad header raises CorruptRing. ``mapped``: see the module's docstring."""
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            return cls._create(path, capacity, [], mapped)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device planted in its place
                raise CorruptRing("not a regular file")
            data = _read_all(fd)
            file_capacity = _parse_header(data)
            size, end = RECORD_SIZE * (capacity + 1), len(data)
            if file_capacity == capacity and end < size:
                # Cut short: a map past the end would fault. Extended again, with the rest of the
                # old last page zeroed: records written through a map past the end (within that
                # page) would come back on some filesystems (tmpfs) with sequence numbers above the
                # ones the ring goes on with, and pass for its newest.
                fsutil.preallocate(fd, size)
                tail = min(-end % _PAGE, size - end)
                if tail:
                    os.pwrite(fd, bytes(tail), end)
        except BaseException:
            os.close(fd)
            raise
        if file_capacity != capacity:
            os.close(fd)
            _log_resize(file_capacity, capacity)
            return cls._rewrite(path, capacity, memoryview(data)[RECORD_SIZE:], mapped)
        head, seq = _find_head(memoryview(data)[RECORD_SIZE:], capacity)
        last_ts = struct.unpack_from("<d", data, RECORD_SIZE * (1 + (head - 1) % capacity))[0] if seq else 0.0
        return cls(path, fd, capacity, head, seq, last_ts, mapped)

    @classmethod
    def reopen(cls, path: Path, capacity: int, closed: tuple[int, int, int, float], mapped: bool = False) -> Ring | None:
        """The ring this process closed as ``closed`` (``Ring.position``), opened again without
        reading it: ``open`` reads the whole file to find its head, ~90 us a ring at 1440 points,
        paid per sample when the agents outnumber the open rings. None when the file is not that
        one any more, whole (removed, replaced, cut short): ``open`` it then."""
        ino, head, seq, last_ts = closed
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if st.st_ino != ino or not stat.S_ISREG(st.st_mode) or st.st_size != RECORD_SIZE * (capacity + 1):
                os.close(fd)
                return None
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, capacity, head, seq, last_ts, mapped, ino=ino)

    @property
    def position(self) -> tuple[int, int, int, float]:
        """What ``reopen`` needs to go on where this ring is: (inode, head, seq, last_ts)."""
        return self.ino, self.head, self.seq, self.last_ts

    @classmethod
    def _rewrite(cls, path: Path, capacity: int, records: bytes | memoryview, mapped: bool) -> Ring:
        """A new file in place of ``path``: the newest ``capacity`` valid points of ``records`` (a
        record area), in order, numbered from 1 (a migration to another capacity, a renumbering)."""
        found = decode_records(records)
        found.sort(key=lambda r: r[0])
        return cls._create(path, capacity, [p for _, p in found[-capacity:]], mapped)

    @classmethod
    def _create(cls, path: Path, capacity: int, points: list[Point], mapped: bool = False) -> Ring:
        body = bytearray(_header(capacity))
        for i, p in enumerate(points, start=1):
            body += encode_record(i, p)
        size = RECORD_SIZE * (capacity + 1)
        fsutil.atomic_write(path, bytes(body), sync=False, size=size)  # preallocated, zeros after the points
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        if mapped and _WILLNEED is not None:
            # Into the page cache now: else the head's first move to a new page reads ahead the
            # rest of the file in the loop, for every ring at the same tick (all agents start
            # together): 33 us a ring, +0.35 s of CPU at tick 64 with 10,000 agents, 1-1.9 s late.
            # In steps of 128 KiB (the usual read-ahead size, which caps one call). A ring opened
            # again is read whole by open(), which leaves it in the page cache.
            try:
                for offset in range(0, size, _READ_AHEAD):
                    os.posix_fadvise(fd, offset, _READ_AHEAD, _WILLNEED)
            except OSError:
                pass  # only a hint
        return cls(path, fd, capacity, len(points) % capacity, len(points), points[-1][0] if points else 0.0, mapped)

    def append(self, point: Point) -> None:
        if None in point:  # (the timestamp never is): a metric unreadable, flagged in the record
            if self.seq >= SEQ_MAX:
                self._renumber()
            seq = self.seq + 1
            self._put(encode_record(seq, point), seq, point.timestamp)
        else:
            self.append_read(point)

    def append_read(self, s) -> None:
        """``append`` for a point or a sample (a ``wire.Sample``: the same metric attributes) whose
        every metric was read, packed straight from its attributes (``fastpath.Columns`` writes the same
        bytes for a batch's packed samples)."""
        if self.seq >= SEQ_MAX:
            self._renumber()
        seq = self.seq + 1
        body = _pack(
            s.timestamp, s.cpu, s.memory_rss, s.memory_vms, s.disk_read_bytes, s.disk_write_bytes, s.open_files,
            s.num_threads, seq, 0, 0,
        )
        self._put(body + _pack_crc(_crc32(body)), seq, s.timestamp)

    def _put(self, record: bytes, seq: int, ts: float) -> None:
        head = self.head
        at = RECORD_SIZE * (head + 1)  # record 0 is the header
        m = self.map
        if m is not None:
            if at >> _PAGE_SHIFT != self.page or not head:
                self._next_page(at >> _PAGE_SHIFT)
            m[at : at + RECORD_SIZE] = record
        else:
            os.pwrite(self.fd, record, at)
        self.seq = seq
        self.last_ts = ts
        self.head = head + 1 if head + 1 < self.capacity else 0

    def _renumber(self) -> None:
        """The ring's points numbered again from 1 (4 billion records in: 1.4 years at a 10 ms
        interval): written to a new file renamed into place, as a migration is, so that a crash of
        the writer leaves the old numbering or the new one, never a mix whose highest number is not
        the newest (not synced: after a power loss the file may be the old one, or empty)."""
        if self.map is not None:
            data = bytes(self.map[RECORD_SIZE:])
        else:
            data = os.pread(self.fd, RECORD_SIZE * self.capacity, RECORD_SIZE)
        new = Ring._rewrite(self.path, self.capacity, data, self.map is not None)
        self.close()
        self.fd, self.map, self.page, self.ino = new.fd, new.map, new.page, new.ino
        self.head, self.seq, self.last_ts = new.head, new.seq, new.last_ts
        new.fd, new.map = -1, None

    def _next_page(self, page: int) -> None:
        """At a new page or a wrap-around: check that the file was not cut short (writes past its end
        would be lost; ESTALE makes the RingStore open it again, which extends it), and drop the page
        written to until now from the map (its data stays in the page cache, dirty until written
        back), so the writer holds one page per ring, not the whole history."""
        m = self.map
        if m.size() < len(m):  # type: ignore[union-attr]
            raise OSError(errno.ESTALE, f"history file {self.path} was cut short")
        if page != self.page and self.page >= 0 and _DONTNEED is not None:
            start = self.page << _PAGE_SHIFT
            m.madvise(_DONTNEED, start, min(_PAGE, len(m) - start))  # type: ignore[union-attr]
        self.page = page

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
            self.map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_resized: set[tuple[int, int]] = set()


def _log_resize(old: int, new: int) -> None:
    """Once per process and change: ``history_size`` changed, and rings are resized as opened."""
    if (old, new) in _resized:
        return
    _resized.add((old, new))
    from loguru import logger

    logger.info(
        "history_size changed from {} to {}: each ring is resized when first opened{}", old, new,
        f" (the newest {new} points kept, older ones dropped)" if new < old else "",
    )


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0) if size else b""


def _find_head(records: memoryview, capacity: int) -> tuple[int, int]:
    """(index to write next, highest valid seq) from the record area."""
    n = min(len(records) // RECORD_SIZE, capacity)
    if n == 0:
        return 0, 0
    words = records[: n * RECORD_SIZE].cast("I")
    seqs = words[_SEQ_WORD::16].tolist()
    crc32 = zlib.crc32
    # Almost always the record with the highest seq (the last of them) is valid: try it alone first,
    # in C-speed passes, before sorting them all (a writer opens every ring at start).
    best = max(seqs)
    if best:
        idx = len(seqs) - 1 - seqs[::-1].index(best)
        rec = records[idx * RECORD_SIZE : (idx + 1) * RECORD_SIZE]
        if CRC.unpack_from(rec, 60)[0] == crc32(rec[:60]):
            return (idx + 1) % capacity, best
    for seq, idx in sorted(((s, i) for i, s in enumerate(seqs) if s), reverse=True):
        rec = records[idx * RECORD_SIZE : (idx + 1) * RECORD_SIZE]
        if CRC.unpack_from(rec, 60)[0] == crc32(rec[:60]):
            return (idx + 1) % capacity, seq
    return 0, 0


class RingStore:
    """The writer's open rings, one per agent, with a bound on open file descriptors."""

    def __init__(self, directory: Path, capacity: int, max_open: int = 4096, mapped: bool | None = None):
        """``max_open``: rings open at once (one file descriptor each). ``mapped``: write through
        memory maps (see the module's docstring); None: where ``directory``'s filesystem allows it."""
        self.directory = directory
        self.capacity = capacity
        self.filesystem = fsutil.mapped_writes_safe(directory) if mapped is None else None
        self.mapped = bool(self.filesystem) if mapped is None else mapped
        self.max_open = max_open
        # Maps are a per-process resource too (vm.max_map_count): past half of it, rings use pwrite,
        # and the rest is left to everything else in the process (threads, allocations, libraries).
        self.max_mapped = max(0, fsutil.map_count_limit() // 2 - 1024)
        self.mapped_open = 0
        # Past this many open rings, ``ring`` keeps them in LRU order (eviction is near): a caller
        # that looks rings up in ``opened`` goes through ``ring`` then.
        self.reorder_above = self.max_open // 2
        self._open: OrderedDict[str, Ring] = OrderedDict()
        # Called with the agent's id when its ring is closed (evicted, or closed by its owner): the
        # Fleet's fast path keeps the ring too, and must stop writing to it.
        self.on_close: Callable[[str], None] = lambda agent_id: None
        # Rings evicted to stay within max_open, by agent: where they were (``Ring.position``), so
        # that opening one again costs an open, not a read of the whole file.
        self._closed: dict[str, tuple[int, int, int, float]] = {}
        self.evicted = 0  # rings closed to make room, in all (logged the first time)

    def path(self, agent_id: str) -> Path:
        return self.directory / f"{agent_id}.ring"

    @property
    def lru_kept(self) -> bool:
        """Whether ``ring`` keeps the open rings in LRU order now (eviction is near; approximate below):
        a caller that looks rings up in ``opened`` must go through ``ring`` then."""
        return len(self._open) > self.reorder_above

    def ring(self, agent_id: str) -> Ring:
        ring = self._open.get(agent_id)
        if ring is not None:
            if self.lru_kept:
                self._open.move_to_end(agent_id)
            return ring
        if len(self._open) >= self.max_open:
            self._evict(max(1, self.max_open // 8))
        closed = self._closed.pop(agent_id, None)
        # (written with pwrite, not mapped: a ring opened again is likely to be evicted again soon,
        # and a map costs more to set up and tear down than the writes it would save)
        ring = None if closed is None else Ring.reopen(self.path(agent_id), self.capacity, closed)
        if ring is None:
            ring = self._open_file(agent_id)
        self._open[agent_id] = ring
        ring.counted = ring.mapped  # (what it was opened as: a renumbering may leave it unmapped)
        self.mapped_open += ring.counted
        return ring

    def _open_file(self, agent_id: str) -> Ring:
        path = self.path(agent_id)
        try:
            return Ring.open(path, self.capacity, self._map_next())
        except (CorruptRing, OSError) as exc:
            # A bad header, or something planted in place of the file (a symlink is not followed:
            # ELOOP; a directory: EISDIR) is moved aside; any other OSError (ENOSPC ...) propagates.
            if isinstance(exc, OSError) and exc.errno not in (errno.ELOOP, errno.EISDIR):
                raise
            aside = fsutil.move_aside(path)
            from loguru import logger

            logger.bind(agent_id=agent_id).error(
                "history file {} is corrupt ({}): moved aside to {}, starting a new one", path, exc, aside
            )
            return Ring.open(path, self.capacity, self._map_next())

    @property
    def opened(self) -> dict[str, Ring]:
        """The open rings by agent id: for looking up only (``Fleet.on_packed``, ``Fleet.on_sample``)."""
        return self._open

    def newest(self, agent_id: str) -> float:
        """Timestamp of the agent's newest point in its history (0.0 when it has none)."""
        return self.ring(agent_id).last_ts

    def append(self, agent_id: str, point: Point | tuple) -> None:
        ring = self._open.get(agent_id)
        if ring is None or self.lru_kept:  # (else ring() would only look it up)
            ring = self.ring(agent_id)
        try:
            ring.append(point)
        except OSError as exc:
            self.append_failed(agent_id, point, exc)

    def append_failed(self, agent_id: str, point: Point | tuple, exc: OSError) -> None:
        """After the agent's ring failed to take ``point`` with ``exc``: a ring cut short (or a stale
        NFS handle) is opened again, which extends it, and takes the point; any other error is
        raised again (a descriptor gone bad closes the ring first, to be opened anew next time)."""
        if exc.errno not in (errno.EBADF, errno.ESTALE, errno.ENOENT):
            raise exc
        self.close(agent_id)
        if exc.errno != errno.ESTALE:
            raise exc
        self.ring(agent_id).append(point)

    def _map_next(self) -> bool:
        return self.mapped and self.mapped_open < self.max_mapped

    def close(self, agent_id: str) -> None:
        self._closed.pop(agent_id, None)
        ring = self._open.pop(agent_id, None)
        if ring is not None:
            self.on_close(agent_id)
            self._close(ring)

    def _close(self, ring: Ring) -> None:
        self.mapped_open -= ring.counted
        ring.close()

    def _evict(self, count: int) -> None:
        if not self.evicted:
            from loguru import logger

            logger.warning(
                "history: more agents than rings kept open ({}, the open-file limit less 256): rings are "
                "closed and opened again as samples come (raise the limit, e.g. LimitNOFILE=, to avoid it)",
                self.max_open,
            )
        for _ in range(min(count, len(self._open))):
            agent_id, ring = self._open.popitem(last=False)
            self.on_close(agent_id)
            self._closed[agent_id] = ring.position
            self._close(ring)
            self.evicted += 1

    def close_all(self) -> None:
        for agent_id, ring in self._open.items():
            self.on_close(agent_id)
            self._close(ring)
        self._open.clear()
        self._closed.clear()
