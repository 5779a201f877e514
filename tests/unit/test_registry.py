"""Registry entries: ``<state>/registry/<id>.json`` validation, reading and rescans."""

from __future__ import annotations

import json
import os
import stat

import pytest
from loguru import logger

from fleetmon.supervisor import registry as reg
from fleetmon.wire import Thresholds


def entry_bytes(**fields) -> bytes:
    return json.dumps(fields).encode()


def test_valid_entries():
    e = reg.parse_entry(entry_bytes(id="web-1", pid=123), "web-1.json")
    assert (e.id, e.type, e.pid, e.pidfile, e.thresholds) == ("web-1", "default", 123, None, None)
    e = reg.parse_entry(
        entry_bytes(id="a.b_c", type="web", pidfile="/run/x.pid", thresholds={"cpu_threshold": 80, "threshold_duration": 300}),
        "a.b_c.json",
    )
    assert e.pidfile == "/run/x.pid" and e.type == "web"
    assert e.thresholds.cpu_threshold == 80 and e.thresholds.memory_threshold is None


@pytest.mark.parametrize(
    "agent_id",
    ["", "-a", ".a", "_a", "a/b", "../a", "a b", "a\nb", "a\n", "é", "x" * 129, "a:b", "a*"],
)
def test_bad_ids_are_refused(agent_id):
    with pytest.raises(reg.InvalidEntry, match="invalid agent id"):
        reg.parse_entry(entry_bytes(id=agent_id, pid=1), f"{agent_id}.json")


def test_longest_id_is_accepted():
    agent_id = "a" * 128
    assert reg.parse_entry(entry_bytes(id=agent_id, pid=1), f"{agent_id}.json").id == agent_id


def test_id_must_match_the_file_name():
    with pytest.raises(reg.InvalidEntry, match="does not match the file name"):
        reg.parse_entry(entry_bytes(id="a", pid=1), "b.json")
    with pytest.raises(reg.InvalidEntry, match="does not match"):
        reg.parse_entry(entry_bytes(id="a", pid=1), "a.json.json")


@pytest.mark.parametrize("pid", [0, -1, True, False, "12", 1.0, 1.5, [], {}, 2**31, 10**20])
def test_bad_pids_are_refused(pid):
    with pytest.raises(reg.InvalidEntry, match="pid"):
        reg.parse_entry(entry_bytes(id="a", pid=pid), "a.json")


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"id": "a", "pid": 1, "pidfile": "/x.pid"}, "exactly one of pid and pidfile"),
        ({"id": "a"}, "exactly one of pid and pidfile"),
        ({"id": "a", "pid": None, "pidfile": None}, "exactly one of pid and pidfile"),
        ({"id": "a", "pid": 1, "colour": "red"}, "unknown field `colour`"),
        ({"id": "a", "pid": 1, "thresholds": {"cpu": 80}}, "unknown field `cpu`"),
        ({"id": "a", "pid": 1, "thresholds": {"cpu_threshold": -1}}, "cpu_threshold must be a finite number from 0 to"),
        ({"id": "a", "pid": 1, "thresholds": {"memory_threshold": "1GiB"}}, "memory_threshold"),
        ({"id": "a", "pidfile": ""}, "pidfile"),
        # read from wherever the daemon was started: another process, a restart counted, no warning
        ({"id": "a", "pidfile": "run/agent.pid"}, "pidfile must be an absolute path, not 'run/agent.pid'"),
        ({"id": "a", "pidfile": "./agent.pid"}, "pidfile must be an absolute path"),
        ({"id": "a", "pid": 1, "type": ""}, "type"),
        ({"id": "a", "pid": 1, "type": "web\nworker"}, "type must be 1-128 printable characters"),
        ({"id": "a", "pid": 1, "type": "\x1b[2Jweb"}, "type must be 1-128 printable characters"),
        ({"pid": 1}, "id"),
    ],
)
def test_invalid_entries(fields, match):
    with pytest.raises(reg.InvalidEntry, match=match):
        reg.parse_entry(entry_bytes(**fields), "a.json")


