"""A worker process: samples its shard at every tick and sends one batch per tick to the writer.

Channels: a control socket from the supervisor (Assign, Tick, Stop), a connection of its own to the
writer's listener (re-established if the writer restarts; batches wait in a bounded outbox meanwhile),
and a heartbeat array in shared memory, apart from the data, that says which tick it is on and which
pid it has in hand, so the supervisor can see a stall even when the data channel is busy.
"""

from __future__ import annotations

import importlib
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable

import msgspec
from loguru import logger

from fleetmon import channel, logs, wire
from fleetmon.workers.sampler import Sampler

# Heartbeat slots (a multiprocess RawArray of doubles, written only by the worker).
HB_TICK_STARTED, HB_TICK_DONE, HB_PROGRESS, HB_PID, HB_INDEX, HB_GEN, HB_SIZE = 0, 1, 2, 3, 4, 5, 6
IDLE_BEAT = 1.0  # seconds: between ticks, HB_PROGRESS is refreshed at least this often

def load_hook(spec: str | None) -> Callable[[str, int | None], None] | None:
    """``module:function`` -> the function; used by tests to inject a slow or blocking read."""
    if not spec:
        return None
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _die_with_parent(parent: int) -> None:
    """Ask the kernel to kill us when the supervisor dies (Linux); the loop also checks getppid()."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


def run(
    index: int,
    control: socket.socket,
    heartbeat,
    writer_address: str,
    token: str,
    parent_pid: int,
    sampler_hook: str | None = None,
    max_outbox: int = 64 * 1024 * 1024,
    reader: str = "auto",
    boot_time: float | None = None,
) -> None:
    """Entry point of a worker process. ``boot_time``: what process start times count from (the
    supervisor's ``wire.BootClock``)."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    terminated: list[int] = []
    # SIGTERM (systemd stopping the whole group, or the supervisor escalating): finish the tick in
    # hand, hand its batch over, exit.
    signal.signal(signal.SIGTERM, lambda s, f: terminated.append(s))
    log = logger.bind(worker=index)
    hook = load_hook(sampler_hook)
    encoder = msgspec.msgpack.Encoder()
    decoder = msgspec.msgpack.Decoder(wire.ToWorker)
    ctl = channel.FramedConn(control)
    hello = encoder.encode(wire.Hello(index, os.getpid(), token))
    acks = msgspec.msgpack.Decoder(wire.Ack)

    def ack_count(frame: bytes) -> int | None:
        try:
            return acks.decode(frame).count
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None

    # Batches are kept until the writer acknowledges them, and sent again to a restarted writer.
    link = channel.Link(
        writer_address, lambda: [hello], max_outbox, acks=ack_count, resend_marker=lambda n: encoder.encode(wire.Resend(n))
    )
    sampler = Sampler(reader=reader, boot_time=boot_time)
    agents: list[wire.AgentRef] = []
    last_tick: wire.Tick | None = None
    sel = selectors.DefaultSelector()
    sel.register(ctl.sock, selectors.EVENT_READ)
    link.pump()
    log.debug("worker {} started (pid {}, reading processes with {})", index, os.getpid(), sampler.reader)
    while not terminated:
        if os.getppid() != parent_pid:
            log.warning("supervisor is gone: worker {} exits", index)
            os._exit(1)
        heartbeat[HB_PROGRESS] = time.monotonic()  # alive while idle (a stopped worker stops beating)
        busy = link.pending or link.want_write or (link.unacked and link.conn is None)
        events = sel.select(timeout=0.2 if busy else IDLE_BEAT)
        link.pump()
        link.recv()  # acknowledgements (and an EOF from a writer that died: reconnect, send again)
        if not events:
            continue
        try:
            frames = ctl.recv()
        except channel.ChannelClosed:
            log.debug("control channel closed: worker {} exits", index)
            break
        tick: wire.Tick | None = None
        stop = False
        added: set[str] = set()
        for frame in frames:
            msg = decoder.decode(frame)
            if isinstance(msg, wire.Assign):
                if msg.sample_new:
                    added |= {a.id for a in msg.agents} - {a.id for a in agents}
                agents = msg.agents
                heartbeat[HB_GEN] = msg.generation  # (HB_INDEX indexes this shard from now on)
                sampler.forget_except({a.id for a in agents})
            elif isinstance(msg, wire.Tick):
                tick = msg  # ticks that queued up while we were busy coalesce into the newest
            elif isinstance(msg, wire.Stop):
                stop = True
            elif isinstance(msg, wire.LogLevel):
                logs.set_level(msg.level, f"worker {index} (pid {os.getpid()}) logs at {msg.level} from now on")
        if tick is not None:
            batch = sample_tick(index, tick, agents, sampler, heartbeat, hook, link.lost)
            link.send(encoder.encode(batch))
            last_tick = tick
        elif added:
            # Agents registered between ticks are sampled at once (the supervisor says so when the
            # next tick is over a second away): not `not_running` for up to an interval (60 s by
            # default), and their first cpu known a tick sooner. The batch carries the last tick
            # taken (none yet: 0), which it does not complete.
            batch = sample_tick(index, last_tick or wire.Tick(0, 0.0), agents, sampler, heartbeat, hook, link.lost, only=added)
            if batch.samples or batch.packed or batch.gone:
                link.send(encoder.encode(batch))
        if stop:
            link.flush_until(time.monotonic() + 5.0)
            break
    if terminated:
        link.flush_until(time.monotonic() + 2.0)
    ctl.close()
    link.close()


def sample_tick(index, tick: wire.Tick, agents, sampler: Sampler, heartbeat, hook, lost: int, only: set[str] | None = None) -> wire.Batch:
    """Sample every agent of the shard once, updating the heartbeat before each read. ``only``: just
    these agents, between ticks (an ``early`` batch of ``tick``, the last one taken). The heartbeat
    says a read is in progress all the same (started past done), so that a read stuck there is a
    stall that names its agent, as in a tick; no tick is counted done for it."""
    heartbeat[HB_TICK_STARTED] = tick.number if only is None else heartbeat[HB_TICK_DONE] + 1
    heartbeat[HB_PROGRESS] = time.monotonic()
    started = time.time()
    samples: list[wire.Sample] = []
    gone: list[wire.Gone] = []
    sample = sampler.sample
    for i, ref in enumerate(agents):
        if only is not None and ref.id not in only:
            continue
        heartbeat[HB_PID] = ref.pid or -1
        heartbeat[HB_INDEX] = i
        heartbeat[HB_PROGRESS] = time.monotonic()
        if hook is not None:
            hook(ref.id, ref.pid)
        result = sample(ref)
        if type(result) is wire.Sample:
            samples.append(result)
        else:
            gone.append(result)
    heartbeat[HB_PID] = 0
    heartbeat[HB_INDEX] = -1
    heartbeat[HB_PROGRESS] = time.monotonic()
    if only is None:
        heartbeat[HB_TICK_DONE] = tick.number
    else:
        heartbeat[HB_TICK_STARTED] = heartbeat[HB_TICK_DONE]
    return wire.Batch.sent(index, tick.number, started, time.time(), samples, gone, lost, early=only is not None)
