"""Wire types shared by the supervisor, the workers and the writer.

Every message is a frozen, tagged msgspec Struct encoded as msgpack. New fields get defaults and go
last. The receiving end decodes with one typed decoder (``ToWorker``, ``ToWriter``, ``ToSupervisor``):
that decoder is the only place where types are checked.
"""

from __future__ import annotations

import struct

import msgspec


class Thresholds(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """Limits for one agent. ``None`` means "not set here" (fall through to the next source);
    0 means off."""

    cpu_threshold: float | None = None
    memory_threshold: int | None = None
    open_files_threshold: int | None = None
    threshold_duration: float | None = None


class BootClock(msgspec.Struct, frozen=True):
    """What process start times are counted from in this boot: the kernel's ``boot_id`` and the boot
    time (seconds since the epoch) as first read in it. ``btime`` in /proc/stat moves with every
    step of the wall clock (NTP, a resumed VM), so a start time computed from a fresh read could
    differ from the one recorded for the same process, and look like pid reuse. The supervisor
    takes it from daemon.json when the boot is the same, so every worker, and every later daemon
    in this boot, counts from the same one."""

    boot_id: str
    boot_time: float


class AgentRef(msgspec.Struct, frozen=True, array_like=True):
    """One agent as a worker needs it: where to find its process. ``known_pid``/``known_start``:
    the process at that pid that was this agent started then (so a stranger there is not it).
    ``last_pid``/``last_start``, for a pidfile agent: the process it ran as when the writer last
    recorded it (status.json), followed while its pidfile names none by a worker that has not
    sampled it yet (just started, or in a daemon started again)."""

    id: str
    pid: int | None = None
    pidfile: str | None = None
    known_pid: int | None = None
    known_start: float | None = None
    last_pid: int | None = None
    last_start: float | None = None


# --- supervisor -> worker -------------------------------------------------------------------------


class Assign(msgspec.Struct, frozen=True, tag=True):
    """The worker's whole shard. Sent when it changes; replaces the previous one."""

    agents: list[AgentRef]
    # Counts the shards sent to one slot: the worker puts the one it is reading in its heartbeat,
    # so that the supervisor knows which agent it holds even after sending it a newer shard.
    generation: int = 0
    # Sample the agents new to this shard now (a registry change seen between ticks, over a second
    # before the next): not when a tick follows (at a tick, on a reshard of the pool, at a start).
    sample_new: bool = False


class Tick(msgspec.Struct, frozen=True, tag=True):
    number: int
    wall: float


class Stop(msgspec.Struct, frozen=True, tag=True):
    pass


class LogLevel(msgspec.Struct, frozen=True, tag=True):
    """Supervisor -> workers and writer: SIGHUP changed ``log_level``."""

    level: str


ToWorker = Assign | Tick | Stop | LogLevel


# --- worker -> writer -----------------------------------------------------------------------------


class Sample(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One reading of one agent. A metric that could not be read is None and named in ``denied``."""

    agent_id: str
    pid: int
    create_time: float
    timestamp: float
    cpu: float | None
    memory_rss: int | None
    memory_vms: int | None
    disk_read_bytes: int | None
    disk_write_bytes: int | None
    open_files: int | None
    num_threads: int | None
    denied: tuple[str, ...] = ()
    # CPU seconds (user + system) the process has used since it started: the counter behind ``cpu``,
    # exported to Prometheus (``fleetmon_agent_cpu_seconds_total``), not kept in the history.
    cpu_seconds: float | None = None


class Gone(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """An agent whose process could not be sampled this tick.

    reason: ``no_process`` (pid does not exist or is a zombie), ``no_pidfile`` (pidfile missing or
    invalid), ``reused`` (the pid now belongs to another process).
    """

    agent_id: str
    pid: int | None
    timestamp: float
    reason: str


class Hello(msgspec.Struct, frozen=True, tag=True):
    """First message on a worker's connection to the writer."""

    worker: int
    pid: int
    token: str


class Batch(msgspec.Struct, frozen=True, tag=True):
    """Everything one worker read in one tick: one message per worker per tick.

    A sample whose every metric was read (the common case) travels packed: ``packed_ids`` names its
    agent (ids joined by newlines, which an id never holds) and ``packed`` holds its numbers, one
    ``PACKED`` record each, in the same order, for the writer to apply a batch at a time
    (``fleetmon.store.fastpath``). ``samples``: the others, and every sample of a batch built by
    hand (``pack_samples`` splits a list; ``all_samples`` joins them again)."""

    worker: int
    tick: int
    started: float
    finished: float
    samples: list[Sample]
    gone: list[Gone] = []
    lost_batches: int = 0
    # Agents new to the worker, sampled between ticks (``tick``: the last one it took): not counted
    # in tick latency or duration.
    early: bool = False
    packed_ids: str = ""
    packed: bytes = b""

    @classmethod
    def sent(
        cls, worker: int, tick: int, started: float, finished: float, samples: list[Sample], gone: list[Gone] | None = None,
        lost_batches: int = 0, early: bool = False,
    ) -> Batch:
        """The batch as a worker sends it: ``samples`` packed where they can be (``pack_samples``)."""
        rest, packed_ids, packed = pack_samples(samples)
        return cls(worker, tick, started, finished, rest, gone or [], lost_batches, early, packed_ids, packed)

    def count(self) -> int:
        """How many samples it holds, packed or not."""
        return len(self.samples) + len(self.packed) // PACKED.size

    def all_samples(self) -> list[Sample]:
        """Its samples, packed or not, as ``Sample`` structs (the packed ones after the others)."""
        if not self.packed:
            return self.samples
        return self.samples + unpack_samples(self.packed_ids, self.packed)


# One packed sample (Batch.packed), little endian: pid, create_time, timestamp, cpu, cpu_seconds,
# memory_rss, memory_vms, disk_read_bytes, disk_write_bytes, open_files, num_threads.
PACKED = struct.Struct("<qddddqqqqii")


def pack_samples(samples: list[Sample]) -> tuple[list[Sample], str, bytes]:
    """``(rest, packed_ids, packed)``: the samples whose every metric was read, packed (see Batch),
    and the others as they are (a metric denied or unreadable, no create time or cpu_seconds, a
    number too big for its field)."""
    rest: list[Sample] = []
    ids: list[str] = []
    out = bytearray(PACKED.size * len(samples))
    pack_into, size, at = PACKED.pack_into, PACKED.size, 0
    for s in samples:
        if not s.create_time or s.denied or s.cpu_seconds is None or None in (
            s.cpu, s.memory_rss, s.memory_vms, s.disk_read_bytes, s.disk_write_bytes, s.open_files, s.num_threads
        ):
            rest.append(s)
            continue
        try:
            pack_into(
                out, at, s.pid, s.create_time, s.timestamp, s.cpu, s.cpu_seconds, s.memory_rss, s.memory_vms,
                s.disk_read_bytes, s.disk_write_bytes, s.open_files, s.num_threads,
            )
        except (struct.error, OverflowError, TypeError):
            rest.append(s)
            continue
        ids.append(s.agent_id)
        at += size
    return rest, "\n".join(ids), bytes(out[:at])


def unpack_samples(packed_ids: str, packed: bytes) -> list[Sample]:
    """The packed samples of a Batch as ``Sample`` structs. Raises ValueError when the two parts do
    not match."""
    ids = packed_ids.split("\n") if packed else []
    if len(packed) != PACKED.size * len(ids):
        raise ValueError(f"a batch's packed samples do not match its ids ({len(packed)} bytes, {len(ids)} ids)")
    return [from_packed(agent_id, row) for agent_id, row in zip(ids, PACKED.iter_unpack(packed), strict=True)]


def from_packed(agent_id: str, row: tuple) -> Sample:
    """The ``Sample`` of one packed record's values (``PACKED``'s order)."""
    pid, ctime, ts, cpu, cpu_s, rss, vms, rd, wr, fds, thr = row
    return Sample(agent_id, pid, ctime, ts, cpu, rss, vms, rd, wr, fds, thr, (), cpu_s)


class Registry(msgspec.Struct, frozen=True, tag=True):
    """Supervisor -> writer: the registered agents (sent when the registry changes)."""

    agents: list[RegisteredAgent]


class RegisteredAgent(msgspec.Struct, frozen=True, array_like=True):
    id: str
    type: str
    pid: int | None
    pidfile: str | None
    thresholds: Thresholds


class WorkerInfo(msgspec.Struct, frozen=True):
    index: int
    pid: int
    agents: int
    restarts: int = 0


class DaemonInfo(msgspec.Struct, frozen=True, tag=True):
    """Supervisor -> writer at every tick: what ``status`` shows as the daemon."""

    supervisor_pid: int
    writer_pid: int
    workers: list[WorkerInfo]
    tick: int
    interval: float
    running: bool = True
    writer_restarts: int = 0
    stalled_pids: list[int] = []
    tick_wall: float = 0.0  # wall-clock time the supervisor sent this tick (for the opt-in timing log)


class Stalled(msgspec.Struct, frozen=True, tag=True):
    """Supervisor -> writer: this agent's pid stalled a worker (or reads normally again)."""

    agent_id: str
    pid: int
    stalled: bool


class ConfigUpdate(msgspec.Struct, frozen=True, tag=True):
    """Supervisor -> writer after SIGHUP reloaded the config: the config's threshold sources,
    ``alert_repeat``, ``alerts_max_size`` and ``keep_removed`` (the registry's own thresholds come
    with ``Registry``). None: unchanged."""

    default: Thresholds
    types: dict[str, Thresholds]
    alert_repeat: float
    alerts_max_size: int | None = None
    keep_removed: float | None = None


class Resend(msgspec.Struct, frozen=True, tag=True):
    """Worker -> writer, after a reconnection: the next ``count`` batches were sent before, to a writer
    that may have taken them in before it died (so their samples may already be in the history)."""

    count: int


ToWriter = Hello | Batch | Registry | DaemonInfo | Stalled | Stop | ConfigUpdate | Resend | LogLevel


# --- writer -> worker -----------------------------------------------------------------------------


class Ack(msgspec.Struct, frozen=True, tag=True):
    """Writer -> worker: it has taken in ``count`` batches on this connection so far (applied to the
    history, which survives the writer's death). The worker sends the others again if it reconnects."""

    count: int


# --- writer -> supervisor -------------------------------------------------------------------------


class Persisted(msgspec.Struct, frozen=True, tag=True):
    """The writer has persisted everything of this tick it received."""

    tick: int
    samples: int


class Retire(msgspec.Struct, frozen=True, tag=True):
    """The writer saw the agent's pid reused by a stranger: workers must not sample it as the agent."""

    agent_id: str
    pid: int
    create_time: float


ToSupervisor = Persisted | Retire
