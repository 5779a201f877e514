"""The writer's batch-at-a-time path for the common sample, beside ``Fleet.on_sample``.

Most samples change nothing but their agent's last sample and one record in its ring: the agent's
known process, every metric read, no alert open and no value over a limit, its ring open, mapped,
and the record landing on the page written to last. ``Columns`` keeps, for each agent that
``Fleet.on_sample`` left in that state, what deciding it takes (pid, create time, limits, the ring's
head and sequence number) in arrays, one slot per agent; ``apply`` then takes a worker's packed
samples (``wire.Batch.packed``) a batch at a time: the checks are array comparisons, the records are
built and their CRC32s computed in one pass, and one Python step per sample copies a record into its
ring's map. Any sample that fails a check goes through ``Fleet.on_sample`` as before, which is what
decides everything else.

The arrays are a cache of the agent's and the ring's state, valid while the slot is ``ok``. A slot
becomes ok only at the end of ``Fleet.on_sample`` (``sync``), and anything else that changes an
agent or closes its ring clears it (``invalidate``) first: the next sample goes through
``on_sample`` and makes it ok again. ``check`` (tests) compares every ok slot with the objects.

Written records are the bytes ``Ring.append_read`` writes for the same sample, and the agent's last
sample the same numbers (``Agent.last`` builds it from ``last`` when the slot holds the newest).
On 2 cores, the 2 workers share them with the writer: what the writer spends per sample is what
keeps 2 workers from doubling the throughput of 1 (benchmarks/scaling.py, benchmarks/writer_paths.py).
"""

from __future__ import annotations

import threading
import zlib

import numpy as np

from fleetmon import wire
from fleetmon.store import ring as rings

PACKED = np.dtype(
    [
        ("pid", "<i8"), ("create_time", "<f8"), ("timestamp", "<f8"), ("cpu", "<f8"), ("cpu_seconds", "<f8"),
        ("memory_rss", "<i8"), ("memory_vms", "<i8"), ("disk_read_bytes", "<i8"), ("disk_write_bytes", "<i8"),
        ("open_files", "<i4"), ("num_threads", "<i4"),
    ]
)
RECORD = np.dtype(
    [
        ("timestamp", "<f8"), ("cpu", "<f4"), ("memory_rss", "<i8"), ("memory_vms", "<i8"), ("disk_read_bytes", "<i8"),
        ("disk_write_bytes", "<i8"), ("open_files", "<i4"), ("num_threads", "<i4"), ("seq", "<u4"), ("mask", "<u2"),
        ("pad", "<u2"), ("crc", "<u4"),
    ]
)
assert PACKED.itemsize == wire.PACKED.size and RECORD.itemsize == rings.RECORD_SIZE
_METRICS = ("timestamp", "cpu", "memory_rss", "memory_vms", "disk_read_bytes", "disk_write_bytes", "open_files", "num_threads")
_BODY = rings.RECORD_SIZE - 4  # what the CRC covers
_OFF = np.iinfo(np.int64).max  # an integer limit that is off: no value is over it
_F32_MAX = float(np.finfo(np.float32).max)  # a cpu beyond it does not pack as a float32 (struct raises)


_ARRAYS = {
    "ok": bool,  # the slot holds its agent's and ring's state, and the agent's next sample may take the fast path
    "pid": np.int64,
    "create_time": np.float64,
    "cpu_max": np.float64,
    "rss_max": np.int64,
    "fds_max": np.int64,
    "head": np.int64,
    "seq": np.int64,
    "capacity": np.int64,
    "page": np.int64,
    "fresh": bool,  # ``last`` holds the agent's newest sample (not ``Agent._last``)
    "last": PACKED,
}


