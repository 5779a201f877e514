"""Options given before the command (in process: argparse's own messages, no daemon involved)."""

import pytest

from fleetmon.supervisor import cli


def _error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main(list(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # argparse took the typo's value for the command: "invalid choice: 'x'"
        (["--stat-dir", "x", "status"], "unrecognized arguments: --stat-dir (did you mean --state-dir?)"),
        (["--stat-dir=x", "status"], "unrecognized arguments: --stat-dir (did you mean --state-dir?)"),
        # "invalid choice: '2'"
        (["--workers", "2", "run"], "--workers is an option of fleetmon run: put it after the command (fleetmon run --workers ...)"),
        # "unrecognized arguments: --json (did you mean --json?)"
        (["--json", "status"], "--json is an option of fleetmon status: put it after the command (fleetmon status --json ...)"),
        (["--state-dir", "/nonexistent", "--json", "status"], "--json is an option of fleetmon status"),
        (["--pid", "3", "agents", "add", "x"], "--pid is an option of fleetmon agents add: put it after the command"),
        (["--since", "1h", "history", "x"], "--since is an option of fleetmon history: put it after"),
        (["--since", "1h"], "--since is an option of fleetmon history, fleetmon alerts: put it after the command"),
        (["--verison"], "unrecognized arguments: --verison (did you mean --version?)"),
        (["--state-dir", "/nonexistent", "frob"], "invalid choice: 'frob'"),
    ],
)
def test_an_option_before_the_command_is_named_with_where_it_goes(capsys, argv, message):
    assert message in _error(capsys, *argv)


def test_options_of_fleetmon_itself_before_the_command_still_work(capsys, tmp_path):
    missing = tmp_path / "none"
    assert cli.main(["--state-dir", str(missing), "status", "--json"]) == 0
    assert cli.main([f"--state-dir={missing}", "agents", "ls"]) == 0
    assert not missing.exists()


def test_state_dir_between_agents_and_its_action(capsys, tmp_path):
    """``fleetmon agents --state-dir DIR ls``: argparse took DIR for the action ("invalid choice")."""
    missing = tmp_path / "none"
    assert cli.main(["agents", "--state-dir", str(missing), "ls", "--json"]) == 0
    assert capsys.readouterr().out == '{"agents":[]}\n'
    assert not missing.exists()
    state = tmp_path / "state"
    assert cli.main(["--state-dir", str(missing), "agents", "--state-dir", str(tmp_path / "other"), "add", "a", "--pid", "1",
                     "--state-dir", str(state)]) == 0  # (the last one given wins)
    assert (state / "registry" / "a.json").exists() and not missing.exists()


def test_an_abbreviation_of_fleetmon_s_own_option_before_the_command_still_works(capsys, tmp_path):
    """argparse takes a unique prefix of a long option (``--state`` for ``--state-dir``): it worked
    before the command, and must not be refused, nor called ``alerts --state``, as misplaced."""
    missing = tmp_path / "none"
    assert cli.main(["--state", str(missing), "status", "--json"]) == 0
    assert cli.main([f"--state-d={missing}", "agents", "ls"]) == 0
    assert not missing.exists()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli.main(["--vers"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("fleetmon ")
    assert "--json is an option of fleetmon status" in _error(capsys, "--state", str(missing), "--json", "status")


def test_demo_help_gives_its_own_default_state_dir():
    """demo runs in a fresh temporary directory unless given --state-dir: its --help said the
    default was $FLEETMON_STATE_DIR, the production one under the shipped units."""
    demo = cli._subcommands(cli.build_parser())["demo"]
    text = " ".join(demo.format_help().split())
    assert "default: a fresh temporary directory" in text
    assert "default: $FLEETMON_STATE_DIR" not in text


def test_run_help_says_http_is_off_by_default():
    """Every other option of run gives its default; --http, off unless given, did not say so."""
    run = cli._subcommands(cli.build_parser())["run"]
    assert "(default: off; a bare port binds 127.0.0.1)" in " ".join(run.format_help().split())
