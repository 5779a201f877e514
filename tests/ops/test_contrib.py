"""The shipped process-manager files: the systemd unit verifies, and supervisord runs fleetmon from
the example and stops it with exit status 0."""

from __future__ import annotations

import configparser
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fleetmon.supervisor import registry as reg
from tests.helpers import register, wait_until
from tests.ops._util import REPO_ROOT

UNIT = REPO_ROOT / "contrib" / "systemd" / "fleetmon.service"
PROGRAM = REPO_ROOT / "contrib" / "supervisord" / "fleetmon.conf"
LISTENER = REPO_ROOT / "contrib" / "supervisord" / "fleetmon-agents.conf"


def _fleetmon_script() -> str | None:
    """The installed ``fleetmon`` console script (a real file, not a pyenv shim)."""
    candidate = Path(sys.executable).parent / "fleetmon"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("fleetmon")
    return os.path.realpath(found) if found else None


def _unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(UNIT.read_text())
    return parser


def test_unit_declares_what_the_daemon_relies_on():
    service = _unit()["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["ExecStart"].startswith("/usr/local/bin/fleetmon run")
    assert int(service["WatchdogSec"]) > 0 and service["Restart"] == "on-failure"
    assert service["StateDirectory"] == "fleetmon" and "Environment" in service
    assert "FLEETMON_STATE_DIR=%S/fleetmon" in UNIT.read_text()
    assert service["KillMode"] == "mixed" and int(service["TimeoutStopSec"]) >= 30
    assert service["ProtectSystem"] == "strict" and service["ProtectHome"] == "read-only"
    assert service["NoNewPrivileges"] == "yes" and service["PrivateTmp"] == "yes"
    assert service.get("ProtectProc", "default") == "default" and service.get("ProcSubset", "all") == "all"
    assert "CAP_SYS_PTRACE" in service["CapabilityBoundingSet"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_finds_no_error(tmp_path):
    script = _fleetmon_script()
    assert script, "the fleetmon script is not installed"
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/fleetmon " in text
    unit = tmp_path / "fleetmon.service"
    unit.write_text(text.replace("ExecStart=/usr/local/bin/fleetmon ", f"ExecStart={script} "))
    p = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (p.stdout + p.stderr).splitlines() if "fleetmon.service" in line]
    assert p.returncode == 0 and not complaints, p.stdout + p.stderr


SUPERVISORD_CONF = """\
[unix_http_server]
file={sock}

[supervisord]
logfile={dir}/supervisord.log
pidfile={dir}/supervisord.pid
childlogdir={dir}
nodaemon=true
loglevel=info

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{sock}

[include]
files = {dir}/programs/*.conf
"""


def _program_for_test(script: str, state_dir: Path, log: Path) -> str:
    """The shipped section with the installed script, a test state dir, a test log and a fast tick;
    every other line as shipped."""
    text = PROGRAM.read_text()
    replaced = {}

    def sub(key: str, value: str) -> None:
        nonlocal text
        text, n = re.subn(rf"^{key}=.*$", f"{key}={value}", text, flags=re.M)
        replaced[key] = n

    sub("command", f"{script} run --interval 500ms --workers 1")
    sub("environment", f'FLEETMON_STATE_DIR="{state_dir}",PYTHONPATH="{REPO_ROOT}"')
    sub("stdout_logfile", str(log))
    sub("user", "")
    text = text.replace("\nuser=\n", "\n")
    assert replaced == {"command": 1, "environment": 1, "stdout_logfile": 1, "user": 1}, replaced
    return text


@contextlib.contextmanager
def _supervisord(procs, programs: dict[str, str]):
    """A real supervisord (nodaemon, in a fresh directory) running ``programs`` ({name: conf
    section}); yields (its directory, supervisorctl). Stopped with SIGTERM, which stops them all."""
    run_dir = Path(tempfile.mkdtemp(prefix="fm-sv-"))  # short: a unix socket path is at most 107 bytes
    try:
        (run_dir / "programs").mkdir()
        for name, text in programs.items():
            (run_dir / "programs" / f"{name}.conf").write_text(text)
        conf = run_dir / "supervisord.conf"
        conf.write_text(SUPERVISORD_CONF.format(dir=run_dir, sock=run_dir / "sv.sock"))
        sv = procs.start([sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def ctl(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), *args],
                capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
            )

        try:
            yield run_dir, ctl
        finally:
            sv.send_signal(signal.SIGTERM)
            sv.wait(timeout=30)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.mark.slow
def test_fleetmon_under_a_real_supervisord_stops_with_exit_status_0(procs, state_dir, tmp_path):
    pytest.importorskip("supervisor")
    program = PROGRAM.read_text()
    assert "[program:fleetmon]" in program and re.search(r"^stopsignal=TERM$", program, re.M)
    assert int(re.search(r"^stopwaitsecs=(\d+)$", program, re.M).group(1)) >= 30
    script = _fleetmon_script()
    assert script, "the fleetmon script is not installed"
    register(state_dir, "idle", pid=procs.sleeper().pid)
    log = tmp_path / "fleetmon.log"
    with _supervisord(procs, {"fleetmon": _program_for_test(script, state_dir, log)}) as (run_dir, ctl):
        wait_until(lambda: "RUNNING" in ctl("status", "fleetmon").stdout, 30, what="fleetmon RUNNING under supervisord")
        daemon = state_dir / "daemon.json"
        wait_until(lambda: daemon.exists() and '"persisted_tick":' in daemon.read_text() and '"persisted_tick":null' not in daemon.read_text(), 30, what="a persisted tick")
        pid = int(re.search(r"pid (\d+)", ctl("status", "fleetmon").stdout).group(1))
        stop = ctl("stop", "fleetmon")
        assert "stopped" in stop.stdout, stop.stdout + stop.stderr
        sv_log = (run_dir / "supervisord.log").read_text()
        assert "stopped: fleetmon (exit status 0)" in sv_log, sv_log
        assert "STOPPED" in ctl("status", "fleetmon").stdout
        assert "fleetmon stopped" in log.read_text()  # drained cleanly
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), 10, what="the daemon to be gone")


