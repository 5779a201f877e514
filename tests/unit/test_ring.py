"""History rings: bounded, newest points in order, one write in place per sample, and a torn or
garbled record is never read as valid."""

from __future__ import annotations

import os
import struct
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetmon.store.ring import RECORD_SIZE, CorruptRing, Point, Ring, RingStore, _shortest_f32, encode_record, read_points

I32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
I64 = st.integers(min_value=0, max_value=2**63 - 1)
# cpu as a float32 read back: the shortest decimal of it (ring._shortest_f32), which is kept exactly
F32 = st.floats(width=32, allow_nan=False, allow_infinity=False).map(_shortest_f32)


def opt(s):
    return st.one_of(st.none(), s)


def points(min_size=0, max_size=60):
    """Points with strictly increasing timestamps and any mix of nulls."""
    values = st.tuples(opt(F32), opt(I64), opt(I64), opt(I64), opt(I64), opt(I32), opt(I32))
    return st.lists(values, min_size=min_size, max_size=max_size).map(
        lambda vs: [Point(1_700_000_000.0 + i * 0.25, *v) for i, v in enumerate(vs)]
    )


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def fresh(tmp_path, name="a.ring"):
    path = tmp_path / name
    if path.exists():
        path.unlink()
    return path


@pytest.mark.parametrize("mapped", [False, True], ids=["pwrite", "mapped"])
@SETTINGS
@given(pts=points(), capacity=st.integers(min_value=1, max_value=20), reopen_every=st.integers(min_value=1, max_value=25))
def test_ring_bound_and_newest_in_order(tmp_path, mapped, pts, capacity, reopen_every):
    """Never more than ``capacity`` points; exactly the newest ones, oldest first; also across reopens
    (the head is found again from the sequence numbers)."""
    path = fresh(tmp_path)
    ring = Ring.open(path, capacity, mapped)
    size = path.stat().st_size
    try:
        for i, p in enumerate(pts, start=1):
            ring.append(p)
            if i % reopen_every == 0:
                ring.close()
                ring = Ring.open(path, capacity, mapped)
            got = read_points(path)
            assert len(got) <= capacity
            assert got == pts[max(0, i - capacity) : i]
    finally:
        ring.close()
    assert path.stat().st_size == size == RECORD_SIZE * (capacity + 1)  # preallocated, never grows


@pytest.mark.parametrize("mapped", [False, True], ids=["pwrite", "mapped"])
def test_append_is_one_write_in_place(tmp_path, mapped):
    """Persisting a sample does not rewrite the history: same inode, same size, and only one
    record's bytes change, whatever the history length."""
    path = tmp_path / "a.ring"
    ring = Ring.open(path, 1000, mapped)
    for i in range(700):
        ring.append(Point(float(i + 1), 1.0, i, i, i, i, i, i))
    before_ino = path.stat().st_ino
    before = path.read_bytes()
    ring.append(Point(9999.0, 2.0, 1, 1, 1, 1, 1, 1))
    after = path.read_bytes()
    ring.close()
    assert path.stat().st_ino == before_ino and len(after) == len(before)
    changed = [i for i in range(0, len(after), RECORD_SIZE) if after[i : i + RECORD_SIZE] != before[i : i + RECORD_SIZE]]
    assert changed == [RECORD_SIZE * 701]


