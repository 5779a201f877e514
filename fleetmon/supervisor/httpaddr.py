"""``--http [HOST:]PORT``: a bare port binds 127.0.0.1 only."""

from __future__ import annotations


def parse_http(text: str) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep:
        host, port = "127.0.0.1", str(text)
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"invalid port in {text!r} (use PORT or HOST:PORT)") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"port {number} out of range")
    return host, number
