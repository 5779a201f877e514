"""The benchmarks refuse a bad flag when they parse it: before spawning thousands of processes and
running the baselines (a typo used to be found minutes in, or crash, or be shown as a 0 in the table)."""

from __future__ import annotations

import pytest

from benchmarks import fleet, pipeline, pyspy, scaling, storage


@pytest.mark.parametrize(
    ("parse", "argv", "says"),
    [
        (fleet.parse_args, ["--agents", "0"], "must be at least 1"),
        (fleet.parse_args, ["--agents", "100,x"], "not a whole number"),
        (fleet.parse_args, ["--agents", ","], "at least one number"),
        (fleet.parse_args, ["--workers", "0"], "must be at least 1"),
        (fleet.parse_args, ["--reader", "procfs,nope"], "readers are"),
        (fleet.parse_args, ["--duration", "0"], "positive number of seconds"),
        (fleet.parse_args, ["--duration", "nan"], "positive number of seconds"),
        (fleet.parse_args, ["--busy", "-1"], "must be at least 0"),
        (fleet.parse_args, ["--agents", "10", "--busy", "6", "--memory", "5"], "exceed the smallest fleet"),
        (scaling.parse_args, ["--agents", "1"], "must be at least 2"),
        (scaling.parse_args, ["--rounds", "0"], "must be at least 1"),
        (scaling.parse_args, ["--reader", "psutl"], "readers are"),
        (pipeline.parse_args, ["--workers", "0"], "must be at least 1"),
        (pipeline.parse_args, ["--ticks", "0"], "must be at least 1"),
        (storage.parse_args, ["--agents", "0"], "must be at least 1"),
        (storage.parse_args, ["--interval", "-1"], "positive number of seconds"),
    ],
)
def test_bad_flag_refused_when_parsed(parse, argv, says, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2
    assert says in capsys.readouterr().err


def test_good_flags_parse():
    args = fleet.parse_args(["--agents", "200,1000", "--workers", "1,2", "--reader", "procfs,psutil", "--busy", "3"])
    assert (args.agents, args.workers, args.reader, args.busy) == ([200, 1000], [1, 2], ["procfs", "psutil"], 3)
    assert scaling.parse_args(["--agents", "2", "--rounds", "1"]).agents == 2
    assert pipeline.parse_args(["--warmup", "0"]).warmup == 0


def test_profile_without_py_spy_refused_when_parsed(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(pyspy, "find", lambda: None)
    with pytest.raises(SystemExit) as exc:
        fleet.parse_args(["--profile", str(tmp_path)])
    assert exc.value.code == 2
    assert "--profile needs py-spy" in capsys.readouterr().err
    monkeypatch.setattr(pyspy, "find", lambda: "/usr/bin/py-spy")
    assert fleet.parse_args(["--profile", str(tmp_path)]).profile == tmp_path


def test_py_spy_found_beside_this_python(monkeypatch, tmp_path):
    """A virtualenv's bin/ is not on PATH when the benchmark runs as .venv/bin/python -m ...."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    spy = bin_dir / "py-spy"
    spy.write_text("#!/bin/sh\n")
    spy.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))
    monkeypatch.setattr(pyspy.sys, "executable", str(bin_dir / "python"))
    assert pyspy.find() == str(spy)