@pytest.mark.parametrize("mapped", [False, True], ids=["pwrite", "mapped"])
def test_a_ring_whose_seq_reaches_u32_is_numbered_again_and_keeps_its_order(tmp_path, mapped):
    """seq is a u32: past it the record could not be packed (the writer died at every restart, as
    the batch was sent again). The ring is rewritten numbered from 1, newest points kept in order."""
    from fleetmon.store import ring as ring_mod

    path = tmp_path / "a.ring"
    ring = Ring.open(path, 4, mapped)
    pts = [Point(float(i), 1.0, i, i, i, i, None if i == 5 else i, i) for i in range(1, 8)]
    for p in pts[:3]:
        ring.append(p)
    ring.seq = ring_mod.SEQ_MAX - 1  # as if 4 billion records had gone by
    for p in pts[3:]:
        ring.append(p)  # SEQ_MAX, then numbered again: 1..4 for the four kept, 5.. after
    assert ring.seq == 7 and ring.mapped == mapped
    ring.close()
    assert read_points(path) == pts[-4:]
    again = Ring.open(path, 4, mapped)
    assert (again.seq, again.last_ts) == (7, 7.0)
    again.append(Point(8.0, 1.0, 8, 8, 8, 8, 8, 8))
    again.close()
    assert [p.timestamp for p in read_points(path)] == [5.0, 6.0, 7.0, 8.0]


def test_a_renumbered_ring_that_cannot_be_mapped_again_is_counted_out_as_it_was_counted_in(tmp_path, monkeypatch):
    from fleetmon.store import ring as ring_mod

    store = RingStore(tmp_path, capacity=4, mapped=True)
    store.append("a", Point(1.0, 1.0, 1, 1, 1, 1, 1, 1))
    assert store.mapped_open == 1
    store.ring("a").seq = ring_mod.SEQ_MAX
    monkeypatch.setattr(ring_mod.mmap, "mmap", lambda *a, **k: (_ for _ in ()).throw(OSError(12, "ENOMEM")))
    store.append("a", Point(2.0, 1.0, 2, 2, 2, 2, 2, 2))  # renumbered: the new file falls back to pwrite
    assert not store.ring("a").mapped
    store.close_all()
    assert store.mapped_open == 0
    assert [p.timestamp for p in read_points(tmp_path / "a.ring")] == [1.0, 2.0]


def test_mapped_writes_match_pwrite_byte_for_byte_across_pages_and_reopens(tmp_path):
    """Written through memory maps, a ring is the same file as one written with pwrite: across page
    boundaries (64 records a page), the short last page, wrap-arounds, and reopening anywhere."""
    capacity = 300  # 301 records: four whole pages and part of a fifth
    pts = [Point(float(i + 1), i * 0.5, i, 2 * i, 3 * i, 4 * i, i % 7, 1 + i % 3) for i in range(1000)]
    files = {}
    for mapped in (False, True):
        path = tmp_path / f"{mapped}.ring"
        ring = Ring.open(path, capacity, mapped)
        for i, p in enumerate(pts, start=1):
            ring.append(p)
            if i % 97 == 0:
                ring.close()
                ring = Ring.open(path, capacity, mapped)
        assert ring.mapped == mapped
        files[mapped] = path.read_bytes()  # before close: the pages dropped from the map kept their data
        ring.close()
        assert path.read_bytes() == files[mapped]
    assert files[True] == files[False]
    assert read_points(tmp_path / "True.ring") == pts[-capacity:]


def test_a_ring_cut_short_is_extended_again_before_it_is_mapped(tmp_path):
    """A map past the end of a file faults (SIGBUS): a ring truncated behind the writer's back is
    brought back to its full, preallocated size when opened, keeping the records it still has."""
    path = tmp_path / "a.ring"
    ring = Ring.open(path, 200, mapped=True)
    for i in range(150):
        ring.append(Point(float(i + 1), 1.0, i, i, i, i, i, i))
    ring.close()
    os.truncate(path, RECORD_SIZE * 101)  # the header and 100 records are left
    ring = Ring.open(path, 200, mapped=True)
    assert os.path.getsize(path) == RECORD_SIZE * 201
    for i in range(150, 260):  # writes into the pages that were cut off, then wraps around
        ring.append(Point(float(i + 1), 1.0, i, i, i, i, i, i))
    ring.close()
    assert [p.timestamp for p in read_points(path)] == [float(i + 1) for i in range(10, 100)] + [
        float(i + 1) for i in range(150, 260)
    ]


