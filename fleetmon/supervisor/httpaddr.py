"""``--http [HOST:]PORT``: a bare port binds 127.0.0.1 only."""

from __future__ import annotations

import re

_PORT = re.compile(r"\s*[0-9]+\s*")  # ASCII digits (int() also takes other scripts' digits)


def parse_http(text: str) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep:
        host, port = "127.0.0.1", str(text)
    if str(text).strip().startswith("[") and str(text).strip().endswith("]"):  # "[::1]": no port
        raise ValueError(f"invalid address {text!r}: no port (use [HOST]:PORT, e.g. [::1]:9464)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif "[" in host or "]" in host:  # "[::1", "::1]": never binds, retried every 5 s for good
        raise ValueError(f"invalid address {text!r}: unbalanced brackets (use [HOST]:PORT, e.g. [::1]:9464)")
    elif ":" in host:  # "::1" read as host ":" and port 1, which never binds: the daemon retried for good
        raise ValueError(f"invalid address {text!r}: write an IPv6 address in brackets, e.g. [::1]:9464")
    host = host or "127.0.0.1"
    if not _PORT.fullmatch(port):
        raise ValueError(f"invalid port in {text!r} (use PORT or HOST:PORT)")
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"port {number} out of range")
    return host, number
