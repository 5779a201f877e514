"""``--log-format json``: every line on stderr is one JSON object with time, level, message and the
bound fields; whatever else reaches stderr (a crashed worker's traceback) is wrapped the same way."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import datetime

import pytest

from tests.helpers import cli, register, wait_until
from tests.ops._util import daemon_env, hog, write_config
from tests.ops.hooks import CRASH_ENV

LEVELS = {"TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"}


def _parse(text: str) -> list[dict]:
    lines = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"log line {n} is not JSON: {line!r}") from None
        assert isinstance(obj, dict), line
        assert {"time", "level", "message"} <= obj.keys(), line
        assert obj["level"] in LEVELS, line
        assert obj["time"].endswith("Z")
        datetime.fromisoformat(obj["time"].replace("Z", "+00:00"))
        assert isinstance(obj["message"], str) and "\n" not in line
        lines.append(obj)
    return lines


@pytest.mark.slow
def test_every_json_log_line_parses(daemons, procs, state_dir, tmp_path):
    crash = tmp_path / "crash-a-worker"
    busy = hog(procs)
    register(state_dir, "busy", pid=busy.pid, cpu=10, **{"for": "1s"})
    register(state_dir, "idle", pid=procs.sleeper().pid)
    (state_dir / "registry" / "broken.json").write_text('{"id": "broken", "pid": "not a pid"}')
    config = write_config(tmp_path / "fleetmon.toml", interval="500ms", workers=2, sampler_hook="tests.ops.hooks:crash_once")
    d = daemons(state_dir, "--config", str(config), "--log-format", "json", "--log-level", "DEBUG", env=daemon_env(**{CRASH_ENV: str(crash)}))
    d.wait_tick(3)
    wait_until(lambda: '"state":"error"' in d.log(), 15, what="an error alert logged")
    crash.write_text("")  # the next sample crashes a worker: a traceback on stderr, and a restart
    wait_until(lambda: "restarted" in d.log() and not crash.exists(), 20, what="a worker crash and restart")
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "SIGHUP" in d.log(), 10, what="the reload logged")
    assert d.stop() == 0
    lines = _parse(d.log())
    messages = [x["message"] for x in lines]
    assert any(m.startswith("fleetmon started") for m in messages)
    assert any(m == "fleetmon stopped" for m in messages)
    alert = next(x for x in lines if x.get("agent_id") == "busy" and x["level"] == "ERROR")
    assert alert["resource"] == "cpu" and alert["state"] == "error" and isinstance(alert["value"], float)
    assert any(x.get("file") or "broken.json" in x["message"] for x in lines if x["level"] == "ERROR")
    assert any(x.get("worker") is not None and x["level"] == "DEBUG" for x in lines)
    stray = [x for x in lines if x.get("stream") == "stderr"]
    assert any("Traceback" in x["message"] for x in stray), stray
    assert any("RuntimeError: test crash of a worker" in x["message"] for x in stray), stray
    assert any("a stray line" in x["message"] for x in stray), stray
    assert all(isinstance(x["process"], int) for x in lines)
    assert {x["process"] for x in lines} >= {d.pid, d.daemon_json()["writer_pid"]}


JSON_SNIPPET = """
import os, sys
from loguru import logger
from fleetmon import logs
logs.configure("DEBUG", "json")
logger.bind(agent_id="a1", pid=7, obj=object()).warning("over {} for {}", "cpu", "5s")
try:
    raise ValueError("bad")
except ValueError:
    logger.exception("caught")
print("plain text\\nsecond line", file=sys.stderr)
sys.stderr.write("no newline at exit")
sys.stderr.flush()
print(os.getpid())
"""


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=daemon_env(), stdin=subprocess.DEVNULL)


def test_json_lines_from_bound_fields_exceptions_and_stray_stderr():
    p = _python(JSON_SNIPPET)
    assert p.returncode == 0, p.stderr
    pid = int(p.stdout)
    lines = _parse(p.stderr)
    assert lines[0]["message"] == "over cpu for 5s" and lines[0]["level"] == "WARNING"
    assert lines[0]["agent_id"] == "a1" and lines[0]["pid"] == 7 and lines[0]["process"] == pid  # an agent's pid, the logger's process
    assert lines[0]["obj"].startswith("<object")
    assert "ValueError: bad" in lines[1]["exception"] and "Traceback" in lines[1]["exception"]
    assert [x["message"] for x in lines[2:]] == ["plain text", "second line", "no newline at exit"]
    assert all(x["stream"] == "stderr" for x in lines[2:])


def test_text_is_the_default():
    p = _python("from loguru import logger\nfrom fleetmon import logs\nlogs.configure('INFO')\nlogger.info('hello')\n")
    assert p.returncode == 0
    assert p.stderr.rstrip().endswith("INFO    hello") and not p.stderr.startswith("{")


def test_a_refused_config_is_a_json_line_too(tmp_path):
    config = write_config(tmp_path / "bad.toml", interval="soon")
    p = cli("run", "--config", config, "--log-format", "json", state_dir=tmp_path / "state", timeout=30)
    assert p.returncode == 2
    (line,) = _parse(p.stderr)
    assert line["level"] == "ERROR" and "interval" in line["message"]
    p = cli("run", "--config", config, state_dir=tmp_path / "state", timeout=30)  # text: the usual one line
    assert p.returncode == 2 and p.stderr.startswith("fleetmon: error: ") and "interval" in p.stderr
