"""sd_notify: READY after the first persisted tick, WATCHDOG cadence and starvation, STOPPING."""

from __future__ import annotations

import os
import signal
import socket
import statistics
import time
from types import SimpleNamespace

import pytest

from fleetmon.supervisor import notify
from tests.helpers import cli_json, register, wait_until
from tests.ops._util import NotifySocket, write_config

# --- pure parts -----------------------------------------------------------------------------------


def test_notify_address_forms():
    assert notify.notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify.notify_address("@abstract/name") == b"\0abstract/name"
    assert notify.notify_address("") is None
    assert notify.notify_address(None) is None
    assert notify.notify_address("relative/path") is None
    assert notify.notify_address("vsock:2:1234") is None


def test_watchdog_interval_is_half_the_timeout_and_honours_watchdog_pid():
    assert notify.watchdog_interval("1000000", None, 42) == 0.5
    assert notify.watchdog_interval("30000000", "42", 42) == 15.0
    assert notify.watchdog_interval("30000000", "43", 42) is None  # meant for another process
    assert notify.watchdog_interval(None, None, 42) is None
    assert notify.watchdog_interval("0", None, 42) is None
    assert notify.watchdog_interval("soon", None, 42) is None


def test_on_time_allows_two_intervals_and_the_stall_timeout():
    assert notify.on_time(now=100.0, persisted_at=75.0, interval=10.0, stall_timeout=5.0)
    assert not notify.on_time(now=100.0, persisted_at=74.9, interval=10.0, stall_timeout=5.0)


def _fake_arbiter(persisted_tick=0, persisted_at=0.0):
    return SimpleNamespace(
        config=SimpleNamespace(interval=1.0, stall_timeout=2.0),
        persisted_tick=persisted_tick,
        persisted_at=persisted_at,
        registry=SimpleNamespace(entries={"a": 1, "b": 2}),
        workers=[SimpleNamespace(alive=True)],
        quarantine={},
    )


def test_without_notify_socket_nothing_is_sent(monkeypatch):
    for name in notify.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    n = notify.Notifier.from_env()
    assert not n.enabled
    n.poll(_fake_arbiter(persisted_tick=3, persisted_at=0.0), now=0.5)
    n.stopping()
    assert n.sock is None
    assert n.wait_hint() >= 3600


def test_notifier_decisions_with_an_injected_clock(tmp_path):
    sink = NotifySocket(tmp_path)
    try:
        n = notify.Notifier.from_env({"NOTIFY_SOCKET": sink.address, "WATCHDOG_USEC": "1000000"})
        arb = _fake_arbiter()
        n.poll(arb, now=0.1)  # not ready yet, but on time since the start: the watchdog is fed
        arb.persisted_tick, arb.persisted_at = 1, 0.2
        n.poll(arb, now=0.3)  # first persisted tick: READY
        n.poll(arb, now=0.4)  # nothing due
        n.poll(arb, now=0.6)  # a ping every 0.5 s
        n.poll(arb, now=4.3)  # 4.1 s since the last persisted tick > 2 x 1 + 2: starved
        n.poll(arb, now=4.9)
        arb.persisted_tick, arb.persisted_at = 2, 5.0
        n.poll(arb, now=5.4)  # on time again
        msgs = [f for _, f in sink.receive(0.3)]
        assert [m.get("WATCHDOG") for m in msgs] == ["1", None, "1", None, "1"]
        assert msgs[1].get("READY") == "1" and "READY" not in msgs[0]
        assert sum("READY" in m for m in msgs) == 1
        assert "STALLED" in msgs[3]["STATUS"]
        assert "tick 2 persisted" in msgs[4]["STATUS"]
        assert all("STATUS" in m for m in msgs)
    finally:
        sink.close()