def test_an_infinite_threshold_is_refused_not_taken_for_off():
    """A limit nothing can cross would be a limit off without a word. From a file, msgspec refuses
    1e999 already; an entry built in code (``agents add``) is checked too."""
    data = b'{"id": "a", "pid": 1, "thresholds": {"cpu_threshold": 1e999}}'
    with pytest.raises(reg.InvalidEntry, match="cpu_threshold"):
        reg.parse_entry(data, "a.json")
    for value in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="cpu_threshold must be a finite number"):
            reg.RegistryEntry("a", "default", 1, None, Thresholds(cpu_threshold=value))
    # past a signed 64-bit int: it could not be sent to the writer (the daemon's greeting failed)
    data = b'{"id": "a", "pid": 1, "thresholds": {"open_files_threshold": 99999999999999999999}}'
    with pytest.raises(reg.InvalidEntry, match="open_files_threshold"):
        reg.parse_entry(data, "a.json")
    with pytest.raises(ValueError, match="memory_threshold must be a finite number from 0 to"):
        reg.RegistryEntry("a", "default", 1, None, Thresholds(memory_threshold=2**63))


# b'...\xff' inside a string: not UTF-8, which msgspec reports as UnicodeDecodeError (a crash of the
# supervisor's registry scan, before)
@pytest.mark.parametrize("data", [b"", b"nope", b"[]", b'{"id": "a", "pid": 1', b"\xff\xfe", b'{"id": "a\xff", "pid": 1}'])
def test_malformed_json(data):
    with pytest.raises(reg.InvalidEntry):
        reg.parse_entry(data, "a.json")


def test_invalid_entry_message_is_one_line():
    with pytest.raises(reg.InvalidEntry) as info:
        reg.parse_entry(entry_bytes(id="a", pid="x"), "a.json")
    assert "\n" not in str(info.value)


def test_write_then_read_round_trip(tmp_path):
    d = tmp_path / "registry"
    e = reg.RegistryEntry("a1", "web", 42, None, None)
    path = reg.write_entry(d, e)
    assert path == d / "a1.json"
    assert oct(os.stat(d).st_mode & 0o777) == oct(0o700)
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o600)
    assert reg.parse_entry(path.read_bytes(), "a1.json") == e
    assert json.loads(path.read_text()) == {"id": "a1", "type": "web", "pid": 42}
    assert [p.name for p in d.iterdir()] == ["a1.json"]  # no temp file left behind
    assert reg.remove_entry(d, "a1") is True
    assert reg.remove_entry(d, "a1") is False


def test_read_all_skips_invalid_files_and_names_them(tmp_path):
    d = tmp_path / "registry"
    d.mkdir()
    (d / "good.json").write_bytes(entry_bytes(id="good", pid=5))
    (d / "bad.json").write_bytes(entry_bytes(id="bad", pid=0))
    (d / "other.json").write_bytes(entry_bytes(id="mismatch", pid=5))
    (d / "notes.txt").write_text("ignored")
    (d / ".tmp.json").write_text("ignored: hidden temp file")
    entries, errors = reg.read_all(d)
    assert list(entries) == ["good"]
    assert set(errors) == {"bad.json", "other.json"}
    assert "pid" in errors["bad.json"] and "does not match" in errors["other.json"]


def test_scanner_skips_an_invalid_file_with_one_error_and_picks_up_changes(tmp_path):
    d = tmp_path / "registry"
    d.mkdir()
    records = []
    sink = logger.add(lambda m: records.append(m.record), level="ERROR")
    try:
        (d / "a.json").write_bytes(entry_bytes(id="a", pid=1))
        (d / "b.json").write_bytes(entry_bytes(id="b", pid=-4))
        scanner = reg.RegistryScanner(d)
        assert scanner.scan(force=True) is True
        assert set(scanner.entries) == {"a"}
        errors = [r for r in records if "b.json" in r["message"]]
        assert len(errors) == 1
        assert scanner.scan(force=True) is False  # unchanged: not read again, not logged again
        assert len([r for r in records if "b.json" in r["message"]]) == 1
        (d / "b.json").write_bytes(entry_bytes(id="b", pid=7, type="fixed"))
        assert scanner.scan(force=True) is True
        assert scanner.entries["b"].pid == 7
        (d / "a.json").unlink()
        assert scanner.scan(force=True) is True
        assert set(scanner.entries) == {"b"}
    finally:
        logger.remove(sink)


