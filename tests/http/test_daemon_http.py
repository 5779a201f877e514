"""``fleetmon run --http`` end to end: the real daemon serving real agents, checked by
prometheus_client's parser, ``promtool`` and a real Prometheus server; the JSON API against the
real CLI; the listening socket of a bare port. Every connection stays on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import cli, register, wait_until

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parents[2] / "README.md"  # the rules operators copy are tested as written
NO_PROM = "the Debian package 'prometheus' (promtool, prometheus) is not installed; ./dev test installs it when run as root"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str, timeout: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def fetch_json(url: str):
    status, body = fetch(url)
    return status, json.loads(body)


class Fleet:
    def __init__(self, daemon, port: int, agents: dict[str, int]):
        self.daemon, self.port, self.agents = daemon, port, agents

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def fleet(daemons, procs, state_dir) -> Fleet:
    """Two sleeping agents (one over a 1KiB memory threshold: an alert at once), 2 workers, 1s ticks."""
    agents = {"web-1": procs.sleeper().pid, "batch.2": procs.sleeper().pid}
    register(state_dir, "web-1", pid=agents["web-1"], memory="1KiB", **{"for": "0"})
    register(state_dir, "batch.2", pid=agents["batch.2"], cpu=90)
    port = free_port()
    d = daemons(state_dir, "--http", f"127.0.0.1:{port}", "--interval", "1s", "--workers", "2")
    d.wait_tick(2, timeout=30)
    f = Fleet(d, port, agents)
    wait_until(lambda: _has_rss(f, "web-1") and _has_rss(f, "batch.2"), timeout=20, what=f"/metrics with both agents (log: {d.log_path})")
    return f


def _has_rss(f: Fleet, agent_id: str) -> bool:
    try:
        status, body = fetch(f.url("/metrics"))
    except OSError:
        return False
    return status == 200 and f'fleetmon_agent_memory_rss_bytes{{agent_id="{agent_id}"'.encode() in body


def test_metrics_parse_and_pass_promtool(fleet):
    status, body = fetch(fleet.url("/metrics"))
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    for agent_id, pid in fleet.agents.items():
        rss = [s for s in families["fleetmon_agent_memory_rss_bytes"].samples if s.labels["agent_id"] == agent_id]
        assert len(rss) == 1 and rss[0].labels["agent_type"] == "default"
        assert rss[0].value == pytest.approx(psutil.Process(pid).memory_info().rss, rel=0.5)
        up = [s.value for s in families["fleetmon_agent_up"].samples if s.labels["agent_id"] == agent_id]
        assert up == [1.0]
        cpu_s = [s.value for s in families["fleetmon_agent_cpu_seconds"].samples if s.labels["agent_id"] == agent_id]
        assert len(cpu_s) == 1 and 0 <= cpu_s[0] <= sum(psutil.Process(pid).cpu_times()[:2]) + 0.02
    states = {(s.labels["agent_id"], s.labels["resource"]): s.value for s in families["fleetmon_agent_alert_state"].samples}
    assert states == {("web-1", "memory"): 2.0, ("batch.2", "cpu"): 0.0}
    assert families["fleetmon_workers"].samples[0].value == 2
    assert families["fleetmon_samples"].samples[0].value >= 4
    assert families["fleetmon_tick_duration_seconds"].type == "histogram"
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(NO_PROM)
    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60)
    print(f"\npromtool check metrics: exit {check.returncode}, output: {(check.stdout + check.stderr).decode().strip()!r}")
    assert check.returncode == 0, check.stdout + check.stderr
    assert not (check.stdout + check.stderr).strip()  # not even a lint warning


def _rules_from_docs() -> str:
    text = DOCS.read_text()
    m = re.search(r"```yaml\n(# fleetmon-rules\.yml\n.*?)```", text, re.S)
    assert m, f"no fleetmon-rules.yml block in {DOCS}"
    return m.group(1)


def test_real_prometheus_scrapes_fleetmon_and_answers_per_agent(fleet, procs, tmp_path):
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip(NO_PROM)
    port = free_port()
    tsdb = tmp_path / "tsdb"
    (tmp_path / "rules.yml").write_text(_rules_from_docs())
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "rule_files:\n  - rules.yml\n"
        "scrape_configs:\n  - job_name: fleetmon\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{fleet.port}']\n"
    )
    log = open(tmp_path / "prometheus.log", "wb")
    prom = procs.start(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tsdb}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        def ready():
            assert prom.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                return fetch(f"{base}/-/ready")[0] == 200
            except OSError:
                return False

        wait_until(ready, timeout=60, what="the test's Prometheus to be ready")
        # This is the server the test started (not a system one): it runs on our tsdb path.
        _, flags = fetch_json(f"{base}/api/v1/status/flags")
        assert flags["data"]["storage.tsdb.path"] == str(tsdb)
        query = 'fleetmon_agent_memory_rss_bytes{agent_id="web-1"}'

        def answer():
            status, body = fetch_json(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": query}))
            return status == 200 and body["data"]["result"]

        result = wait_until(answer, timeout=60, what=f"Prometheus to answer {query}")
        print(f"\nPrometheus {query}: {json.dumps(result)}")
        assert len(result) == 1
        labels, (_, value) = result[0]["metric"], result[0]["value"]
        assert labels["agent_id"] == "web-1" and labels["agent_type"] == "default" and labels["job"] == "fleetmon"
        assert labels["instance"] == f"127.0.0.1:{fleet.port}"
        assert float(value) > 1024
        _, targets = fetch_json(f"{base}/api/v1/targets")
        assert [t["health"] for t in targets["data"]["activeTargets"]] == ["up"]
        # The README's rules load and match: web-1 is over its 1KiB threshold (pending: for 5m);
        # batch.2 (cpu below 90) and web-1's cpu (no threshold) are not.
        def pending():
            _, alerts = fetch_json(f"{base}/api/v1/alerts")
            return [(a["labels"]["alertname"], a["labels"]["agent_id"], a["state"]) for a in alerts["data"]["alerts"]]

        assert wait_until(pending, timeout=30, what="the memory rule to match") == [("FleetmonAgentMemoryHigh", "web-1", "pending")]
        _, rules = fetch_json(f"{base}/api/v1/rules")
        assert {r["name"]: r["health"] for g in rules["data"]["groups"] for r in g["rules"]} == {
            "FleetmonAgentMemoryHigh": "ok", "FleetmonAgentCpuHigh": "ok",
        }
    finally:
        prom.terminate()  # by its pid, through its Popen
        try:
            prom.wait(timeout=30)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait(timeout=10)
        log.close()


def test_docs_rules_follow_fleetmon_semantics(tmp_path):
    """promtool's rule unit tests: over means strictly greater; pending (warning) until 5m over,
    then firing (error); back at the threshold resolves; no threshold, no alert."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(NO_PROM)
    (tmp_path / "rules.yml").write_text(_rules_from_docs())
    check = subprocess.run([promtool, "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    lab = 'job="fleetmon",instance="h:9464",agent_type="web"'
    (tmp_path / "test.yml").write_text(
        f"""rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'fleetmon_agent_memory_rss_bytes{{{lab},agent_id="over"}}'
        values: '500 2048x7 1000x2'
      - series: 'fleetmon_agent_memory_threshold_bytes{{{lab},agent_id="over"}}'
        values: '1000x10'
      - series: 'fleetmon_agent_memory_rss_bytes{{{lab},agent_id="equal"}}'
        values: '1000x10'
      - series: 'fleetmon_agent_memory_threshold_bytes{{{lab},agent_id="equal"}}'
        values: '1000x10'
      - series: 'fleetmon_agent_memory_rss_bytes{{{lab},agent_id="nolimit"}}'
        values: '99999999x10'
      - series: 'fleetmon_agent_cpu_percent{{{lab},agent_id="over"}}'
        values: '250x10'
      - series: 'fleetmon_agent_cpu_threshold_percent{{{lab},agent_id="over"}}'
        values: '200x10'
    alert_rule_test:
      - eval_time: 5m
        alertname: FleetmonAgentMemoryHigh
        exp_alerts: []
      - eval_time: 6m
        alertname: FleetmonAgentMemoryHigh
        exp_alerts:
          - exp_labels: {{severity: error, {lab.replace('=', ': ').replace(',', ', ')}, agent_id: over}}
            exp_annotations:
              summary: "over on h:9464 is over its memory threshold"
              description: "RSS 2kiB has been over the threshold for 5 minutes."
      - eval_time: 9m
        alertname: FleetmonAgentMemoryHigh
        exp_alerts: []
      - eval_time: 5m
        alertname: FleetmonAgentCpuHigh
        exp_alerts:
          - exp_labels: {{severity: error, {lab.replace('=', ': ').replace(',', ', ')}, agent_id: over}}
            exp_annotations:
              summary: "over on h:9464 is over its cpu threshold"
              description: "CPU 250% of one core has been over the threshold for 5 minutes."
"""
    )
    run = subprocess.run([promtool, "test", "rules", str(tmp_path / "test.yml")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def _strip_volatile(status: dict) -> dict:
    """What changes from one tick to the next."""
    d = dict(status["daemon"] or {})
    for key in ("updated", "tick", "persisted_tick", "samples_total"):
        d.pop(key, None)
    agents = [{k: v for k, v in a.items() if k not in ("updated", "last_sample")} for a in status["agents"]]
    return {"daemon": d, "agents": agents}


def test_json_api_returns_what_the_cli_returns(fleet, state_dir):
    d = fleet.daemon
    status, api = fetch_json(fleet.url("/api/status"))
    assert status == 200
    assert _strip_volatile(api) == _strip_volatile(json.loads(cli("status", "--json", state_dir=state_dir, check=True).stdout))
    assert api["daemon"]["supervisor_pid"] == d.pid
    # Freeze the fleet: with the supervisor stopped no tick is sent, so the files stop changing and
    # the API and the CLI can be compared whole. /healthz then sees ticks late.
    os.kill(d.pid, signal.SIGSTOP)
    try:
        def settled():
            first = fetch(fleet.url("/api/status"))[1]
            time.sleep(1.2)
            return first == fetch(fleet.url("/api/status"))[1]

        wait_until(settled, timeout=20, what="status to stop changing")
        pairs = [
            ("/api/status", ["status", "--json"]),
            ("/api/agents/web-1/history", ["history", "web-1", "--json"]),
            ("/api/agents/web-1/history?since=10m&every=2s", ["history", "web-1", "--json", "--since", "10m", "--every", "2s"]),
            ("/api/agents/batch.2/history?since=1h", ["history", "batch.2", "--json", "--since", "1h"]),
            ("/api/alerts", ["alerts", "--json"]),
            ("/api/alerts?since=1d", ["alerts", "--json", "--since", "1d"]),
            ("/api/alerts?agent=web-1,x&state=error&limit=5",
             ["alerts", "--json", "--agent", "web-1", "--agent", "x", "--state", "error", "--limit", "5"]),
        ]
        for path, args in pairs:
            status, body = fetch(fleet.url(path))
            assert status == 200, body
            assert json.loads(body) == json.loads(cli(*args, state_dir=state_dir, check=True).stdout), path
        history = json.loads(fetch(fleet.url("/api/agents/web-1/history"))[1])
        assert len(history["points"]) >= 2 and history["points"][-1]["memory_rss"] > 1024
        alerts = json.loads(fetch(fleet.url("/api/alerts"))[1])["events"]
        assert [(e["agent_id"], e["resource"], e["state"]) for e in alerts] == [("web-1", "memory", "error")]

        def late():
            status, body = fetch_json(fleet.url("/healthz"))
            return status == 503 and body

        body = wait_until(late, timeout=20, what="/healthz to report late ticks")
        assert body["status"] == "late" and "no tick persisted for" in body["reason"]
    finally:
        os.kill(d.pid, signal.SIGCONT)
    wait_until(lambda: fetch(fleet.url("/healthz"))[0] == 200, timeout=20, what="/healthz to recover")
    # Bad input through the real daemon: JSON errors, never a traceback.
    for path, code in [
        ("/api/agents/no-such-agent/history", 404),
        ("/api/agents/bad%20id/history", 400),
        ("/api/agents/web-1/history?every=fortnight", 400),
        ("/api/alerts?since=-1h", 400),
        ("/api/agents", 404),
        ("/metrics/extra", 404),
    ]:
        status, body = fetch(fleet.url(path))
        assert status == code, (path, body)
        assert set(json.loads(body)) == {"error"}
    assert "HTTP endpoint listening on 127.0.0.1" in d.log()
    assert "Traceback" not in d.log()


def test_bare_port_listens_on_loopback_only(daemons, procs, state_dir):
    register(state_dir, "solo", pid=procs.sleeper().pid)
    port = free_port()
    d = daemons(state_dir, "--http", str(port), "--interval", "1s", "--workers", "1")
    info = d.wait_tick(1, timeout=30)
    writer = psutil.Process(info["writer_pid"])
    connections = getattr(writer, "net_connections", None) or writer.connections

    def listening():
        return [c.laddr for c in connections(kind="inet") if c.status == psutil.CONN_LISTEN]

    addresses = wait_until(listening, timeout=20, what=f"the writer to listen (log: {d.log_path})")
    assert [(a.ip, a.port) for a in addresses] == [("127.0.0.1", port)]
    status, body = fetch_json(f"http://127.0.0.1:{port}/healthz")
    assert status == 200 and body["status"] == "ok"