@pytest.fixture(params=["test dir", "tmpfs"])
def ring_dir(request, tmp_path):
    """The test's directory, and one on tmpfs (/dev/shm), the other filesystem rings are mapped on."""
    if request.param == "test dir":
        yield tmp_path
        return
    import shutil
    import tempfile

    from fleetmon.store import fsutil

    if not os.path.isdir("/dev/shm") or fsutil.mapped_writes_safe(Path("/dev/shm")) != "tmpfs":
        pytest.skip("no tmpfs at /dev/shm")
    d = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="fleetmon-test-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_a_mapped_ring_cut_short_behind_the_writers_back_is_opened_again_at_its_wrap(ring_dir):
    """Writes through a map past the end of a file are lost without an error (within its last page):
    at the wrap-around (or the next page) the ring notices, the store opens it again, extending it,
    and the record goes into it: the history is persisted again, no error, no sample dropped."""
    store = RingStore(ring_dir, capacity=10, mapped=True)
    for i in range(5):
        store.append("a", Point(float(i + 1), 1.0, i, i, i, i, i, i))
    os.truncate(store.path("a"), RECORD_SIZE)  # the header alone
    for i in range(5, 16):  # 5-9 go past the end of the file, unseen; 10 comes at the wrap-around
        store.append("a", Point(float(i + 1), 1.0, i, i, i, i, i, i))
    assert os.path.getsize(store.path("a")) == RECORD_SIZE * 11
    # The writes past the end are gone (on tmpfs they would come back with the file extended, as
    # the newest points, unless open() zeroed them); from the wrap-around on, persisted again.
    assert [p.timestamp for p in read_points(store.path("a"))] == [float(i + 1) for i in range(10, 16)]
    store.close_all()


def test_ringstore_maps_at_most_half_of_vm_max_map_count_and_counts_them_back(tmp_path):
    """Memory maps are a per-process resource (vm.max_map_count): past the store's share, rings are
    written with pwrite; closing a mapped ring gives its share back."""
    from fleetmon.store import fsutil

    store = RingStore(tmp_path, capacity=5, max_open=64, mapped=True)
    assert store.max_mapped == fsutil.map_count_limit() // 2 - 1024
    store.max_mapped = 2
    for agent in "abc":
        store.append(agent, Point(1.0, 1.0, 1, 1, 1, 1, 1, 1))
    assert [store.ring(a).mapped for a in "abc"] == [True, True, False] and store.mapped_open == 2
    store.close("a")
    store.append("d", Point(1.0, 1.0, 1, 1, 1, 1, 1, 1))
    assert store.ring("d").mapped and store.mapped_open == 2
    store.close_all()
    assert store.mapped_open == 0
    assert all([p.timestamp for p in read_points(store.path(a))] == [1.0] for a in "abcd")