def test_a_file_that_was_valid_and_is_not_now_keeps_its_last_entry(tmp_path):
    """A file written in place, caught half-written, or an edit gone wrong: the agent must not be
    removed (its open alerts closed as removed and reopened with a new since)."""
    d = tmp_path / "registry"
    d.mkdir()
    records = []
    sink = logger.add(lambda m: records.append(m.record["message"]), level="ERROR")
    try:
        (d / "a.json").write_bytes(entry_bytes(id="a", pid=1))
        scanner = reg.RegistryScanner(d)
        scanner.scan(force=True)
        for bad in (b"", b'{"id": "a", "pi', entry_bytes(id="a", pid=-4)):
            (d / "a.json").write_bytes(bad)
            scanner.scan(force=True)
            assert scanner.entries["a"].pid == 1, bad
        assert len(records) == 3 and all("keeps its last valid entry" in r for r in records)
        (d / "a.json").write_bytes(entry_bytes(id="a", pid=2))
        assert scanner.scan(force=True) is True and scanner.entries["a"].pid == 2
        (d / "a.json").unlink()
        assert scanner.scan(force=True) is True and scanner.entries == {}
    finally:
        logger.remove(sink)


def test_scanner_does_not_follow_symlinks(tmp_path):
    d = tmp_path / "registry"
    d.mkdir()
    target = tmp_path / "elsewhere.json"
    target.write_bytes(entry_bytes(id="link", pid=1))
    (d / "link.json").symlink_to(target)
    scanner = reg.RegistryScanner(d)
    scanner.scan(force=True)
    assert scanner.entries == {}
    # run --check and agents ls say it in the daemon's words, not "Too many levels of symbolic links"
    assert reg.read_all(d) == ({}, {"link.json": "a symlink (symlinks are not followed)"})


def test_registry_changes_are_summed_up_in_one_line():
    registry_changes = reg.registry_changes

    def entries(*ids, pid=1):
        return {i: reg.RegistryEntry(i, "default", pid) for i in ids}

    before = entries("a", "b", "c")
    after = {**entries("a", "d"), **entries("b", pid=2)}
    assert registry_changes(before, after) == "3 agents: added d; removed c; changed b"
    assert registry_changes({}, entries("x")) == "1 agent: added x"
    many = entries(*(f"n{i}" for i in range(8)))
    assert registry_changes({}, many, names=3) == "8 agents: added n0, n1, n2 and 5 more"
    assert registry_changes(before, before) == "3 agents"


def test_import_reads_json_lines_concatenated_files_and_the_ls_document():
    one = b'{"id": "a", "pid": 1}\n{"id": "b", "pidfile": "/run/b.pid", "type": "web"}\n'
    assert [e.id for e in reg.parse_many(one)] == ["a", "b"]
    pretty = reg.encode_entry(reg.RegistryEntry("a", None, 1)) + reg.encode_entry(reg.RegistryEntry("b", None, 2))
    assert b"\n  " in pretty and [e.pid for e in reg.parse_many(pretty)] == [1, 2]  # cat registry/*.json
    doc = b'{\n  "agents": [{"id": "a", "pid": 1}, {"id": "b", "pid": 2}]\n}'
    assert [e.id for e in reg.parse_many(doc)] == ["a", "b"]


@pytest.mark.parametrize(
    "data, match",
    [
        (b'{"id": "a", "pid": 1}\n{"id": "b", "pid": -1}\n', "line 2: pid must be a positive integer"),
        (b'{"id": "a", "pid": 1}\n\n{"id": "a", "pid": 2}\n', "line 3: id 'a' given a second time"),
        (b'{"id": "a", "pid": 1}\n{"id": "b\xff", "pid": 2}\n', "line 2: not UTF-8"),
        (b'{"id": "a", "pid": 1}\n{"id": "b", "pid"\n', "line 2: not JSON"),
        (b'{"agents": [{"id": "a", "pid": 1}, {"id": "b"}]}', 'entry 2 of "agents": an entry names exactly one'),
        (b'{"agents": 3}', '"agents" is not a list'),
        (b"[1, 2]", "line 1: Expected `object`"),
        (b"  \n ", "no entries"),
        (b'{"id": "a", "pid": 1}\n{"id": "b", "pidfile": "b.pid"}\n', "line 2: pidfile must be an absolute path"),
    ],
)
def test_import_names_the_first_bad_entry(data, match):
    with pytest.raises(reg.InvalidEntry, match=match):
        reg.parse_many(data)


