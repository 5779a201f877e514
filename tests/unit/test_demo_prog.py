"""How the demo tells the user to call fleetmon again: a command the shell can run from where they are."""

from __future__ import annotations

import os
import sys

import pytest

from fleetmon.supervisor.demo import _prog


@pytest.fixture
def script(tmp_path, monkeypatch):
    path = tmp_path / "venv" / "bin" / "fleetmon"
    path.parent.mkdir(parents=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(path)])
    monkeypatch.setenv("PATH", "/nonexistent")
    return path


def test_below_the_working_directory_a_relative_path(script, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert _prog() == os.path.join("venv", "bin", "fleetmon")


@pytest.mark.parametrize("where", ["/", "elsewhere"])
def test_from_the_root_or_elsewhere_the_absolute_path(script, monkeypatch, tmp_path, where):
    if where == "elsewhere":
        (tmp_path / "elsewhere").mkdir()
        where = tmp_path / "elsewhere"
    monkeypatch.chdir(where)
    assert _prog() == str(script)  # not "tmp/.../fleetmon" from /, nor "../venv/bin/fleetmon"


def test_the_one_on_path_is_just_fleetmon(script, monkeypatch):
    monkeypatch.setenv("PATH", str(script.parent))
    assert _prog() == "fleetmon"