def test_a_failed_map_falls_back_to_pwrite(tmp_path, monkeypatch):
    """Past vm.max_map_count (ENOMEM), or where the filesystem cannot map, the ring keeps writing."""
    import errno
    import mmap

    from fleetmon.store import ring as ring_module

    def refuse(*args, **kwargs):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(ring_module.mmap, "mmap", refuse)
    path = tmp_path / "a.ring"
    ring = Ring.open(path, 100, mapped=True)
    for i in range(80):
        ring.append(Point(float(i + 1), 1.0, i, i, i, i, i, i))
    assert not ring.mapped
    ring.close()
    monkeypatch.setattr(ring_module.mmap, "mmap", mmap.mmap)
    assert [p.timestamp for p in read_points(path)] == [float(i + 1) for i in range(80)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_a_mapped_ring_holds_one_page_of_its_history_in_memory(tmp_path):
    """The writer's RSS must not grow with the history: once the head moves on, the page left
    behind is dropped from the map (its data stays in the page cache, and in the file)."""
    import mmap

    path = tmp_path / "a.ring"
    ring = Ring.open(path, 1440, mapped=True)
    for i in range(1000):  # 16 pages
        ring.append(Point(float(i + 1), 1.0, i, i, i, i, i, i))

    def resident_kib() -> int:
        lines = open("/proc/self/smaps").read().splitlines()
        start = next(i for i, line in enumerate(lines) if line.endswith(str(path)))
        return next(int(line.split()[1]) for line in lines[start + 1 :] if line.startswith("Rss:"))

    assert resident_kib() <= mmap.PAGESIZE // 1024
    assert [p.timestamp for p in read_points(path)] == [float(i + 1) for i in range(1000)]
    ring.close()


def test_ringstore_maps_only_where_the_filesystem_is_safe(tmp_path):
    from fleetmon.store import fsutil

    auto = RingStore(tmp_path, capacity=5, max_open=64)
    assert auto.filesystem == fsutil.mapped_writes_safe(tmp_path) and auto.mapped == bool(auto.filesystem)
    for mapped in (False, True):
        store = RingStore(tmp_path, capacity=5, max_open=64, mapped=mapped)
        store.append("a", Point(1.0, 1.0, 1, 1, 1, 1, 1, 1))
        assert store.ring("a").mapped == mapped and store.max_open == 64
        store.close_all()


def test_ringstore_keeps_every_agent_apart_and_bounded(tmp_path):
    store = RingStore(tmp_path, capacity=5, max_open=2)  # forces LRU eviction and reopening
    for i in range(12):
        for agent in ("a", "b", "c"):
            store.append(agent, Point(float(i), float(i), i, i, i, i, i, i))
    store.close_all()
    for agent in ("a", "b", "c"):
        got = read_points(store.path(agent))
        assert [p.timestamp for p in got] == [7.0, 8.0, 9.0, 10.0, 11.0]


def test_ringstore_evicts_the_least_recently_used_once_more_than_half_are_open(tmp_path):
    """Below max_open/2 open rings the order is left alone (no reordering per sample); above it a
    ring written to moves to the end, so the eviction that makes room takes one not used since."""
    store = RingStore(tmp_path, capacity=5, max_open=8, mapped=False)
    for i in range(8):
        store.append(f"a{i}", Point(1.0, 1.0, 1, 1, 1, 1, 1, 1))
    store.append("a0", Point(2.0, 1.0, 1, 1, 1, 1, 1, 1))  # 8 open: a0 is now the most recent
    store.append("a8", Point(1.0, 1.0, 1, 1, 1, 1, 1, 1))  # full: evicts max_open // 8 = 1 ring
    assert list(store._open) == ["a2", "a3", "a4", "a5", "a6", "a7", "a0", "a8"]
    store.append("a1", Point(2.0, 1.0, 1, 1, 1, 1, 1, 1))  # reopened where it left off
    store.close_all()
    assert [p.timestamp for p in read_points(store.path("a1"))] == [1.0, 2.0]
    assert [p.timestamp for p in read_points(store.path("a0"))] == [1.0, 2.0]


def test_capacity_change_keeps_the_newest(tmp_path, monkeypatch):
    from loguru import logger

    from fleetmon.store import ring as ring_mod

    monkeypatch.setattr(ring_mod, "_resized", set())
    lines: list[str] = []
    sink = logger.add(lines.append, level="INFO", format="{message}")
    path = tmp_path / "a.ring"
    ring = Ring.open(path, 8)
    for i in range(10):
        ring.append(Point(float(i), None, i, None, None, None, None, None))
    ring.close()
    try:
        ring = Ring.open(path, 4)
        Ring.open(path.with_name("b.ring"), 8).close()
        Ring.open(path.with_name("b.ring"), 4).close()  # another ring, the same change: not logged again
    finally:
        logger.remove(sink)
    assert len(lines) == 1 and "history_size changed from 8 to 4" in lines[0] and "older ones dropped" in lines[0]
    assert [p.timestamp for p in read_points(path)] == [6.0, 7.0, 8.0, 9.0]
    ring.append(Point(10.0, None, 10, None, None, None, None, None))
    ring.close()
    assert [p.timestamp for p in read_points(path)] == [7.0, 8.0, 9.0, 10.0]
    ring = Ring.open(path, 16)
    ring.append(Point(11.0, None, 11, None, None, None, None, None))
    ring.close()
    assert [p.timestamp for p in read_points(path)] == [7.0, 8.0, 9.0, 10.0, 11.0]


def test_bad_header_is_corrupt(tmp_path):
    path = tmp_path / "a.ring"
    Ring.open(path, 4).close()
    data = bytearray(path.read_bytes())
    data[3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptRing):
        read_points(path)
    with pytest.raises(CorruptRing):
        Ring.open(path, 4)


def test_ringstore_moves_a_corrupt_ring_aside(tmp_path):
    store = RingStore(tmp_path, capacity=4)
    path = store.path("a")
    path.write_bytes(b"garbage" * 20)
    store.append("a", Point(1.0, 1.0, 1, 1, 1, 1, 1, 1))
    store.close_all()
    assert [p.timestamp for p in read_points(path)] == [1.0]
    assert len(list(tmp_path.glob("a.ring.corrupt-*"))) == 1


def test_nulls_and_extremes_round_trip(tmp_path):
    path = tmp_path / "a.ring"
    ring = Ring.open(path, 4)
    pts = [
        Point(1.0, None, None, None, None, None, None, None),
        Point(2.0, 0.0, 0, 0, 0, 0, 0, 0),  # zero is a value, not null
        Point(3.0, 1234.5, 2**62, 2**63 - 1, 1, 2, 2**31 - 1, 1),
    ]
    for p in pts:
        ring.append(p)
    ring.close()
    assert read_points(path) == pts


@SETTINGS
@given(
    pts=points(min_size=1, max_size=30),
    capacity=st.integers(min_value=1, max_value=12),
    victim=st.integers(min_value=0),
    offset=st.integers(min_value=0, max_value=RECORD_SIZE - 1),
    garbage=st.binary(min_size=1, max_size=RECORD_SIZE),
)
def test_garbled_record_is_never_read_as_valid(tmp_path, pts, capacity, victim, offset, garbage):
    """Overwrite any bytes of one stored record with anything: what is read back is always a subset
    of the points written, in order; and a new append after reopening lands last."""
    path = fresh(tmp_path)
    ring = Ring.open(path, capacity)
    for p in pts:
        ring.append(p)
    ring.close()
    stored = read_points(path)
    slot = victim % min(capacity, len(pts))
    start = RECORD_SIZE * (slot + 1) + offset
    end = min(start + len(garbage), RECORD_SIZE * (slot + 2))
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(garbage[: end - start])
    got = read_points(path)
    assert len(got) >= len(stored) - 1
    it = iter(stored)
    assert all(any(p == q for q in it) for p in got), "a point read back was never written (or out of order)"
    # the ring recovers: the next append is the newest point
    ring = Ring.open(path, capacity)
    new = Point(pts[-1].timestamp + 100, 1.0, 1, 1, 1, 1, 1, 1)
    ring.append(new)
    ring.close()
    after = read_points(path)
    assert after[-1] == new and len(after) <= capacity


@SETTINGS
@given(
    old=points(min_size=1, max_size=1), new=points(min_size=1, max_size=1), cut=st.integers(min_value=1, max_value=RECORD_SIZE - 1)
)
def test_torn_write_reads_old_or_nothing(tmp_path, old, new, cut):
    """A record torn mid-write (new prefix, old suffix) is read as the old point or not at all."""
    path = fresh(tmp_path)
    ring = Ring.open(path, 2)
    ring.append(old[0])
    ring.close()
    new_point = new[0]._replace(timestamp=old[0].timestamp + 1)
    torn = encode_record(2, new_point)[:cut]
    with open(path, "r+b") as f:
        f.seek(RECORD_SIZE)  # slot 0 holds the old point (seq 1)
        f.write(torn)
    got = read_points(path)
    assert got in ([], [old[0]])


def test_seq_zero_or_unwritten_records_are_ignored(tmp_path):
    path = tmp_path / "a.ring"
    Ring.open(path, 3).close()
    assert read_points(path) == []
    # a record with a valid crc but seq 0 (never written by append) is not a point
    body = struct.pack("<dfqqqqiiIHH", 5.0, 1.0, 1, 1, 1, 1, 1, 1, 0, 0, 0)
    with open(path, "r+b") as f:
        f.seek(RECORD_SIZE)
        f.write(body + struct.pack("<I", zlib.crc32(body)))
    assert read_points(path) == []
    assert os.path.getsize(path) == RECORD_SIZE * 4


def _resident_pages(path) -> list[bool]:
    """Which pages of the file are in the page cache (mincore(2) on a private map of it)."""
    import ctypes
    import mmap

    from fleetmon.store import fsutil

    mincore = fsutil._libc_call("mincore")
    size = os.path.getsize(path)
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
    try:
        buf = ctypes.c_char.from_buffer(m)
        vec = (ctypes.c_ubyte * pages)()
        rc = mincore(ctypes.c_void_p(ctypes.addressof(buf)), ctypes.c_size_t(size), vec)
        del buf
        assert rc == 0, os.strerror(ctypes.get_errno())
        return [bool(v & 1) for v in vec]
    finally:
        m.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore(2)")
def test_a_new_mapped_ring_is_in_the_page_cache_whole(tmp_path):
    """Else the head's first move to a new page reads ahead the rest of the file in the writer's
    loop, for every ring at the same tick (0.35 s of CPU at 10,000 agents)."""
    import mmap

    from fleetmon.store import fsutil

    if fsutil.mapped_writes_safe(tmp_path) != "ext4":  # (tmpfs: fallocate'd pages show as not resident)
        pytest.skip("ext4 only")
    for capacity in (1440, 140_000):  # 9 MB: past what one call reads ahead (128 KiB usually, 8 MiB on some disks)
        path = tmp_path / f"{capacity}.ring"
        ring = Ring.open(path, capacity, mapped=True)
        resident = _resident_pages(path)
        ring.close()
        full = os.path.getsize(path) // mmap.PAGESIZE  # (the kernel may leave a partial last page)
        assert full > 20 and all(resident[:full]), f"{capacity}: {resident.count(False)} of {full} pages not resident"


@pytest.mark.parametrize("cpu", [12.3, 0.1, 99.9, 1234.5, 3.0e-5, 0.0])
def test_cpu_comes_back_as_it_was_shown_not_as_its_float32(tmp_path, cpu):
    """cpu is kept as a float32: read back, 12.3 must not become 12.300000190734863 in ``history``
    while ``status`` shows 12.3 for the same sample."""
    path = fresh(tmp_path)
    ring = Ring.open(path, 4)
    ring.append(Point(1_700_000_000.0, cpu, 1, 1, 1, 1, 1, 1))
    ring.close()
    assert read_points(path)[0].cpu == cpu


def test_a_header_with_a_bad_crc_is_corrupt(tmp_path):
    """The header's CRC covers the capacity: a header garbled there (magic intact) is corrupt, not a
    ring of another capacity to migrate (which would drop points)."""
    path = tmp_path / "a.ring"
    ring = Ring.open(path, 10)
    ring.append(Point(1.0, 1.0, 1, 1, 1, 1, 1, 1))
    ring.close()
    data = bytearray(path.read_bytes())
    data[12] ^= 0x01  # capacity 10 -> 11, the CRC left as it was
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptRing):
        read_points(path)
    with pytest.raises(CorruptRing):
        Ring.open(path, 10)


