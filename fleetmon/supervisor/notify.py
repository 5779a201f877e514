"""The sd_notify protocol, spoken directly: datagrams to ``$NOTIFY_SOCKET`` (no dependency).

systemd (``Type=notify``) learns from the supervisor that it is ready, that it is alive and what it
is doing:

- ``READY=1`` once the first tick has been persisted (the writer's ``Persisted`` reached the arbiter);
- ``WATCHDOG=1`` every half ``$WATCHDOG_USEC`` (when ``$WATCHDOG_PID`` is unset or is us), and only
  while ticks are on time: the newest tick was persisted within two intervals plus ``stall_timeout``
  (the time a stuck child takes to be replaced). A stalled pipeline stops feeding the watchdog, so
  systemd restarts the service;
- ``STATUS=`` a one-line summary, when it changes (at most once a second);
- ``RELOADING=1`` ... ``READY=1`` around a SIGHUP reload, ``STOPPING=1`` on shutdown.

Without ``$NOTIFY_SOCKET`` every method is a no-op. Only the supervisor (systemd's main pid) sends:
the variables are removed from the environment so that no child believes it should.
"""

from __future__ import annotations

import os
import socket
import time

from loguru import logger

ENV_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
STATUS_EVERY = 1.0  # seconds between STATUS= updates


def notify_address(value: str | None) -> str | bytes | None:
    """``$NOTIFY_SOCKET`` -> a socket address: a path, or an abstract name (``@name``) as bytes
    with a leading NUL. Anything else (empty, relative, ``vsock:``) is unsupported: None."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(usec: str | None, wd_pid: str | None, pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half the watchdog timeout), or None when the watchdog
    is off or meant for another process."""
    if not usec:
        return None
    if wd_pid:
        try:
            if int(wd_pid) != pid:
                return None
        except ValueError:
            return None
    try:
        n = int(usec)
    except ValueError:
        return None
    if n <= 0:
        return None
    return n / 2e6


def on_time(now: float, persisted_at: float, interval: float, stall_timeout: float) -> bool:
    """Ticks are on time while the newest persisted tick (or the start, before the first one) is at
    most two intervals plus the stall timeout old."""
    return now - persisted_at <= 2 * interval + stall_timeout


class Notifier:
    def __init__(self, address: str | bytes | None, watchdog: float | None = None):
        self.address = address
        self.watchdog = watchdog if address is not None else None
        self.sock: socket.socket | None = None
        self.ready = False
        self.next_ping = 0.0
        self.starved = False  # the watchdog is held back because ticks are late
        self.status = ""
        self.status_at = -1e9
        self._warned = False

    @classmethod
    def from_env(cls, environ=None) -> Notifier:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET")
        address = notify_address(raw)
        watchdog = watchdog_interval(env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID"), os.getpid())
        if environ is None:
            for name in ENV_VARS:
                os.environ.pop(name, None)
        if raw and address is None:
            logger.warning("NOTIFY_SOCKET={!r} is not a unix socket address: not notifying", raw)
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """One datagram of ``KEY=VALUE`` lines. A failure is logged once and never raised."""
        if self.address is None:
            return False
        data = "\n".join(assignments).encode()
        try:
            if self.sock is None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self.sock.setblocking(False)
            self.sock.sendto(data, self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                logger.warning("sd_notify to {!r} failed: {}", self.address, exc)
            return False
        self._warned = False
        return True

    # --- what the arbiter calls ---------------------------------------------------------------

    def poll(self, arbiter, now: float | None = None) -> None:
        """Called every loop turn: READY after the first persisted tick, WATCHDOG while on time,
        STATUS when the summary changes."""
        if self.address is None:
            return
        now = time.monotonic() if now is None else now
        config = arbiter.config
        timely = on_time(now, arbiter.persisted_at, float(config.interval), float(config.stall_timeout))
        extra: list[str] = []
        if not self.ready and arbiter.persisted_tick > 0:
            self.ready = True
            extra.append("READY=1")
        if self.watchdog is not None and now >= self.next_ping:
            self.next_ping = now + self.watchdog
            if timely:
                extra.append("WATCHDOG=1")
                if self.starved:
                    self.starved = False
                    logger.info("ticks are on time again: feeding the watchdog")
            elif not self.starved:
                self.starved = True
                logger.error(
                    "no tick persisted for {:.1f}s: no longer feeding the systemd watchdog", now - arbiter.persisted_at
                )
        status = summary(arbiter, now, timely)
        if extra or (status != self.status and now - self.status_at >= STATUS_EVERY):
            self.status, self.status_at = status, now
            if not self.send(*extra, f"STATUS={status}") and "READY=1" in extra:
                # Sent once only: lost (the socket's queue full, EAGAIN), systemd would wait for it
                # until TimeoutStartSec= and fail the start. Tried again at the next turn.
                self.ready = False

    def wait_hint(self, now: float | None = None) -> float:
        """How long the arbiter may sleep before the next ping is due."""
        if self.watchdog is None:
            return 3600.0
        now = time.monotonic() if now is None else now
        return max(0.0, self.next_ping - now)

    def reloading(self) -> None:
        if self.address is not None:
            usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the config and the registry")

    def reloaded(self, arbiter) -> None:
        if self.address is not None and self.ready:
            self.status_at = -1e9
            self.send("READY=1", f"STATUS={summary(arbiter, time.monotonic(), True)}")

    def stopping(self) -> None:
        if self.address is not None:
            self.send("STOPPING=1", "STATUS=draining and stopping")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def summary(arbiter, now: float, timely: bool = True) -> str:
    """One line for ``systemctl status``."""
    agents = len(arbiter.registry.entries)
    workers = sum(1 for w in arbiter.workers if w.alive)
    if arbiter.persisted_tick <= 0:
        head = "starting: waiting for the first tick to be persisted"
    elif not timely:
        head = f"STALLED: no tick persisted for {now - arbiter.persisted_at:.0f}s (last tick {arbiter.persisted_tick})"
    else:
        head = f"tick {arbiter.persisted_tick} persisted"
    parts = [head, f"{agents} agents", f"{workers}/{len(arbiter.workers)} workers"]
    if arbiter.quarantine:
        parts.append(f"{len(arbiter.quarantine)} quarantined")
    return ", ".join(parts)
