"""``logs.set_level``: the level changes in place, with no sink removed (a line the writer's HTTP
thread logs meanwhile would be lost with it), and the line about it shows under one of the two levels."""

from __future__ import annotations

import threading

import pytest
from loguru import logger

from fleetmon import logs

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def captured(monkeypatch):
    """A sink like the one logs.configure adds (every level, filtered by logs._at_level), into a list."""
    lines: list[str] = []
    monkeypatch.setattr(logs, "_level_no", logger.level("INFO").no)
    handler = logger.add(lines.append, level="TRACE", filter=logs._at_level, format="{level} {message}")
    yield lines
    logger.remove(handler)


def test_no_line_of_another_thread_is_dropped_while_the_level_changes(captured):
    n = 5000

    def talk():
        for i in range(n):
            logger.info("line {}", i)

    t = threading.Thread(target=talk)
    t.start()
    i = 0
    while t.is_alive():
        logs.set_level("DEBUG" if i % 2 else "INFO")
        i += 1
    t.join()
    got = {line for line in captured if line.startswith("INFO line ")}
    assert len(got) == n and len(captured) == n and i > 10


@pytest.mark.parametrize("old, new", [("INFO", "DEBUG"), ("DEBUG", "ERROR"), ("ERROR", "DEBUG"), ("INFO", "WARNING")])
def test_the_line_about_the_change_shows_at_info(captured, old, new):
    logs.set_level(old)
    captured.clear()
    logs.set_level(new, f"now {new}")
    assert captured == [f"INFO now {new}\n"]
    logger.debug("d")
    logger.error("e")
    assert ("DEBUG d\n" in captured) == (new == "DEBUG") and "ERROR e\n" in captured


def test_a_json_line_naming_a_path_that_is_not_utf8_is_written_whole(monkeypatch):
    """A registry file or config path with bytes that are not UTF-8 (os.fsdecode gives lone
    surrogates) must not make the JSON sink fail: loguru would print its own error report instead,
    and the ERROR about the file would be lost."""
    import json
    import os

    written: list[bytes] = []
    monkeypatch.setattr(os, "write", lambda fd, data: written.append(bytes(data)) or len(data))
    name = os.fsdecode(b"/state/registry/\xff.json")
    logs._write_line({"time": "t", "level": "ERROR", "message": f"registry file {name} is invalid", "process": 1, "file": name})
    assert len(written) == 1 and written[0].endswith(b"\n") and written[0].count(b"\n") == 1
    line = json.loads(written[0])
    assert line["level"] == "ERROR"
    assert line["message"] == "registry file /state/registry/\\xff.json is invalid"
    assert line["file"] == "/state/registry/\\xff.json"