def test_import_writes_all_or_none_on_a_full_disk(tmp_path, monkeypatch):
    from fleetmon.store import fsutil

    d = tmp_path / "registry"
    entries = [reg.RegistryEntry(f"e{i}", None, i + 1) for i in range(6)]
    real, calls = fsutil._write_temp, []

    def failing(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(*args, **kw)

    monkeypatch.setattr(fsutil, "_write_temp", failing)
    with pytest.raises(OSError):
        reg.write_entries(d, entries)
    assert list(d.iterdir()) == []  # not one entry, and no temp file left
    monkeypatch.setattr(fsutil, "_write_temp", real)
    reg.write_entries(d, entries)
    assert sorted(p.name for p in d.iterdir()) == [f"e{i}.json" for i in range(6)]


def test_a_failed_write_of_one_entry_names_its_file(tmp_path, monkeypatch):
    """`agents add` on a full disk said only "[Errno 28] No space left on device"."""
    from fleetmon.store import fsutil

    def full(*args, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fsutil, "_write_temp", full)
    with pytest.raises(OSError) as info:
        reg.write_entry(tmp_path / "registry", reg.RegistryEntry("a1", None, 5))
    assert info.value.errno == 28 and info.value.filename == str(tmp_path / "registry" / "a1.json")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: it is what root does in another user's state dir")
def test_root_writes_entries_owned_by_the_registry_s_owner(tmp_path):
    """sudo fleetmon agents add into a user's state dir wrote a root-owned 0600 file that the user's
    daemon could not read (the agent was skipped with an error)."""
    registry = tmp_path / "registry"
    registry.mkdir(mode=0o700)
    os.chown(registry, 4242, 4343)
    path = reg.write_entry(registry, reg.RegistryEntry("one", None, 5))
    reg.write_entries(registry, [reg.RegistryEntry(f"m{i}", None, 5) for i in range(6)])  # (the bulk path)
    for p in [path, *registry.glob("m*.json")]:
        st = os.stat(p)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4242, 4343, 0o600), p
    os.chown(registry, 0, 0)
    assert os.stat(reg.write_entry(registry, reg.RegistryEntry("two", None, 5))).st_uid == 0


def test_polling_an_unchanged_registry_between_ticks_costs_one_stat_of_the_directory(tmp_path, monkeypatch):
    """The supervisor polls the registry about once a second between ticks: the full rescan every
    FULL_RESCAN (for files edited in place) is the ticks' (10,000 entries: ~75 ms a pass; six a
    minute at a 60 s interval cost more than sampling the fleet once)."""
    import time

    d = tmp_path / "registry"
    reg.write_entries(d, [reg.RegistryEntry(f"a{i}", None, 1000 + i) for i in range(200)])
    old = time.time() - 3600
    os.utime(d, (old, old))  # the directory unchanged for an hour
    scanner = reg.RegistryScanner(d)
    clock = [1000.0]
    monkeypatch.setattr(reg.time, "monotonic", lambda: clock[0])
    assert scanner.scan(force=True)  # the tick
    calls = []
    real = os.lstat
    monkeypatch.setattr(reg.os, "lstat", lambda p, *a, **k: (calls.append(p), real(p, *a, **k))[1])
    for _ in range(59):  # polled once a second between ticks, as Arbiter._scan_registry does
        clock[0] += 1.0
        assert not scanner.scan(full=False)
    assert calls == []
    assert not scanner.scan()  # a tick: the full rescan is due
    assert len(calls) == 200


def test_agents_add_with_a_pidfile_path_that_is_not_utf8_exits_2_and_writes_nothing(tmp_path):
    """A path with bytes that are not UTF-8 reaches Python as lone surrogates; JSON (a registry
    file) cannot hold it. It is bad input (exit 2, one line), not a traceback (exit 1)."""
    import subprocess

    from tests.helpers import CLI

    state = tmp_path / "state"
    pidfile = os.fsencode(str(tmp_path)) + b"/\xff.pid"
    proc = subprocess.run(
        [*(os.fsencode(a) for a in CLI), b"agents", b"add", b"w", b"--pidfile", pidfile, b"--state-dir", os.fsencode(str(state))],
        capture_output=True, stdin=subprocess.DEVNULL, timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert b"Traceback" not in proc.stderr and proc.stderr.count(b"\n") == 1 and b"UTF-8" in proc.stderr
    assert not (state / "registry" / "w.json").exists()
