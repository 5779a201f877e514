"""The HTTP endpoint (``fleetmon run --http [HOST:]PORT``), served from threads of the writer process,
which holds the data: ``/metrics`` (Prometheus), a JSON API with the shapes of the CLI's ``--json``,
and ``/healthz``.

The sampling path never waits for it: the writer thread takes no lock, and only feeds per-batch
counters (``Endpoint.observe_batch``). Request threads read the writer's in-memory state through
snapshots (see ``collector``) and the state dir through the same queries as the CLI.

Routes:
  GET /metrics                                  Prometheus text format (OpenMetrics for a client that
                                                takes nothing else), gzip if accepted
  GET /api/status                               = fleetmon status --json
  GET /api/agents/{id}/history?since=&every=    = fleetmon history ID --json [--since] [--every]
  GET /api/alerts?since=                        = fleetmon alerts --json [--since]
  GET /healthz                                  200 while ticks are persisted on time, else 503 (also
                                                while writing to the state dir fails)
Anything else answers a JSON error (400, 404, 405), never a traceback.
"""

from __future__ import annotations

import gzip
import io
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec
from loguru import logger
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder

from fleetmon.store import queries
from fleetmon.store.collector import TEXT_CONTENT_TYPE, BatchStats, FleetCollector, render_text
from fleetmon.supervisor.httpaddr import parse_http
from fleetmon.units import check_agent_id, parse_duration, whole_number

DEFAULT_SINCE = 3600.0  # as the CLI's --since
ALERTS_LIMIT = 100_000  # /api/alerts: the newest this many changes at most (a reply of ~25 MB)
LATE_AFTER_INTERVALS = 3  # /healthz: 503 when no tick was persisted for this many intervals
LATE_SLACK = 1.0  # seconds added to that, for scheduling noise at short intervals
BIND_RETRY = 5.0  # seconds between attempts to listen when the address is taken
REQUEST_TIMEOUT = 30.0  # a client that sends nothing for this long, or takes longer to send its request, is dropped
METRICS_CACHE_MAX_AGE = 60.0  # seconds; at most one interval (see Endpoint.metrics)
MAX_CONNECTIONS = 256  # open at once (a thread each); more are answered 503 at once, without a thread
MAX_REQUESTS = 64  # served at once, /healthz apart (a probe must get through a storm of scrapers)

_json = msgspec.json.Encoder()


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Endpoint:
    """The HTTP endpoint of one writer: its collector registry, its per-batch counters and its
    server (``None`` while the address cannot be bound yet)."""

    def __init__(self, address: str, writer):
        self.address = address
        self.writer = writer
        self.stats = BatchStats()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(FleetCollector(writer.fleet, self.stats, writer))
        ProcessCollector(namespace="fleetmon_writer", registry=self.registry)  # the writer's own cpu, memory, fds
        self.started_at = time.monotonic()
        self._metrics: dict[str, tuple[tuple, float, bytes]] = {}  # content type -> (state key, when, body)
        self._render_lock = threading.Lock()
        self.server: Server | None = None
        self.thread: threading.Thread | None = None
        self.stopped = threading.Event()

    # --- writer thread ------------------------------------------------------------------------

    def observe_batch(self, batch) -> None:
        self.stats.observe_batch(batch, self.writer.daemon)

    # --- request threads ----------------------------------------------------------------------

    def metrics(self, accept: str) -> tuple[bytes, str]:
        """(body, content type): the text exposition (rendered fast, see ``render_text``), or
        OpenMetrics when that is all the scraper accepts. Each is rendered again only when the fleet
        may have changed (after a batch or a tick) or once an interval: scrapes more frequent than
        ticks (Prometheus every 15s, fleetmon every 60s) or from an HA pair of servers then cost the
        writer nothing. One render at a time: scrapers that come together wait for it and share it
        (thirty at once each rendering held the writer's interpreter, and persisting fell behind)."""
        if _wants_openmetrics_only(accept):
            encoder, content_type = choose_encoder(accept)
        else:
            encoder, content_type = render_text, TEXT_CONTENT_TYPE
        w = self.writer
        d = w.daemon
        max_age = min(METRICS_CACHE_MAX_AGE, float(d.interval if d is not None and d.interval else w.config.interval))
        with self._render_lock:
            key = (self.stats.batches, w.daemon, w.flushed_tick, len(w.fleet.agents))
            now = time.monotonic()
            cached = self._metrics.get(content_type)
            if cached is not None and cached[0] == key and now - cached[1] < max_age:
                return cached[2], content_type
            body = encoder(self.registry)
            self._metrics[content_type] = (key, now, body)
            return body, content_type

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def server_address(self) -> tuple | None:
        return self.server.server_address if self.server is not None else None

    def bind(self) -> Server:
        host, port = parse_http(self.address)
        server = Server((host, port), Handler, bind_and_activate=False, family=_family(host, port))
        try:
            server.server_bind()
            server.server_activate()
        except OSError:
            server.server_close()
            raise
        server.endpoint = self
        return server

    def serve(self, server: Server) -> None:
        self.server = server
        host, port = server.server_address[:2]
        logger.info("HTTP endpoint listening on {}:{} (/metrics, /api/status, /healthz)", host, port)
        server.serve_forever(poll_interval=0.5)

    def _retry_bind(self, first_error: OSError) -> None:
        logger.error("HTTP endpoint cannot listen on {}: {}; retrying every {:g}s", self.address, first_error.strerror or first_error, BIND_RETRY)
        while not self.stopped.wait(BIND_RETRY):
            try:
                server = self.bind()
            except OSError:
                continue
            self.serve(server)
            return

    def close(self) -> None:
        self.stopped.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def start(address: str, writer) -> Endpoint:
    """Serve ``address`` (``[HOST:]PORT``; a bare port binds 127.0.0.1) from a daemon thread.

    ``writer`` is read, never written: ``fleet``, ``daemon``, ``state``, ``config``, ``flushed_tick``,
    ``flushed_at``, ``lost_batches``. If the address is taken, the endpoint logs an error and keeps
    trying in the background: sampling goes on either way."""
    endpoint = Endpoint(address, writer)
    try:
        server = endpoint.bind()
    except OSError as exc:
        target, args = endpoint._retry_bind, (exc,)
    else:
        target, args = endpoint.serve, (server,)
        endpoint.server = server
    endpoint.thread = threading.Thread(target=target, args=args, name="fleetmon-http", daemon=True)
    endpoint.thread.start()
    return endpoint