def _listener_for_test(script: str, state_dir: Path, log: Path) -> str:
    """The shipped listener section with the installed script, a test state dir and log."""
    text = LISTENER.read_text()
    text, n = re.subn(r"^command=\S+ ", f"command={script} ", text, flags=re.M)
    assert n == 1
    text, n = re.subn(r"^environment=.*$", f'environment=FLEETMON_STATE_DIR="{state_dir}",PYTHONPATH="{REPO_ROOT}"', text, flags=re.M)
    assert n == 1
    text, n = re.subn(r"^stderr_logfile=.*$", f"stderr_logfile={log}", text, flags=re.M)
    assert n == 1
    return re.sub(r"^user=.*\n", "", text, flags=re.M)


SLEEPER = "[program:{name}]\ncommand=sleep 100000\nstartsecs=1\nstopsignal=KILL\n{extra}"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_listener_registers_the_programs_supervisord_starts_and_follows_restarts(procs, state_dir, tmp_path):
    pytest.importorskip("supervisor")
    script = _fleetmon_script()
    assert script, "the fleetmon script is not installed"
    assert re.search(r"^events=PROCESS_STATE_RUNNING$", LISTENER.read_text(), re.M)
    log = tmp_path / "listener.log"
    programs = {
        "listener": _listener_for_test(script, state_dir, log),
        "agent-1": SLEEPER.format(name="agent-1", extra=""),
        "agent-pool": SLEEPER.format(name="agent-pool", extra="numprocs=2\nprocess_name=%(program_name)s_%(process_num)02d\n"),
        "other": SLEEPER.format(name="other", extra=""),
    }
    with _supervisord(procs, programs) as (_run_dir, ctl):
        names = {"agent-1": "agent-1", "agent-pool.agent-pool_00": "agent-pool:agent-pool_00", "agent-pool.agent-pool_01": "agent-pool:agent-pool_01"}

        def pids() -> dict[str, int]:
            out = {}
            for agent, name in names.items():
                m = re.search(r"RUNNING\s+pid (\d+)", ctl("status", name).stdout)
                if m:
                    out[agent] = int(m.group(1))
            return out

        def registered() -> dict[str, int]:
            found, errors = reg.read_all(state_dir / "registry")
            assert errors == {}
            return {k: e.pid for k, e in found.items()}

        wait_until(lambda: len(pids()) == 3 and registered() == pids(), 60, what=f"the three agents registered (log: {log})")
        assert "other" not in registered()
        before = pids()["agent-1"]
        ctl("restart", "agent-1")
        wait_until(lambda: pids().get("agent-1", before) != before and registered() == pids(), 30, what="agent-1's new pid registered")
        assert f"registered agent-1 (pid {pids()['agent-1']}), was pid {before}" in log.read_text()
        started = list(pids().values())
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in started), 30, what="supervisord's programs stopped with it")
