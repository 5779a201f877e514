"""The HTTP endpoint on a loopback port with an in-memory fleet (no daemon): routes, errors,
content negotiation, binding, and the time to serve /metrics for 5,000 agents."""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleetmon import wire
from fleetmon.store import http, queries
from fleetmon.store.layout import StateDir
from fleetmon.supervisor import registry as reg
from tests.helpers import wait_until
from tests.http._fakes import big_fleet, daemon_info, fake_writer, sample


def get(url: str, method: str = "GET", headers: dict | None = None, timeout: float = 30):
    """(status, headers, body) of one request, error statuses included."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers, exc.read()


@pytest.fixture
def endpoint(tmp_path):
    state = StateDir(tmp_path / "state").create()
    reg.write_entry(state.registry, reg.RegistryEntry("web-1", "web", pid=12345))
    writer = fake_writer(big_fleet(3), state_root=state.root, daemon=daemon_info())
    ep = http.start("127.0.0.1:0", writer)
    yield ep
    ep.close()


def url(ep, path: str) -> str:
    host, port = ep.server_address[:2]
    return f"http://{host}:{port}{path}"


def test_bare_port_binds_loopback_only():
    ep = http.start("0", fake_writer(big_fleet(1)))
    try:
        assert ep.server_address[0] == "127.0.0.1"
        assert ep.server.socket.getsockname()[0] == "127.0.0.1"
    finally:
        ep.close()


def test_api_status_is_the_query_the_cli_prints(endpoint):
    status, headers, body = get(url(endpoint, "/api/status"))
    assert status == 200 and headers["Content-Type"] == "application/json"
    data = json.loads(body)
    expected = json.loads(json.dumps(__import__("msgspec").to_builtins(queries.status(endpoint.writer.state))))
    assert data == expected
    assert [a["id"] for a in data["agents"]] == ["web-1"] and data["agents"][0]["status"] == "not_running"


@pytest.mark.parametrize(
    ("path", "status", "needle"),
    [
        ("/nope", 404, "no such path"),
        ("/api/agents/web-1", 404, "no such path"),
        ("/api/agents/web-1/history/extra", 404, "no such path"),
        ("/api/agents/nobody/history", 404, "unknown agent 'nobody'"),
        ("/api/agents/bad%40id/history", 400, "invalid agent id 'bad@id'"),
        ("/api/agents/..%2F..%2Fetc/history", 400, "invalid agent id"),
        ("/api/agents/%2Eprivate/history", 400, "invalid agent id"),
        ("/api/agents/web-1/history?since=soon", 400, "since: invalid duration 'soon'"),
        ("/api/agents/web-1/history?since=0", 400, "since: duration must be positive"),
        ("/api/agents/web-1/history?every=-5m", 400, "every: invalid duration"),
        ("/api/agents/web-1/history?since=1h&since=2h", 400, "given 2 times"),
        ("/api/agents/web-1/history?sinse=1h", 400, "unknown parameter 'sinse'"),
        ("/api/alerts?since=1y", 400, "since: invalid duration"),
        ("/api/alerts?limit=0", 400, "limit: a whole number from 1 to 100000"),
        ("/api/alerts?limit=lots", 400, "limit: a whole number"),
        ("/api/alerts?limit=100001", 400, "limit: a whole number"),
        ("/api/alerts?state=bad", 400, "state: use warning, error or ok"),
        ("/api/alerts?agent=ok,../etc", 400, "agent: "),  # as the CLI refuses it
        ("/api/alerts?agents=a", 400, "unknown parameter 'agents'"),
        ("/api/status?verbose=1", 400, "unknown parameter 'verbose'"),
        ("/healthz?x=1", 400, "unknown parameter 'x'"),
    ],
)
def test_bad_requests_get_a_json_error(endpoint, path, status, needle):
    code, headers, body = get(url(endpoint, path))
    assert code == status, body
    assert headers["Content-Type"] == "application/json"
    error = json.loads(body)["error"]
    assert needle in error
    assert "Traceback" not in error


def test_registered_agent_without_samples_has_empty_history(endpoint):
    code, _, body = get(url(endpoint, "/api/agents/web-1/history?since=5m&every=1m"))
    assert code == 200
    assert json.loads(body) == {"agent_id": "web-1", "points": []}
    code, _, body = get(url(endpoint, "/api/alerts"))
    assert code == 200 and json.loads(body) == {"events": []}


def test_alerts_filters_and_limit(endpoint):
    import time

    from fleetmon.units import rfc3339

    now = time.time()
    lines = [
        json.dumps({"timestamp": rfc3339(now - 30 + i), "agent_id": agent, "resource": "cpu", "state": state,
                    "value": 1.0, "threshold": 1.0, "since": rfc3339(now - 30)}, separators=(",", ":"))
        for i, (agent, state) in enumerate([("a", "warning"), ("b", "error"), ("a", "error"), ("c", "ok")])
    ]
    endpoint.writer.state.alerts.write_text("\n".join(lines) + "\n")

    def picked(query: str) -> list[tuple[str, str]]:
        code, _, body = get(url(endpoint, "/api/alerts" + query))
        assert code == 200, body
        return [(e["agent_id"], e["state"]) for e in json.loads(body)["events"]]

    assert len(picked("")) == 4
    assert picked("?agent=a,c") == [("a", "warning"), ("a", "error"), ("c", "ok")]
    assert picked("?state=error") == [("b", "error"), ("a", "error")]
    assert picked("?agent=a&state=error,warning&limit=1") == [("a", "error")]


def test_methods_and_malformed_requests_get_json(endpoint):
    code, headers, body = get(url(endpoint, "/metrics"), method="POST")
    assert code == 405 and headers["Allow"] == "GET, HEAD" and "not allowed" in json.loads(body)["error"]
    code, headers, body = get(url(endpoint, "/metrics"), method="BREW")
    assert code == 501 and headers["Content-Type"] == "application/json" and json.loads(body)["error"]
    code, headers, body = get(url(endpoint, "/api/status"), method="HEAD")
    assert code == 200 and body == b"" and int(headers["Content-Length"]) > 0
    host, port = endpoint.server_address[:2]

    def raw(request: bytes) -> bytes:
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(request)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return data

    head, _, body = raw(b"GET /a b HTTP/1.0\r\n\r\n").partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 400") and b"application/json" in head
    assert "Bad request syntax" in json.loads(body)["error"]
    head, _, body = raw(b"GARBAGE\r\n\r\n").partition(b"\r\n\r\n")  # no version: answered as HTTP/1.0, not 0.9
    assert head.startswith(b"HTTP/1.0 400") and "error" in json.loads(body)
    head, _, body = raw(b"GET /api\r\n\r\n").partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") and "/metrics" in json.loads(body)["endpoints"]


def test_metrics_content_types_and_gzip(endpoint):
    code, headers, body = get(url(endpoint, "/metrics"))
    assert code == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"fleetmon_agent_memory_rss_bytes", "fleetmon_workers", "fleetmon_writer_process_resident_memory_bytes"} <= names
    # What Prometheus sends: it takes the text format too, so it gets the (fast) text format.
    prom_accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    code, headers, zipped = get(url(endpoint, "/metrics"), headers={"Accept": prom_accept, "Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip" and headers["Content-Type"].startswith("text/plain")
    assert {f.name for f in text_string_to_metric_families(gzip.decompress(zipped).decode())} == names
    code, headers, body = get(url(endpoint, "/metrics"), headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert code == 200 and headers["Content-Type"].startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")


def test_taken_port_is_retried_in_the_background(monkeypatch):
    monkeypatch.setattr(http, "BIND_RETRY", 0.2)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    ep = http.start(f"127.0.0.1:{port}", fake_writer(big_fleet(1)))
    try:
        assert ep.server is None  # sampling goes on; the endpoint waits for its port
        holder.close()
        wait_until(lambda: ep.server is not None, timeout=10, what="the endpoint to bind once the port is free")
        assert get(f"http://127.0.0.1:{port}/healthz")[0] in (200, 503)
    finally:
        holder.close()
        ep.close()


# Times GETs from another process, as a real scrape comes: a client in this process would share
# the server's GIL and count its own parsing as the server's time.
_CLIENT = """
import json, sys, time, urllib.request
url, n, headers = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
out = []
for _ in range(n):
    t0 = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as r:
        size = len(r.read())
    out.append([time.perf_counter() - t0, size])