def _family(host: str, port: int) -> socket.AddressFamily:
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return socket.AF_INET6 if ":" in host else socket.AF_INET
    return infos[0][0] if infos else socket.AF_INET


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64
    endpoint: Endpoint

    def __init__(self, address, handler, bind_and_activate: bool = True, family: socket.AddressFamily = socket.AF_INET):
        self.address_family = family
        super().__init__(address, handler, bind_and_activate)

    def server_activate(self) -> None:
        super().server_activate()
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.busy = threading.BoundedSemaphore(MAX_REQUESTS) if MAX_REQUESTS > 0 else None

    def process_request(self, request, client_address) -> None:
        """A thread per connection, up to MAX_CONNECTIONS: past that (a storm of idle connections,
        which each held a thread and its memory until REQUEST_TIMEOUT: 2,000 took the writer from 58
        to 277 MB) a bare 503 is written and the connection closed, from this thread."""
        if not self.slots.acquire(blocking=False):
            try:
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\n"
                                b"Connection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address) -> None:  # socketserver prints tracebacks to stderr
        logger.opt(exception=True).debug("HTTP: error while serving {}", client_address)


# --- requests ---------------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    server: Server
    timeout = REQUEST_TIMEOUT
    # A request line without a version, or one too broken to tell, is answered as HTTP/1.0 (a status
    # line and headers), not as the base class's HTTP/0.9 (a bare body that no client can read).
    default_request_version = "HTTP/1.0"

    def setup(self) -> None:
        super().setup()
        # The request head is read against a deadline, not only a timeout per read: a client that
        # sends a byte every REQUEST_TIMEOUT - 1 s (slowloris) held its connection slot, and a
        # thread, for as long as it liked; MAX_CONNECTIONS of them kept /healthz at 503 for good.
        self.rfile.close()  # (the makefile() reader: closed, or the socket's fd outlives the request)
        self._head = _HeadReader(self.connection, self.timeout)
        self.rfile = io.BufferedReader(self._head, self.rbufsize if self.rbufsize > 0 else io.DEFAULT_BUFFER_SIZE)

    def handle_one_request(self) -> None:
        self._head.deadline = time.monotonic() + REQUEST_TIMEOUT
        super().handle_one_request()

    def version_string(self) -> str:
        return "fleetmon"

    def do_GET(self) -> None:
        self._respond(head=False)

    def do_HEAD(self) -> None:
        self._respond(head=True)

    def _not_allowed(self) -> None:
        self._send_json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"method {self.command} not allowed; use GET or HEAD"}, extra=[("Allow", "GET, HEAD")])

    # Every method HTTP defines (RFC 9110) other than GET and HEAD; a made-up one (BREW) gets 501.
    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    def _respond(self, head: bool) -> None:
        endpoint = self.server.endpoint
        try:
            url = urlsplit(self.path)
            if url.path == "/healthz":  # never turned away: a probe must get through a storm of scrapers
                self._route(endpoint, url, head)
                return
            busy = self.server.busy
            if busy is None or not busy.acquire(blocking=False):
                self._send_json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"busy: {MAX_REQUESTS} requests in progress; "
                                "try again"}, head, [("Retry-After", "1")])
                return
            try:
                self._route(endpoint, url, head)
            finally:
                busy.release()
        except ApiError as exc:
            self._send_json(exc.status, {"error": exc.message}, head)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:
            logger.opt(exception=True).error("HTTP: {} {} failed", self.command, self.path)
            try:
                self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error (see the fleetmon log)"}, head)
            except OSError:
                pass

    def _route(self, endpoint: Endpoint, url, head: bool) -> None:
        path = url.path
        if path == "/metrics":
            self._send_metrics(endpoint, head)
            return
        params = _params(url.query)
        if path == "/healthz":
            _only(params)
            status, body = health(endpoint.writer, endpoint.started_at)
            self._send_json(status, body, head)
        elif path == "/api/status":
            _only(params)
            self._send_json(HTTPStatus.OK, queries.status(endpoint.writer.state), head)
        elif path == "/api/alerts":
            self._send_json(HTTPStatus.OK, _alerts(endpoint, params), head)
        elif path.startswith("/api/agents/"):
            self._send_json(HTTPStatus.OK, _history(endpoint, path, params), head)
        elif path in ("/", "/api", "/api/"):
            self._send_json(HTTPStatus.OK, {"endpoints": ROUTES}, head)
        else:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no such path {path!r}; see {', '.join(ROUTES)}")

    def _send_metrics(self, endpoint: Endpoint, head: bool) -> None:
        body, content_type = endpoint.metrics(self.headers.get("Accept", ""))
        headers = [("Content-Type", content_type)]
        if _gzip_accepted(self.headers.get("Accept-Encoding", "")):
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        self._send(HTTPStatus.OK, body, headers, head)

    def _send_json(self, status: int, obj, head: bool = False, extra: list[tuple[str, str]] | None = None) -> None:
        body = _json.encode(obj) + b"\n"
        self._send(status, body, [("Content-Type", "application/json"), *(extra or [])], head)

    def _send(self, status: int, body: bytes, headers: list[tuple[str, str]], head: bool) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed requests (bad request line, unknown method, oversized headers) get JSON too."""
        try:
            self.close_connection = True
            text = message or HTTPStatus(code).phrase
            self._send_json(code, {"error": text}, head=self.command == "HEAD")
        except (OSError, ValueError):
            pass

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        logger.debug("HTTP {}: {}", self.address_string(), format % args)


class _HeadReader(io.RawIOBase):
    """A request's socket as read by ``rfile``: each read waits at most until ``deadline`` (set when
    a request starts), so the whole request head must come within REQUEST_TIMEOUT."""

    def __init__(self, sock: socket.socket, timeout: float | None):
        self.sock = sock
        self.timeout = timeout
        self.deadline = time.monotonic() + REQUEST_TIMEOUT

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"request not received within {REQUEST_TIMEOUT:g}s")
        self.sock.settimeout(left if self.timeout is None else min(left, self.timeout))
        try:
            return self.sock.recv_into(buffer)
        finally:
            self.sock.settimeout(self.timeout)  # (what writing the answer waits for)


ROUTES = ["/metrics", "/api/status", "/api/agents/{id}/history?since=&every=", "/api/alerts?since=", "/healthz"]


def _history(endpoint: Endpoint, path: str, params: dict[str, str]):
    parts = path.split("/")  # "", "api", "agents", ID, "history"
    if len(parts) != 5 or parts[4] != "history":
        raise ApiError(HTTPStatus.NOT_FOUND, f"no such path {path!r}; use /api/agents/{{id}}/history")
    agent_id = unquote(parts[3])
    try:
        check_agent_id(agent_id)
    except ValueError as exc:
        raise ApiError(HTTPStatus.BAD_REQUEST, str(exc)) from None
    _only(params, "since", "every")
    since = _duration(params, "since", DEFAULT_SINCE)
    every = _duration(params, "every", None)
    try:
        return queries.history(endpoint.writer.state, agent_id, since, every)
    except queries.UnknownAgent:
        raise ApiError(HTTPStatus.NOT_FOUND, f"unknown agent {agent_id!r}: not registered and no history") from None


def _alerts(endpoint: Endpoint, params: dict[str, str]):
    """As ``fleetmon alerts --json``, with ``agent`` and ``state`` (comma-separated) and ``limit``:
    the newest changes, at most ALERTS_LIMIT (the default too). The writer answers: what it holds
    for a reply is bounded, whatever the window."""
    _only(params, "since", "agent", "state", "limit")
    since = _duration(params, "since", DEFAULT_SINCE)
    agents = set(params["agent"].split(",")) if params.get("agent") else None
    for agent_id in agents or ():
        try:
            check_agent_id(agent_id)
        except ValueError as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"agent: {exc}") from None
    states = set(params["state"].split(",")) if params.get("state") else None
    if states and not states <= {"warning", "error", "ok"}:
        raise ApiError(HTTPStatus.BAD_REQUEST, "state: use warning, error or ok (comma-separated)")
    text = params.get("limit", str(ALERTS_LIMIT))
    try:
        limit = whole_number(text)
    except ValueError:
        limit = -1
    if not 1 <= limit <= ALERTS_LIMIT:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"limit: a whole number from 1 to {ALERTS_LIMIT}, not {text!r}")
    return queries.alerts_window(endpoint.writer.state, since, agents=agents, states=states, limit=limit)[0]


def _params(query: str) -> dict[str, str]:
    try:
        raw = parse_qs(query, strict_parsing=False, max_num_fields=16)
    except ValueError as exc:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"invalid query string: {exc}") from None
    params = {}
    for name, values in raw.items():
        if len(values) != 1:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"parameter {name!r} given {len(values)} times")
        params[name] = values[0]
    return params


def _only(params: dict[str, str], *allowed: str) -> None:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        what = f"use {', '.join(allowed)}" if allowed else "this path takes no parameters"
        raise ApiError(HTTPStatus.BAD_REQUEST, f"unknown parameter {unknown[0]!r} ({what})")


def _duration(params: dict[str, str], name: str, default: float | None) -> float | None:
    """Durations as on the command line (250ms, 30s, 5m, 1h, 1d or seconds), positive."""
    text = params.get(name)
    if text is None:
        return default
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{name}: {exc}") from None
    if value <= 0:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{name}: duration must be positive, not {text!r}")
    return value


def _wants_openmetrics_only(accept: str) -> bool:
    """OpenMetrics only for a client that does not take the text format (Prometheus takes both)."""
    types = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    return "application/openmetrics-text" in types and not any(t in ("text/plain", "text/*", "*/*") for t in types)


def _gzip_accepted(header: str) -> bool:
    """gzip listed with a weight above 0 (``gzip;q=0``, ``gzip; Q=0.000``: refused)."""
    for part in header.split(","):
        coding, *params = part.split(";")
        if coding.strip().lower() != "gzip":
            continue
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    return float(value.strip()) > 0
                except ValueError:
                    return False
        return True
    return False


def health(writer, started_at: float, now: float | None = None) -> tuple[int, dict]:
    """200 while the writer persisted a complete tick within ``LATE_AFTER_INTERVALS`` intervals (or,
    before its first, since the endpoint started); 503 otherwise, saying why."""
    now = time.monotonic() if now is None else now
    d = writer.daemon
    interval = float(d.interval if d is not None and d.interval else writer.config.interval)
    limit = LATE_AFTER_INTERVALS * interval + LATE_SLACK
    flushed_at = getattr(writer, "flushed_at", None) or None
    persisted = writer.flushed_tick if writer.flushed_tick >= 0 else None
    body = {
        "status": "ok",
        "tick": d.tick if d is not None else None,
        "persisted_tick": persisted,
        "last_persisted_ago": round(now - flushed_at, 3) if flushed_at else None,
        "interval": interval,
    }
    if d is not None and not d.running:
        return HTTPStatus.SERVICE_UNAVAILABLE, {**body, "status": "stopping", "reason": "the daemon is shutting down"}
    if writer.write_failing:
        # Sampling goes on and ticks reach the writer (the watchdog is fed: a restart would not make
        # room on a disk), but what it writes does not all reach the state dir.
        errors = writer.fleet.write_errors
        return HTTPStatus.SERVICE_UNAVAILABLE, {
            **body, "status": "write_failing",
            "reason": f"writing to the state dir fails ({errors} write errors; see the log): a full disk?",
        }
    age = now - (flushed_at or started_at)
    if age > limit:
        if flushed_at is None:
            why = f"no tick persisted since the writer started {age:.1f}s ago"
        else:
            why = f"no tick persisted for {age:.1f}s, more than {LATE_AFTER_INTERVALS} intervals of {interval:g}s"
        return HTTPStatus.SERVICE_UNAVAILABLE, {**body, "status": "late", "reason": why}
    return HTTPStatus.OK, body