@pytest.mark.parametrize("mapped", [False, True], ids=["pwrite", "mapped"])
def test_newest_follows_every_append_and_a_reopen(tmp_path, mapped):
    """``RingStore.newest`` (how a writer tells a batch sent again from a new one) is the newest
    point's timestamp after each append, not only as found when the ring was opened."""
    store = RingStore(tmp_path, 3, mapped=mapped)
    try:
        assert store.newest("a") == 0.0
        for ts in (10.0, 11.0, 12.0, 13.0, 14.0):  # past the capacity: wrapped
            store.append("a", Point(ts, 1.0, 1, 1, 1, 1, 1, 1))
            assert store.newest("a") == ts
        store.append("a", Point(15.0, None, 1, 1, 1, 1, 1, 1))  # a point with a null metric
        assert store.newest("a") == 15.0
        store.close("a")
        assert store.newest("a") == 15.0
    finally:
        store.close_all()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mapped", [False, True])
def test_more_agents_than_open_rings_reopens_a_ring_without_reading_it_whole(tmp_path, monkeypatch, mapped):
    """With more agents than the store keeps open (an open-file limit below the fleet), every sample
    evicts a ring and opens another: reading each file whole to find its head made that ~45x the
    cost of a sample (10,000 agents under a 4096-file limit: ticks persisted 17 s late and falling
    behind). A ring evicted is opened again where it was, unread, and no point is lost or misplaced."""
    from fleetmon.store import ring as ring_mod

    store = RingStore(tmp_path, capacity=5, max_open=8, mapped=mapped)
    agents = [f"a{i}" for i in range(20)]
    for agent in agents:
        store.append(agent, Point(0.0, 1.0, 1, 1, 1, 1, 1, 1))
    reads = []
    real_read_all = ring_mod._read_all
    monkeypatch.setattr(ring_mod, "_read_all", lambda fd: reads.append(fd) or real_read_all(fd))
    for i in range(1, 8):  # round-robin, as ticks come: every append evicts and opens again
        for agent in agents:
            store.append(agent, Point(float(i), 1.0, i, i, i, i, i, i))
    assert reads == []
    store.close_all()
    for agent in agents:
        assert [p.timestamp for p in read_points(store.path(agent))] == [3.0, 4.0, 5.0, 6.0, 7.0]