print(json.dumps(out))
"""


def timed_gets(target: str, n: int, headers: dict | None = None) -> list[tuple[float, int]]:
    proc = subprocess.run(
        [sys.executable, "-c", _CLIENT, target, str(n), json.dumps(headers or {})], capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return [tuple(x) for x in json.loads(proc.stdout)]


def test_metrics_for_5000_agents_has_every_series_plain_gzipped_and_cached(monkeypatch):
    """Every agent's series, in text, gzip and from the cache. How long it takes is printed (speed is
    the benchmarks' business, not a test's)."""
    fleet = big_fleet(5000)
    writer = fake_writer(fleet, daemon=daemon_info(workers=2, interval=60.0))
    ep = http.start("127.0.0.1:0", writer)
    try:
        monkeypatch.setattr(http, "METRICS_CACHE_MAX_AGE", 0.0)  # every scrape renders
        plain = timed_gets(url(ep, "/metrics"), 4)[1:]  # the first one warms up
        zipped = timed_gets(url(ep, "/metrics"), 2, {"Accept-Encoding": "gzip"})[1:]
        monkeypatch.setattr(http, "METRICS_CACHE_MAX_AGE", 60.0)
        cached = timed_gets(url(ep, "/metrics"), 3)[1:]  # the same tick scraped again
        code, _, body = get(url(ep, "/metrics"))
    finally:
        ep.close()
    assert code == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert len(families["fleetmon_agent_memory_rss_bytes"].samples) == 5000
    assert len({s.labels["agent_id"] for s in families["fleetmon_agent_up"].samples}) == 5000
    series = sum(len(f.samples) for f in families.values())
    assert zipped[0][1] < len(body) / 4  # gzip asked for, gzip sent
    # rendered again or from the cache, the same series (a few gauges of the daemon's own change)
    assert all(abs(n - len(body)) < 1000 for _, n in plain + cached)
    print(
        f"\n/metrics for 5000 agents: {series} series, {len(body) / 1e6:.1f} MB; "
        f"text {', '.join(f'{t * 1000:.0f}' for t, _ in plain)} ms; "
        f"gzip {zipped[0][1] / 1e6:.2f} MB in {zipped[0][0] * 1000:.0f} ms; "
        f"same tick again (cached) {', '.join(f'{t * 1000:.0f}' for t, _ in cached)} ms"
    )


def test_metrics_rendered_again_after_a_batch_or_once_an_interval(monkeypatch):
    fleet = big_fleet(2)
    writer = fake_writer(fleet, daemon=daemon_info(interval=60.0))
    ep = http.start("127.0.0.1:0", writer)

    def rss() -> float:
        body = get(url(ep, "/metrics"))[2].decode()
        family = next(f for f in text_string_to_metric_families(body) if f.name == "fleetmon_agent_memory_rss_bytes")
        return next(s.value for s in family.samples if s.labels["agent_id"] == "agent-00000")

    try:
        before = rss()
        fleet.on_sample(sample("agent-00000", 10_000, time.time(), rss=777))
        assert rss() == before  # same tick: the rendered text is reused
        ep.observe_batch(wire.Batch(0, 2, time.time(), time.time(), []))  # what the writer calls per batch
        assert rss() == 777
        fleet.on_sample(sample("agent-00000", 10_000, time.time(), rss=888))
        monkeypatch.setattr(http, "METRICS_CACHE_MAX_AGE", 0.0)  # an interval has passed
        assert rss() == 888
    finally:
        ep.close()


def test_openmetrics_is_cached_too_and_scrapers_that_come_together_share_one_render(monkeypatch):
    """OpenMetrics was rendered through prometheus_client at every scrape (0.55 s at 3,000 agents):
    thirty scrapers at once held the writer's interpreter and persisting fell 25 ticks behind. It is
    cached as the text format is, and one render serves scrapers that arrive together."""
    import threading

    fleet = big_fleet(50)
    writer = fake_writer(fleet, daemon=daemon_info(interval=60.0))
    ep = http.start("127.0.0.1:0", writer)
    renders = []
    real_text, real_choose = http.render_text, http.choose_encoder

    def counting(registry):
        renders.append("text")
        time.sleep(0.2)  # a slow render: the others arrive meanwhile
        return real_text(registry)

    def choose(accept):
        encoder, content_type = real_choose(accept)
        return (lambda registry: renders.append("openmetrics") or encoder(registry)), content_type

    monkeypatch.setattr(http, "render_text", counting)
    monkeypatch.setattr(http, "choose_encoder", choose)
    om = {"Accept": "application/openmetrics-text; version=1.0.0"}
    try:
        first = get(url(ep, "/metrics"), headers=om)
        second = get(url(ep, "/metrics"), headers=om)
        assert first[0] == second[0] == 200 and first[2] == second[2] and first[2].endswith(b"# EOF\n")
        assert first[1]["Content-Type"].startswith("application/openmetrics-text")
        assert renders == ["openmetrics"]  # the second from the cache
        bodies = []
        threads = [threading.Thread(target=lambda: bodies.append(get(url(ep, "/metrics"))[2])) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(bodies) == 8 and len(set(bodies)) == 1
        assert renders == ["openmetrics", "text"]  # eight text scrapes together: rendered once
    finally:
        ep.close()


def test_connections_past_the_bound_get_503_at_once_without_a_thread(monkeypatch):
    """Each connection held a thread until it sent a request or timed out: 2,000 idle ones took the
    writer from 58 to 277 MB. Past MAX_CONNECTIONS, a connection is answered 503 and closed."""
    monkeypatch.setattr(http, "MAX_CONNECTIONS", 4)
    writer = fake_writer(big_fleet(2), daemon=daemon_info(interval=60.0))
    ep = http.start("127.0.0.1:0", writer)
    host, port = ep.server_address[:2]
    idle = [socket.create_connection((host, port), timeout=5) for _ in range(4)]
    try:
        time.sleep(0.3)  # accepted, each by a thread of its own, waiting for a request
        code, headers, _ = get(url(ep, "/api"))
        assert code == 503 and headers.get("Retry-After") == "1"
    finally:
        for s in idle:
            s.close()
    try:
        wait_until(lambda: get(url(ep, "/api"))[0] == 200, 10, 0.05, what="a slot free again")
    finally:
        ep.close()


def test_requests_past_the_bound_are_turned_away_but_never_healthz(monkeypatch):
    """Scrapers queued on a slow render hold their requests; a liveness probe behind them would get
    503 and restart a healthy daemon. /healthz is not counted."""
    monkeypatch.setattr(http, "MAX_REQUESTS", 0)  # every request slot taken
    writer = fake_writer(big_fleet(2), daemon=daemon_info(interval=60.0))
    ep = http.start("127.0.0.1:0", writer)
    try:
        for path in ("/metrics", "/api/status", "/api"):
            code, headers, body = get(url(ep, path))
            assert code == 503 and headers.get("Retry-After") == "1" and "busy" in json.loads(body)["error"], path
        code, _, body = get(url(ep, "/healthz"))
        assert code == 200 and json.loads(body)["status"] == "ok"
    finally:
        ep.close()


def test_a_request_trickled_in_is_dropped_at_the_deadline(monkeypatch):
    """A client that sends a byte now and then, each within the read timeout (slowloris), never
    finished its request line and held its connection slot and thread for good: MAX_CONNECTIONS of
    them kept even /healthz at 503. The whole request head must come within REQUEST_TIMEOUT."""
    monkeypatch.setattr(http, "REQUEST_TIMEOUT", 1.0)
    monkeypatch.setattr(http.Handler, "timeout", 1.0)
    monkeypatch.setattr(http, "MAX_CONNECTIONS", 2)
    ep = http.start("127.0.0.1:0", fake_writer(big_fleet(1), daemon=daemon_info(interval=60.0)))
    host, port = ep.server_address[:2]
    slow = [socket.create_connection((host, port), timeout=5) for _ in range(2)]
    try:
        start = time.monotonic()
        closed = set()
        while len(closed) < len(slow) and time.monotonic() - start < 6:
            for i, s in enumerate(slow):
                if i in closed:
                    continue
                try:
                    s.sendall(b"G")  # a byte every 0.3 s: within the read timeout each time
                    s.settimeout(0.01)
                    if s.recv(1) == b"":
                        closed.add(i)
                except TimeoutError:
                    pass
                except OSError:
                    closed.add(i)
            time.sleep(0.3)
        assert len(closed) == len(slow), "a trickling client kept its connection past REQUEST_TIMEOUT"
        assert time.monotonic() - start < 4
        wait_until(lambda: get(url(ep, "/healthz"))[0] == 200, 5, 0.05, what="/healthz answered again")
    finally:
        for s in slow:
            s.close()
        ep.close()


@pytest.mark.parametrize("text, expected", [
    ("9464", ("127.0.0.1", 9464)), (":9464", ("127.0.0.1", 9464)), ("0.0.0.0:9464", ("0.0.0.0", 9464)),
    ("[::1]:9464", ("::1", 9464)), ("[::]:9464", ("::", 9464)), ("localhost:9464", ("localhost", 9464)),
])
def test_http_address_parsed(text, expected):
    from fleetmon.supervisor.httpaddr import parse_http

    assert parse_http(text) == expected


@pytest.mark.parametrize("text", ["[a:9464", "a]:9464", "[::1]", "::1", "::1:9464", "fe80::1:9464", "127.0.0.1:\u0669\u0664\u0666\u0664", "127.0.0.1:", "1:2:3"])
def test_http_address_that_cannot_bind_is_refused_at_start(text):
    """``--http ::1`` passed ``run --check`` and started a daemon that tried to listen on host ":"
    port 1 every 5 s for good ("Name or service not known"): an unbracketed IPv6 address is refused."""
    from fleetmon.supervisor.httpaddr import parse_http

    with pytest.raises(ValueError):
        parse_http(text)


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "OPTIONS", "PATCH"])
def test_every_standard_method_but_get_and_head_is_405(endpoint, method):
    """The README: "a method other than GET/HEAD 405". TRACE and CONNECT got 501 Not Implemented,
    without an Allow header."""
    host, port = endpoint.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(f"{method} /metrics HTTP/1.0\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 405") and b"\r\nAllow: GET, HEAD" in head, head
    assert "not allowed" in json.loads(body)["error"]


@pytest.mark.parametrize("header, expected", [
    ("gzip", True), ("GZIP", True), ("deflate, gzip;q=0.5", True), ("gzip;q=1.0", True), ("identity", False), ("", False),
    ("gzip;q=0", False), ("gzip; q=0.000", False), ("gzip;Q=0", False), ("gzip ; Q = 0", False), ("br, gzip;q=0.0", False),
])
def test_gzip_weight_zero_is_a_refusal_however_written(header, expected):
    """The weight's name is case-insensitive (RFC 9110 12.4.2): ``gzip;Q=0`` refuses gzip, and got it."""
    assert http._gzip_accepted(header) is expected