class Columns:
    """Per-agent arrays, one slot per agent seen by ``sync`` (freed by ``free``)."""

    def __init__(self, tolerance: float, slots: int = 256):
        self.tolerance = tolerance  # of create times (Fleet's IDENTITY_TOLERANCE)
        self.slot_of: dict[str, int] = {}
        self.ids: list[str | None] = []  # the agent of each slot
        self.rings: list[rings.Ring | None] = []
        self._free: list[int] = []
        self._used = 0
        # Held while rows of ``last`` are written and while one is read: numpy copies a batch's rows
        # without the GIL, and the HTTP thread reads ``Agent.last`` (a row half written is half one
        # sample, half the one before).
        self.lock = threading.Lock()
        self._resize(slots)

    def _resize(self, n: int) -> None:
        for name, dtype in _ARRAYS.items():
            new = np.zeros(n, dtype)
            old = getattr(self, name, None)
            if old is not None:
                new[: len(old)] = old
            setattr(self, name, new)
        self.rings += [None] * (n - len(self.rings))
        self.ids += [None] * (n - len(self.ids))

    # --- the cache --------------------------------------------------------------------------------

    def sync(self, a, ring: rings.Ring | None) -> None:
        """After ``Fleet.on_sample`` applied a sample of ``a``: its slot made ok if the next sample
        may take the fast path, with the state that takes; else left not ok."""
        slot = a.slot
        if not (
            a.registered and not a.alerts and (a.status == "running" or a.status == "stalled")
            and a.pid is not None and a.create_time is not None and ring is not None and ring.map is not None
        ):
            if slot >= 0:
                self.ok[slot] = False
            return
        if slot < 0:
            slot = self._take(a)
        self.pid[slot] = a.pid
        self.create_time[slot] = a.create_time
        self.cpu_max[slot] = a.cpu_max
        self.rss_max[slot] = _int_limit(a.rss_max)
        self.fds_max[slot] = _int_limit(a.fds_max)
        self.head[slot], self.seq[slot], self.capacity[slot], self.page[slot] = ring.head, ring.seq, ring.capacity, ring.page
        self.rings[slot] = ring
        self.ok[slot] = True

    def invalidate(self, a) -> None:
        if a.slot >= 0:
            self.ok[a.slot] = False

    def invalidate_all(self) -> None:
        self.ok[:] = False

    def _take(self, a) -> int:
        if self._free:
            slot = self._free.pop()
        else:
            if self._used == len(self.ok):
                self._resize(2 * len(self.ok))
            slot, self._used = self._used, self._used + 1
        self.slot_of[a.id] = slot
        self.ids[slot] = a.id
        a.slot, a.cols = slot, self
        return slot

    def free(self, a) -> None:
        """``a`` is dropped from the fleet: its slot is given to the next agent that needs one."""
        slot = a.slot
        if slot < 0:
            return
        if a.cols is self:
            a.last = a.last  # (its newest sample, kept on the object)
        self.ok[slot] = self.fresh[slot] = False
        self.rings[slot] = self.ids[slot] = None
        del self.slot_of[a.id]
        self._free.append(slot)
        a.slot, a.cols = -1, None

    def fresh_rows(self) -> tuple[np.ndarray, list[tuple[str, tuple]]]:
        """The slots whose ``last`` holds their agent's newest sample, and ``(agent id, row)`` for each:
        for the caller to keep on the agent, then ``fresh[slots] = False`` (the writer's thread)."""
        idx = np.flatnonzero(self.fresh)
        rows = self.last[idx].tolist() if len(idx) else []
        ids = self.ids
        return idx, [(ids[slot], row) for slot, row in zip(idx.tolist(), rows, strict=True)]

    def last_sample(self, agent_id: str, slot: int) -> wire.Sample:
        with self.lock:
            row = self.last[slot].item()
        return wire.from_packed(agent_id, row)

    # --- the fast path ----------------------------------------------------------------------------

    def apply(self, packed_ids: str, packed: bytes) -> np.ndarray:
        """Apply what may be of a batch's packed samples. Returns the indexes (into the batch) of
        the samples left for ``Fleet.on_sample``. Raises ValueError on a malformed batch."""
        ids = packed_ids.split("\n") if packed else []
        arr = np.frombuffer(packed, PACKED)
        if len(arr) != len(ids):
            raise ValueError(f"a batch's packed samples do not match its ids ({len(packed)} bytes, {len(ids)} ids)")
        slot_of = self.slot_of
        slots = np.array([slot_of.get(i, -1) for i in ids], np.intp)
        known = slots >= 0
        s = np.where(known, slots, 0)
        cpu = arr["cpu"]
        ok = (
            known & self.ok[s] & (self.pid[s] == arr["pid"])
            & (np.abs(self.create_time[s] - arr["create_time"]) <= self.tolerance)
            & ~(cpu > self.cpu_max[s]) & ~(arr["memory_rss"] > self.rss_max[s]) & ~(arr["open_files"] > self.fds_max[s])
            & ~(np.abs(cpu) > _F32_MAX)
        )
        head = self.head[s]
        at = rings.RECORD_SIZE * (head + 1)  # (record 0 is the header)
        ok &= (head != 0) & ((at >> rings._PAGE_SHIFT) == self.page[s]) & (self.seq[s] + 1 < rings.SEQ_MAX)
        take = np.flatnonzero(ok)
        if len(take):
            # An agent twice in one batch: one at a time, in order. Any two of its samples, not only two
            # the fast path would take: one it takes must not be written before an earlier one that
            # ``on_sample`` applies (a value over a limit, say, and the next back under it).
            if len(arr) > 1 and np.bincount(slots[known]).max() > 1:
                return np.arange(len(arr))
            self._write(s[take], arr[take], at[take], head[take])
        return np.flatnonzero(~ok)

    def _write(self, s: np.ndarray, p: np.ndarray, at: np.ndarray, head: np.ndarray) -> None:
        n = len(s)
        seq = self.seq[s] + 1
        new_head = head + 1
        new_head[new_head >= self.capacity[s]] = 0
        rec = np.zeros(n, RECORD)
        for name in _METRICS:
            rec[name] = p[name]
        rec["seq"] = seq
        raw = memoryview(rec).cast("B")
        crc32, size = zlib.crc32, rings.RECORD_SIZE
        rec["crc"] = [crc32(raw[o : o + _BODY]) for o in range(0, n * size, size)]
        ring_of = self.rings
        try:
            for slot, a, o, sq, h, ts in zip(
                s.tolist(), at.tolist(), range(0, n * size, size), seq.tolist(), new_head.tolist(), p["timestamp"].tolist(),
                strict=True,
            ):
                ring = ring_of[slot]
                ring.map[a : a + size] = raw[o : o + size]
                ring.seq, ring.head, ring.last_ts = sq, h, ts
        except BaseException:
            self.ok[s] = False  # (some written, the arrays not: on_sample takes them from the rings)
            raise
        self.seq[s] = seq
        self.head[s] = new_head
        with self.lock:
            self.last[s] = p
        self.fresh[s] = True

    # --- tests ------------------------------------------------------------------------------------

    def check(self, fleet) -> None:
        """Every ok slot holds what its agent and ring are (AssertionError if not)."""
        for agent_id, slot in self.slot_of.items():
            a = fleet.agents.get(agent_id)
            assert a is not None and a.slot == slot and a.cols is self, agent_id
            if not self.ok[slot]:
                continue
            ring = fleet.rings.opened.get(agent_id)
            assert ring is not None and ring is self.rings[slot] and ring.map is not None, agent_id
            assert a.registered and not a.alerts and a.status in ("running", "stalled"), agent_id
            assert (self.pid[slot], self.create_time[slot]) == (a.pid, a.create_time), agent_id
            assert (self.cpu_max[slot], self.rss_max[slot], self.fds_max[slot]) == (
                a.cpu_max, _int_limit(a.rss_max), _int_limit(a.fds_max)
            ), agent_id
            assert (self.head[slot], self.seq[slot], self.capacity[slot], self.page[slot]) == (
                ring.head, ring.seq, ring.capacity, ring.page
            ), agent_id


def _int_limit(value: float) -> int:
    """An integer limit as an int64 (off, infinity: the largest, which no value is over)."""
    if value == float("inf"):
        return _OFF
    if value == float("-inf"):
        return -_OFF - 1
    return int(value)