@pytest.mark.timeout(30)
def test_a_ring_replaced_or_cut_short_while_evicted_is_read_again(tmp_path):
    """The position kept for an evicted ring is only trusted for the same file, whole: one replaced
    (another inode) or cut short behind the writer's back is opened and read as at start."""
    store = RingStore(tmp_path, capacity=5, max_open=1, mapped=False)
    for i in range(3):
        store.append("a", Point(float(i), 1.0, i, i, i, i, i, i))
    store.append("b", Point(0.0, 1.0, 1, 1, 1, 1, 1, 1))  # evicts a
    other = Ring.open(tmp_path / "other.ring", 5)
    for i in range(4):
        other.append(Point(10.0 + i, 1.0, i, i, i, i, i, i))
    other.close()
    os.replace(tmp_path / "other.ring", store.path("a"))  # a's file replaced (4 points, head at 4)
    store.append("a", Point(20.0, 1.0, 1, 1, 1, 1, 1, 1))
    store.append("b", Point(1.0, 1.0, 1, 1, 1, 1, 1, 1))  # evicts a again
    os.truncate(store.path("b"), RECORD_SIZE)  # b cut short while evicted: the header alone
    store.append("a", Point(21.0, 1.0, 1, 1, 1, 1, 1, 1))
    store.append("b", Point(2.0, 1.0, 1, 1, 1, 1, 1, 1))
    store.close_all()
    assert [p.timestamp for p in read_points(store.path("a"))] == [11.0, 12.0, 13.0, 20.0, 21.0]
    assert [p.timestamp for p in read_points(store.path("b"))] == [2.0]
