"""Framed, non-blocking message channels over Unix sockets, shared by every role.

A frame is a 4-byte big-endian length and a msgpack payload. Sends go to an outbox and never block:
a peer that stops reading (stopped, stuck, restarting) costs memory up to ``max_outbox`` bytes, after
which the oldest whole frames are dropped and counted in ``dropped``. A partially sent frame is always
finished first, so the stream never desynchronises.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections import deque

_LEN = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024
RECONNECT_MAX = 1.0


class ChannelClosed(EOFError):
    """The peer closed the connection (it exited, was killed, or restarted)."""


class FramedConn:
    def __init__(self, sock: socket.socket, max_outbox: int = 256 * 1024 * 1024):
        sock.setblocking(False)
        self.sock = sock
        self.max_outbox = max_outbox
        self._out: deque[memoryview] = deque()
        self._out_bytes = 0
        self._in = bytearray()
        self._eof: str | None = None
        self.dropped = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def want_write(self) -> bool:
        return bool(self._out)

    def send(self, payload: bytes) -> None:
        """Queue one message and send what the socket takes now. Raises ChannelClosed."""
        frame = memoryview(_LEN.pack(len(payload)) + payload)
        self._out.append(frame)
        self._out_bytes += len(frame)
        while self._out_bytes > self.max_outbox and len(self._out) > 1:
            # Drop the oldest frame that has not started to go out (index 1 if 0 is partial).
            victim = self._out[1] if self._partial else self._out[0]
            self._out.remove(victim)
            self._out_bytes -= len(victim)
            self.dropped += 1
        self.flush()

    _partial = False

    def flush(self) -> bool:
        """Send queued bytes until the socket would block. True when the outbox is empty."""
        while self._out:
            head = self._out[0]
            try:
                n = self.sock.send(head)
            except BlockingIOError:
                return False
            except (BrokenPipeError, ConnectionResetError, OSError) as exc:
                if isinstance(exc, OSError) and exc.errno not in (
                    errno.EPIPE,
                    errno.ECONNRESET,
                    errno.ENOTCONN,
                    errno.EBADF,
                ):
                    raise
                raise ChannelClosed(str(exc)) from exc
            self._out_bytes -= n
            if n < len(head):
                self._out[0] = head[n:]
                self._partial = True
                return False
            self._out.popleft()
            self._partial = False
        return True

    def recv(self) -> list[bytes]:
        """Every complete message readable now (possibly none). Raises ChannelClosed at EOF, once
        the messages that arrived before it have been returned."""
        while self._eof is None:
            try:
                chunk = self.sock.recv(1 << 20)
            except BlockingIOError:
                break
            except (ConnectionResetError, OSError) as exc:
                self._eof = str(exc)
                break
            if not chunk:
                self._eof = "end of stream"
                break
            self._in += chunk
            if len(chunk) < (1 << 20):
                break
        out = []
        buf = self._in
        pos = 0
        while len(buf) - pos >= 4:
            (size,) = _LEN.unpack_from(buf, pos)
            if size > MAX_FRAME:
                raise ChannelClosed(f"frame of {size} bytes: stream is corrupt")
            if len(buf) - pos - 4 < size:
                break
            out.append(bytes(buf[pos + 4 : pos + 4 + size]))
            pos += 4 + size
        if pos:
            del buf[:pos]
        if self._eof is not None and not out:
            raise ChannelClosed(self._eof)
        return out

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of Unix stream sockets (for supervisor <-> worker control)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return a, b


def listen_unix(path: str) -> socket.socket:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(256)
    sock.setblocking(False)
    return sock


def answers(path: str) -> bool:
    """Whether something accepts connections on the unix socket at ``path`` (a stale socket file
    of a process that died refuses them)."""
    try:
        connect_unix(path, timeout=1.0).close()
    except OSError:
        return False
    return True


def connect_unix(path: str, timeout: float = 1.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


class Link:
    """A client connection to the writer: reconnects with backoff, keeps a bounded outbox of whole
    messages while the writer is unreachable (the oldest are dropped past ``max_outbox`` bytes and
    counted in ``lost``). ``greeting()`` gives the messages to send first on every connection.

    With ``acks`` (a function that maps a frame from the peer to the cumulative number of messages
    it has taken in on this connection, or None for another frame), every message is kept until the
    peer acknowledges it. When the connection breaks, the acknowledgements that arrived before the
    break are read, and the rest is sent again, first thing on the next connection, after
    ``resend_marker(n)`` (which tells the peer that the next n messages may duplicate ones it already
    took in before it restarted). So a message is delivered, or counted in ``lost``, never dropped
    silently: not even when the peer dies with it unread in its socket buffer."""

    def __init__(self, address: str, greeting, max_outbox: int = 64 * 1024 * 1024, acks=None, resend_marker=None):
        self.address = address
        self.greeting = greeting
        self.max_outbox = max_outbox
        self.acks = acks
        self.resend_marker = resend_marker
        self.conn: FramedConn | None = None
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.unacked: deque[tuple[int, bytes]] = deque()  # (number on this connection, message)
        self.unacked_bytes = 0
        self._sent = 0  # messages sent on this connection (after the greeting)
        self.lost = 0
        self._retry_at = 0.0
        self._backoff = 0.05

    def send(self, payload: bytes) -> None:
        self.pending.append(payload)
        self.pending_bytes += len(payload)
        while self.pending_bytes + self.unacked_bytes > self.max_outbox and len(self.pending) + len(self.unacked) > 1:
            if self.unacked:  # the oldest first; if it still arrives, it is counted lost but kept
                self.unacked_bytes -= len(self.unacked.popleft()[1])
            else:
                self.pending_bytes -= len(self.pending.pop(0))
            self.lost += 1
        self.pump()

    @property
    def retry_at(self) -> float:
        """When a disconnected link tries to connect again (monotonic)."""
        return self._retry_at

    def pump(self) -> None:
        if self.conn is None and not self._connect():
            return
        assert self.conn is not None
        try:
            while self.pending:
                payload = self.pending.pop(0)
                self.pending_bytes -= len(payload)
                if self.acks is not None:
                    self._sent += 1
                    self.unacked.append((self._sent, payload))
                    self.unacked_bytes += len(payload)
                self.conn.send(payload)
            self.conn.flush()
        except ChannelClosed:
            self._drop_connection()

    def _connect(self) -> bool:
        now = time.monotonic()
        if now < self._retry_at:
            return False
        try:
            sock = connect_unix(self.address, timeout=1.0)
        except OSError:
            self._retry_at = now + self._backoff
            self._backoff = min(self._backoff * 2, RECONNECT_MAX)
            return False
        self._backoff = 0.05
        # With acks the Link bounds its memory itself: the stream must never drop a message, or the
        # peer's count would no longer match ours.
        self.conn = FramedConn(sock, self.max_outbox if self.acks is None else 1 << 62)
        self._sent = 0
        try:
            for payload in self.greeting():
                self.conn.send(payload)
            if self.unacked:
                if self.resend_marker is not None:
                    self.conn.send(self.resend_marker(len(self.unacked)))
                resend, self.unacked = self.unacked, deque()
                for _, payload in resend:
                    self._sent += 1
                    self.unacked.append((self._sent, payload))
                    self.conn.send(payload)
        except ChannelClosed:
            self._drop_connection()
            return False
        return True

    def _drop_connection(self) -> None:
        if self.conn is not None:
            if self.acks is not None:
                # Acknowledgements sent before the peer went away are still readable: take them, so
                # that only what it never took in is sent again.
                for _ in range(64):
                    try:
                        frames = self.conn.recv()
                    except ChannelClosed:
                        break
                    if not frames:
                        break
                    self._take(frames)
            else:
                # Frames not yet fully sent on a dead connection are lost with it.
                self.lost += len(self.conn._out) + self.conn.dropped
            self.conn.close()
        self.conn = None
        self._retry_at = time.monotonic() + self._backoff

    def _take(self, frames: list[bytes]) -> list[bytes]:
        """Apply the acknowledgements among ``frames``; return the other frames."""
        other = []
        for frame in frames:
            count = self.acks(frame)
            if count is None:
                other.append(frame)
                continue
            unacked = self.unacked
            while unacked and unacked[0][0] <= count:
                self.unacked_bytes -= len(unacked.popleft()[1])
        return other

    @property
    def want_write(self) -> bool:
        return self.conn is not None and self.conn.want_write

    def recv(self) -> list[bytes]:
        """Messages from the writer readable now; an EOF drops the connection (reconnect later)."""
        if self.conn is None:
            return []
        try:
            frames = self.conn.recv()
        except ChannelClosed:
            self._drop_connection()
            return []
        return self._take(frames) if self.acks is not None else frames

    def fileno(self) -> int | None:
        return self.conn.fileno() if self.conn is not None else None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def flush_until(self, deadline: float) -> None:
        while (self.pending or self.want_write) and time.monotonic() < deadline:
            self.pump()
            if self.pending or self.want_write:
                time.sleep(0.005)
