"""``fleetmon history ID --plot FILE.png``: alert periods, threshold lines, and a real PNG."""

from __future__ import annotations

import struct
from types import SimpleNamespace as NS

import pytest

from fleetmon.units import rfc3339
from fleetmon.wire import Thresholds
from tests.helpers import cli, cli_json, register, wait_until
from tests.ops._util import daemon_env, hog

pytest.importorskip("matplotlib")

from fleetmon.supervisor import plot  # noqa: E402

T = 1_800_000_000.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _ev(ts, resource, state, since, threshold=50.0):
    return NS(timestamp=rfc3339(ts), resource=resource, state=state, since=rfc3339(since), threshold=threshold)


def test_alert_periods_from_events_and_open_alerts():
    events = [
        _ev(T + 10, "cpu", "warning", T + 10),
        _ev(T + 20, "cpu", "error", T + 10),
        _ev(T + 30, "cpu", "ok", T + 10),
        _ev(T + 50, "memory", "error", T + 40),  # opened (warning) at T+40, error at T+50, still open
    ]
    spans = plot.alert_periods(events, [NS(resource="open_files", state="warning", since=rfc3339(T - 100))], T, T + 60)
    assert spans["cpu"] == [(T + 10, T + 20, "warning"), (T + 20, T + 30, "error")]
    assert spans["memory"] == [(T + 40, T + 50, "warning"), (T + 50, T + 60, "error")]
    assert spans["open_files"] == [(T, T + 60, "warning")]  # clipped to the window


def test_threshold_lines_from_registry_and_events():
    lines = plot.threshold_lines(
        Thresholds(cpu_threshold=80, memory_threshold=0, open_files_threshold=100),
        [_ev(T, "cpu", "error", T, 90.0), _ev(T, "memory", "warning", T, float(1 << 30))],
    )
    assert lines == {"cpu": {80.0, 90.0}, "open_files": {100.0}, "memory": {float(1 << 30)}}
    assert plot.threshold_lines(None, []) == {}


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.slow
def test_history_plot_writes_a_png(daemons, procs, state_dir, tmp_path):
    register(state_dir, "busy", pid=hog(procs).pid, cpu=20, **{"for": "1s"})
    d = daemons(state_dir, "--interval", "250ms", "--workers", "1", env=daemon_env())
    wait_until(lambda: any(e["state"] == "error" for e in cli_json("alerts", state_dir=state_dir)["events"]), 20, what="an error alert")
    d.wait_tick(d.daemon_json()["tick"] + 2)
    assert d.stop() == 0
    out = tmp_path / "busy.png"
    p = cli("history", "busy", "--since", "10m", "--plot", out, state_dir=state_dir)
    assert p.returncode == 0, p.stderr
    assert str(out) in p.stdout
    data = out.read_bytes()
    assert _png_size(data) == (1100, 900)
    assert len(data) > 20_000  # four panels with data, shading and lines; not an empty canvas
    # --every and an agent without samples still draw; an unknown agent draws nothing (exit 2).
    register(state_dir, "fresh", pid=procs.sleeper().pid)
    for args, name in ((["busy", "--every", "1s"], "every.png"), (["fresh"], "fresh.png")):
        p = cli("history", *args, "--plot", tmp_path / name, state_dir=state_dir)
        assert p.returncode == 0, p.stderr
        assert (tmp_path / name).read_bytes()[:8] == PNG_SIGNATURE
    p = cli("history", "nobody", "--plot", tmp_path / "nobody.png", state_dir=state_dir)
    assert p.returncode == 2 and not (tmp_path / "nobody.png").exists()
