"""Config file errors name the key; values parse; flags override the file."""

from __future__ import annotations

import os

import pytest

from fleetmon.supervisor.config import ConfigError, load


@pytest.fixture
def write(tmp_path):
    def write(text: str):
        path = tmp_path / "fleetmon.toml"
        path.write_text(text)
        return path

    return write


def test_defaults():
    c = load(None)
    assert (c.workers, c.interval, c.history_size, c.stall_timeout, c.alert_repeat, c.http) == (0, 60.0, 1440, 10.0, 600.0, None)
    assert c.worker_count == (os.cpu_count() or 1)  # workers = 0: one per CPU
    assert (c.alerts_max_size, c.keep_removed) == (64 * 2**20, 7 * 86400.0)


def test_full_file_parses(write):
    c = load(write("""
state_dir = "/var/lib/fleetmon"
workers = 2
interval = "250ms"
history_size = 100
stall_timeout = "5s"
alert_repeat = 0
alerts_max_size = "1MiB"
keep_removed = 0
http = "127.0.0.1:9464"

[thresholds.default]
cpu_threshold = 90
memory_threshold = "1GiB"
open_files_threshold = 1000
threshold_duration = "5m"

[thresholds.types.web]
memory_threshold = "2GiB"
"""))
    assert (c.workers, c.interval, c.history_size, c.stall_timeout, c.alert_repeat) == (2, 0.25, 100, 5.0, 0.0)
    assert (c.alerts_max_size, c.keep_removed) == (2**20, 0.0)
    d = c.default_thresholds()
    assert (d.cpu_threshold, d.memory_threshold, d.open_files_threshold, d.threshold_duration) == (90, 2**30, 1000, 300.0)
    web = c.thresholds_for_type("web")
    assert web.memory_threshold == 2 * 2**30 and web.cpu_threshold is None
    assert c.thresholds_for_type("db") is None


def test_flags_override_the_file(write):
    c = load(write('workers = 2\ninterval = "10s"\n'), {"workers": 3, "interval": 0.5, "http": None})
    assert c.workers == 3 and c.interval == 0.5


def _refused(write, text: str) -> tuple:
    """(the config file written with ``text``, the one-line message ``load`` refuses it with)."""
    path = write(text + "\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    return path, str(info.value)


@pytest.mark.parametrize(
    "text, key",
    [
        ('workers = "x"', "workers"),
        ("workers = -3", "workers"),
        ("workers = true", "workers"),
        ('interval = "soon"', "interval"),
        ("interval = 0", "interval"),
        ('stall_timeout = "1y"', "stall_timeout"),
        ("alert_repeat = -1", "alert_repeat"),
        ("history_size = 0", "history_size"),
        ('alerts_max_size = "big"', "alerts_max_size"),
        ("alerts_max_size = -1", "alerts_max_size"),
        ("alerts_max_size = 100", "alerts_max_size"),
        ('keep_removed = "a week"', "keep_removed"),
        ("keep_removed = -1", "keep_removed"),
        ('log_format = "xml"', "log_format"),
        ('reader = "ebpf"', "reader"),
        ("colour = 1", "colour"),
        ('[thresholds.default]\ncpu_threshold = "high"', "thresholds.default.cpu_threshold"),
        ("[thresholds.default]\ncpu_threshold = -1", "thresholds.default.cpu_threshold"),
        # TOML has inf and nan: a limit that nothing crosses is a limit turned off without a word
        ("[thresholds.default]\ncpu_threshold = inf", "thresholds.default.cpu_threshold"),
        ("[thresholds.default]\ncpu_threshold = nan", "thresholds.default.cpu_threshold"),
        ("[thresholds.default]\nmemory_threshold = inf", "thresholds.default.memory_threshold"),
        ("[thresholds.default]\nthreshold_duration = inf", "thresholds.default.threshold_duration"),
        ("interval = nan", "interval"),
        ("alert_repeat = inf", "alert_repeat"),
        ('[thresholds.default]\nmemory_threshold = "lots"', "thresholds.default.memory_threshold"),
        ("[thresholds.default]\nopen_files_threshold = 2.5", "thresholds.default.open_files_threshold"),
        ('[thresholds.default]\nthreshold_duration = "x"', "thresholds.default.threshold_duration"),
        ('[thresholds.types.web]\nmemory_threshold = "lots"', "thresholds.types.web.memory_threshold"),
        ('[thresholds.types.web]\nthreshold_duration = "forever"', "thresholds.types.web.threshold_duration"),
        ("[thresholds.types.web]\nbogus = 1", "bogus"),
        ("[thresholds]\nbogus = 1", "bogus"),
    ],
)
def test_errors_name_the_key(write, text, key):
    path, message = _refused(write, text)
    assert key in message, message
    assert str(path) in message
    assert "\n" not in message


def test_nested_key_is_named_in_full(write):
    with pytest.raises(ConfigError, match=r"thresholds\.types\.web\.memory_threshold: invalid size"):
        load(write('[thresholds.types.web]\nmemory_threshold = "lots"\n'))


def test_invalid_toml_and_missing_file(write, tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(write("workers = \n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.toml")


def test_bad_override_names_the_key():
    with pytest.raises(ConfigError, match="workers"):
        load(None, {"workers": 5000})


@pytest.mark.parametrize(
    "text, said",
    [
        ("workerz = 2", "workerz: unknown key (did you mean workers?)"),
        ("[thresholds.default]\ncpu = 90", "thresholds.default.cpu: unknown key (did you mean cpu_threshold?)"),
        ("[thresholds.types.web]\nmemory = 5", "thresholds.types.web.memory: unknown key (did you mean memory_threshold?)"),
        ("colour = 1", "colour: unknown key"),
    ],
)
def test_an_unknown_key_is_named_in_full_with_the_key_it_may_be(write, text, said):
    """msgspec says "Object contains unknown field `cpu`"; an operator wants the key and a guess."""
    path, message = _refused(write, text)
    assert message == f"config file {path}: {said}"


@pytest.mark.parametrize(
    "text, said",
    [
        ('workers = "x"', "workers: Expected `int`, got `str`"),
        ("interval = true", "interval: Expected `float | str`, got `bool`"),
        ('[thresholds.default]\ncpu_threshold = "x"', "thresholds.default.cpu_threshold: Expected `float | null`, got `str`"),
        ('[thresholds.types.web]\nopen_files_threshold = "x"', "thresholds.types.web.open_files_threshold: Expected `int | null`, got `str`"),
    ],
)
def test_a_value_of_the_wrong_type_is_not_called_an_unknown_key(write, text, said):
    """msgspec's "Expected `int`, got `str`" ends with a backtick, as its unknown-field message does:
    it must not be cut and reported as "unknown key"."""
    path, message = _refused(write, text)
    assert message == f"config file {path}: {said}"
    assert "unknown key" not in message