# --- a real daemon ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_ready_after_first_persisted_tick_watchdog_cadence_and_stopping(daemons, procs, state_dir):
    sink = NotifySocket()  # an abstract address: NOTIFY_SOCKET=@...
    try:
        register(state_dir, "idle", pid=procs.sleeper().pid)
        d = daemons(state_dir, "--interval", "1s", "--workers", "1", env=sink.env(WATCHDOG_USEC="1000000"))
        ready_at, ready = sink.wait_for("READY", timeout=30)
        # READY comes only once the writer has persisted the first tick: its sample is on disk.
        agents = {a["id"]: a for a in cli_json("status", state_dir=state_dir)["agents"]}
        assert agents["idle"]["last_sample"] is not None, agents
        assert d.daemon_json() is not None
        assert "persisted" in ready.get("STATUS", ""), ready
        assert all("READY" not in f for t, f in sink.messages if t < ready_at)
        sink.receive(3.5)
        pings = sink.times("WATCHDOG", after=ready_at)
        assert len(pings) >= 5, sink.messages
        gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
        assert max(gaps) < 0.9, gaps  # well inside the 1 s watchdog timeout
        assert 0.35 <= statistics.median(gaps) <= 0.7, gaps  # every half WATCHDOG_USEC
        assert any("tick" in f.get("STATUS", "") for _, f in sink.messages)
        # No child notifies: the supervisor removed NOTIFY_SOCKET from its environment.
        d.proc.send_signal(signal.SIGTERM)
        sink.wait_for("STOPPING", timeout=20)
        assert d.proc.wait(timeout=30) == 0
        assert sum("READY" in f for _, f in sink.messages) == 1
    finally:
        sink.close()


@pytest.mark.slow
def test_a_stalled_writer_stops_the_watchdog_until_ticks_flow_again(daemons, procs, state_dir, tmp_path):
    # interval 0.5 s, stall_timeout 4 s: ticks are late after 2 x 0.5 + 4 = 5 s without a persisted
    # tick; the supervisor would replace the writer only after 3 x 4 = 12 s, so SIGCONT at ~9 s
    # brings the same writer back.
    sink = NotifySocket(tmp_path)
    writer = None
    try:
        register(state_dir, "idle", pid=procs.sleeper().pid)
        config = write_config(tmp_path / "fleetmon.toml", interval="500ms", stall_timeout="4s", workers=1)
        d = daemons(state_dir, "--config", str(config), env=sink.env(WATCHDOG_USEC="1000000"))
        sink.wait_for("READY", timeout=30)
        sink.receive(1.0)
        assert sink.times("WATCHDOG"), sink.messages
        writer = d.daemon_json()["writer_pid"]
        os.kill(writer, signal.SIGSTOP)
        stopped = time.monotonic()
        sink.receive(9.0)
        late = sink.times("WATCHDOG", after=stopped + 6.0)
        assert not late, f"WATCHDOG {[round(t - stopped, 2) for t in late]}s after the writer stopped"
        assert sink.times("WATCHDOG", after=stopped), "the watchdog should be fed until ticks are late"
        assert any("STALLED" in f.get("STATUS", "") for t, f in sink.messages if t > stopped)
        os.kill(writer, signal.SIGCONT)
        resumed, same_writer, writer = time.monotonic(), writer, None
        wait_until(lambda: sink.receive(0.2) is not None and sink.times("WATCHDOG", after=resumed), 10, what="WATCHDOG again")
        assert d.proc.poll() is None
        assert d.daemon_json()["writer_pid"] == same_writer  # the same writer, not a replacement
        assert "no longer feeding the systemd watchdog" in d.log()
        assert "on time again" in d.log()
    finally:
        if writer is not None:
            try:
                os.kill(writer, signal.SIGCONT)
            except ProcessLookupError:
                pass
        sink.close()


def test_send_failure_is_logged_once_and_not_raised(tmp_path):
    path = tmp_path / "gone.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.close()
    os.unlink(path)
    n = notify.Notifier(str(path), watchdog=0.5)
    assert n.send("READY=1") is False
    assert n.send("READY=1") is False


def test_ready_is_sent_again_when_its_datagram_could_not_be_sent(tmp_path):
    """READY=1 goes out once; a send that fails (the notify socket's queue full: EAGAIN on the
    non-blocking socket) must not lose it, or systemd waits for it until TimeoutStartSec."""
    path = tmp_path / "late.sock"
    n = notify.Notifier.from_env({"NOTIFY_SOCKET": str(path)})
    arb = _fake_arbiter(persisted_tick=1, persisted_at=0.0)
    n.poll(arb, now=0.1)  # nothing listens yet: the send fails
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(str(path))
    sink.settimeout(1.0)
    try:
        n.poll(arb, now=1.5)
        assert b"READY=1" in sink.recv(4096).split(b"\n")
    finally:
        sink.close()
        n.close()
