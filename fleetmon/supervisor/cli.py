"""The ``fleetmon`` command line. Exit codes: 0 success, 1 runtime failure, 2 bad input."""

from __future__ import annotations

import argparse
import errno
import math
import os
import sys
from pathlib import Path

import msgspec

from fleetmon import __version__
from fleetmon.units import LOG_LEVELS, MAX_LIMIT, check_agent_id, check_agent_type, parse_duration, parse_size, whole_number

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2

_json = msgspec.json.Encoder()


class BadInput(Exception):
    """Exit 2 with this one-line message."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse would print the whole usage)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_duration(text: str) -> float:
    value = _duration(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"duration must be positive, not {text!r}")
    return value


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _path(text: str) -> Path:
    """A leading ~ is the home directory, also where no shell expanded it (--state-dir=~/x)."""
    return Path(text).expanduser()


def _pid(text: str) -> int:
    try:
        pid = whole_number(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"pid must be a positive integer, not {text!r}") from None
    if pid <= 0:
        raise argparse.ArgumentTypeError(f"pid must be a positive integer, not {text!r}")
    return pid


def _count(text: str) -> int:
    try:
        n = whole_number(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if not 0 <= n <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be from 0 to {MAX_LIMIT}: {text!r}")
    return n


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of percent, not {text!r}") from None
    if not math.isfinite(value) or value < 0:  # inf or nan would turn the limit off without a word
        raise argparse.ArgumentTypeError(f"must be a finite number, not negative: {text!r}")
    return value


def _agent_id(text: str) -> str:
    try:
        return check_agent_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _agent_type(text: str) -> str:
    try:
        return check_agent_type(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LOG_LEVELS)}, not {text!r}")
    return level


STATE_DIR_HELP = "state directory (default: $FLEETMON_STATE_DIR, else $XDG_STATE_HOME/fleetmon, else ~/.local/state/fleetmon)"


def build_parser() -> Parser:
    # --state-dir goes after the command (the contract) or before it; after wins. The subcommands'
    # copy has no default, so that it does not overwrite one given before the command.
    state_parent = Parser(add_help=False)
    state_parent.add_argument("--state-dir", type=_path, metavar="DIR", default=argparse.SUPPRESS, help=STATE_DIR_HELP)
    p = Parser(
        prog="fleetmon",
        description="Watch the resource usage of a fleet of long-running agent processes on this host, keep a "
        "bounded history per agent, and warn, then error, when an agent stays over its limits.",
        epilog="Start with `fleetmon demo`. Durations: 250ms, 30s, 5m, 1h, 1d or seconds. "
        "Sizes: 512MiB, 1GiB, 100MB or bytes. Exit codes: 0 ok, 1 runtime failure, 2 bad input.",
    )
    p.add_argument("--version", action="version", version=f"fleetmon {__version__}")
    p.add_argument("--state-dir", type=_path, metavar="DIR", help=STATE_DIR_HELP)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    run = sub.add_parser(
        "run", parents=[state_parent], help="run the daemon in the foreground",
        description="Run the daemon in the foreground: a supervisor, N sampling workers and one writer. "
        "Logs go to stderr. SIGTERM or SIGINT drain and exit 0; SIGHUP reloads the config and the registry.",
    )
    run.add_argument("--config", type=Path, metavar="FILE", help="TOML config file (flags override it)")
    run.add_argument("--workers", type=_count, metavar="N", help="sampling processes (default and 0: one per CPU; more than the CPUs only helps when reads block)")
    run.add_argument("--interval", type=_positive_duration, metavar="DUR", help="time between samples (default 60s)")
    run.add_argument("--http", metavar="HOST:PORT", help="serve /metrics and the JSON API (default: off; a bare port binds 127.0.0.1)")
    run.add_argument("--log-level", type=_log_level, metavar="LEVEL", help="DEBUG, INFO (default), WARNING or ERROR (also loguru's TRACE, SUCCESS, CRITICAL)")
    run.add_argument("--log-format", choices=["text", "json"], help="text (default) or one JSON object per line")
    run.add_argument(
        "--check", action="store_true",
        help="check the config and flags, say what they amount to and what the registry holds, and exit "
        "(0: valid, 2: not) without starting: before a reload or a restart",
    )

    # (--state-dir here too: `fleetmon agents --state-dir DIR ls` took DIR for the action)
    agents = sub.add_parser(
        "agents", parents=[state_parent], help="add, import, remove and list registered agents",
        description="Manage the registry: <state>/registry/<id>.json.",
    )
    asub = agents.add_subparsers(dest="agents_command", metavar="ACTION", parser_class=Parser, required=True)
    add = asub.add_parser(
        "add", parents=[state_parent], help="register an agent (or point it at a new process)",
        description="Register an agent to watch, by pid or by pidfile (re-read every tick). "
        "Registering an existing id again replaces its entry; a new pid counts as a restart.",
    )
    add.add_argument("id", type=_agent_id, metavar="ID", help="agent id: 1-128 of A-Z a-z 0-9 . _ -")
    target = add.add_mutually_exclusive_group(required=True)
    target.add_argument("--pid", type=_pid, help="the agent's process id")
    target.add_argument("--pidfile", metavar="PATH", help="a file holding the agent's pid")
    add.add_argument("--type", default="default", help="agent type, selects [thresholds.types.TYPE] (default: default)")
    add.add_argument("--cpu", type=_percent, metavar="PERCENT", help="cpu threshold, percent of one CPU (0 = off)")
    add.add_argument("--memory", type=_size, metavar="SIZE", help="RSS threshold, e.g. 512MiB (0 = off)")
    add.add_argument("--open-files", type=_count, metavar="N", help="open file descriptor threshold (0 = off)")
    add.add_argument("--for", dest="duration", type=_duration, metavar="DUR", help="how long over before error (0 = at once)")
    rm = asub.add_parser(
        "rm", parents=[state_parent], help="unregister an agent (its history is kept for keep_removed, default 7d)",
        description="Delete <state>/registry/ID.json: the daemon stops sampling the agent at its next registry scan "
        "and closes its open alerts (reason removed). Its history and metadata stay queryable (history, alerts) for "
        "keep_removed (default 7d), then the daemon deletes them; registered again before then, it goes on with its "
        "history. Exit 2 if the id is not registered.",
    )
    rm.add_argument("id", type=_agent_id, metavar="ID", help="the agent to unregister")
    imp = asub.add_parser(
        "import", parents=[state_parent], help="register many agents from a file (JSON Lines, or agents ls --json)",
        description="Register every agent in FILE (- for standard input): registry entries as JSON objects one after "
        'another, as in <state>/registry/<id>.json ({"id": "web-1", "pid": 123} or {"id": "w", "pidfile": '
        '"/run/w.pid", "type": "web", "thresholds": {...}}; JSON Lines, or `cat registry/*.json`), or the document '
        "`fleetmon agents ls --json` prints. All are checked first: one bad entry and nothing is written (exit 2). "
        "An id already registered is replaced.",
    )
    imp.add_argument("file", metavar="FILE", help="the entries; - reads standard input")
    sv = asub.add_parser(
        "supervisord-listener", parents=[state_parent], help="a supervisord event listener that registers its programs as they start",
        description="Run by supervisord as an [eventlistener:...] with events=PROCESS_STATE_RUNNING (contrib/supervisord/"
        "fleetmon-agents.conf): each time a process of a program matching --program starts, its registry entry is "
        "written with its pid, as `agents add` would (a new pid is a restart). The id is the program's name (web-1), "
        "or GROUP.PROCESS for a process of a group with numprocs (agents.agents_00). Speaks supervisord's listener "
        "protocol on stdin/stdout; logs to stderr.",
    )
    sv.add_argument(
        "--program", action="append", required=True, metavar="GLOB",
        help="programs to register, matched against the group, the process name or GROUP:PROCESS, e.g. 'agent-*' (repeat for several)",
    )
    sv.add_argument("--type", type=_agent_type, help="agent type for the entries (default: the entry's own, else default)")
    ls = asub.add_parser(
        "ls", parents=[state_parent], help="list registered agents",
        description="List the registry: each agent's id, type, pid or pidfile and its own thresholds, and the files "
        "that are not valid entries (with why). --json prints what agents import reads back.",
    )
    ls.add_argument("--json", action="store_true", help='print {"agents": [ENTRY, ...]}')

    st = sub.add_parser(
        "status", parents=[state_parent], help="every agent's status, last sample and alerts",
        description="Every registered agent: status (running, exited, not_running, stalled), pid, restarts, last "
        "sample and open alerts, and the daemon's own state, then the fleet's counts by status and alert. Read from "
        "the state dir (status.json, up to a second behind the daemon), so it works whether or not the daemon runs. "
        "With thousands of agents: `status --problems`, or `status --sort cpu --limit 20`.",
    )
    st.add_argument("--json", action="store_true", help="machine-readable output (see README); the options below filter it too")
    st.add_argument("--problems", action="store_true", help="only agents not running or with an alert open")
    st.add_argument("--type", action="append", metavar="TYPE", help="only agents of this type (repeat for several)")
    st.add_argument(
        "--sort", choices=("id", "cpu", "memory", "fds"), default="id",
        help="order of the rows: id (default), or busiest first by cpu, memory (RSS) or fds",
    )
    st.add_argument("--limit", type=_count, default=0, metavar="N", help="at most N rows, after --sort (default 0: all)")
    st.add_argument(
        "--exit-code", action="store_true",
        help="exit 1 when any agent is shown or no daemon is recording (with --problems: a check for monit, "
        "Nagios or cron), else 0",
    )

    hist = sub.add_parser(
        "history", parents=[state_parent], help="an agent's resource usage history",
        description="An agent's samples from the last --since, oldest first; with --every, one point per bucket "
        "(aligned to multiples of DUR since the epoch) holding each metric's mean. A registered agent without "
        "samples yet prints none (exit 0); an id neither registered nor with a history exits 2.",
    )
    hist.add_argument("id", type=_agent_id, metavar="ID", help="the agent: registered, or removed with its history kept")
    hist.add_argument("--since", type=_positive_duration, default=3600.0, metavar="DUR", help="how far back (default 1h)")
    hist.add_argument("--every", type=_positive_duration, metavar="DUR", help="mean per epoch-aligned bucket of this width")
    fmt = hist.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help='print {"agent_id": ID, "points": [...]}')
    fmt.add_argument("--csv", action="store_true", help="print CSV with a header; null is an empty cell")
    fmt.add_argument("--plot", type=Path, metavar="FILE.png", help="draw cpu, memory, fds and threads to a PNG")

    al = sub.add_parser(
        "alerts", parents=[state_parent], help="alert state changes",
        description="Alert state changes (warning, error, ok) from the last --since, oldest first, from "
        "alerts.jsonl (and alerts.jsonl.1, where it goes at alerts_max_size): one per change, with the value, the "
        "threshold and the episode's start (since).",
    )
    al.add_argument("--since", type=_positive_duration, default=3600.0, metavar="DUR", help="how far back (default 1h)")
    al.add_argument("--json", action="store_true", help='print {"events": [...]} (filtered by the options below too)')
    al.add_argument("--agent", action="append", type=_agent_id, metavar="ID", help="only this agent's (repeat for several)")
    al.add_argument(
        "--state", action="append", choices=("warning", "error", "ok"), help="only changes to this state (repeat for several)"
    )
    al.add_argument("--limit", type=_count, default=0, metavar="N", help="only the newest N changes (default 0: all)")

    top = sub.add_parser(
        "top", parents=[state_parent], help="live full-screen view of the fleet",
        description="A live view of the fleet, read from the state dir (while the daemon runs or after): the daemon's "
        "health (workers, restarts, tick lag, stalled pids), the fleet's counts, and the busiest agents first, as "
        "many as fit the terminal, alerts in yellow (warning) and red (error). Keys: c sort by cpu, m by memory, f "
        "by open fds, q quit. Needs a terminal: for scripts use status --json.",
    )
    top.add_argument("--refresh", type=_positive_duration, default=1.0, metavar="DUR", help="redraw every DUR (default 1s)")

    demo = sub.add_parser(
        "demo", help="run a small live fleet with alerts, then clean up",
        description="Spawn a small fleet of its own (idle agents, a CPU hog, a memory grower, an fd leaker), "
        "register them with thresholds, run the daemon with a 1s interval and show live status. Everything it "
        "started is stopped at the end or on Ctrl-C; the state dir is left to explore.",
    )
    # (its own --state-dir: without one it takes a fresh directory, never $FLEETMON_STATE_DIR's)
    demo.add_argument(
        "--state-dir", type=_path, metavar="DIR", default=argparse.SUPPRESS,
        help="state directory (default: a fresh temporary directory, left behind to explore; not $FLEETMON_STATE_DIR)",
    )
    demo.add_argument("--agents", type=_count, default=8, metavar="N", help="how many agents (4 to 200, default 8: a Python process each; benchmarks/ measures large fleets)")
    demo.add_argument("--duration", type=_positive_duration, default=60.0, metavar="DUR", help="how long to run (default 60s)")
    demo.add_argument("--interval", type=_positive_duration, default=1.0, metavar="DUR", help="sampling interval (default 1s)")
    return p


def state_dir(args) -> Path:
    from fleetmon.store.layout import default_state_dir

    # (absolute: what the commands print names it in full, whatever directory they ran in)
    return (args.state_dir if getattr(args, "state_dir", None) else default_state_dir()).absolute()


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's subcommands by name (none for a leaf)."""
    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


def _chosen_parser(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The (sub)parser of the command given: ``agents add`` for ``fleetmon agents add ...``."""
    for attr in ("command", "agents_command"):
        name = getattr(args, attr, None)
        if name not in _subcommands(parser):
            break
        parser = _subcommands(parser)[name]
    return parser


def _unrecognized(parser: argparse.ArgumentParser, extra: list[str]) -> str:
    """``unrecognized arguments: --memroy 1GiB (did you mean --memory?)``, for the parser that
    would have taken them (argparse has the top-level one say it, and send you to its --help)."""
    import difflib

    options = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    hints = [
        m[0] for t in extra if t.startswith("--") and (m := difflib.get_close_matches(t.split("=", 1)[0], options, n=1))
    ]
    return f"unrecognized arguments: {' '.join(extra)}" + (f" (did you mean {', '.join(hints)}?)" if hints else "")


def _owners(parser: argparse.ArgumentParser, option: str) -> list[str]:
    """The commands (``fleetmon agents add``) whose own parser takes this option."""
    found = [parser.prog] if any(option in a.option_strings for a in parser._actions) else []
    for sub in _subcommands(parser).values():
        found += _owners(sub, option)
    return found


def _abbreviated(parser: argparse.ArgumentParser, top: set[str], name: str) -> str:
    """The option of fleetmon itself that ``name`` abbreviates, as argparse reads it (``--state``,
    ``--vers``: a unique prefix of a long option), else ``name``. An ambiguous prefix is left to
    argparse, which names the options it could be."""
    if name in top or not parser.allow_abbrev or not name.startswith("--"):
        return name
    matches = sorted(o for o in top if o.startswith(name))
    return matches[0] if matches else name  # (ambiguous, more than one: argparse refuses it, naming them)


def _before_command(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """What is wrong with options given before the command that fleetmon itself does not take.
    argparse takes the value of such an option for the command: ``fleetmon --workers 2 run`` was
    told "invalid choice: '2'", and ``fleetmon --json status`` "did you mean --json?"."""
    commands = _subcommands(parser)
    top = {o for a in parser._actions for o in a.option_strings}
    with_value = {o for a in parser._actions if a.nargs != 0 for o in a.option_strings}
    unknown, command = [], None
    value_next = maybe_value_next = False  # (of a known option; of an unknown one, if it takes one)
    for token in argv:
        if value_next:
            value_next = False
        elif token == "--" or token in commands:
            command = commands.get(token)
            break
        elif token.startswith("-"):
            name = _abbreviated(parser, top, token.split("=", 1)[0])
            maybe_value_next = name not in top and "=" not in token
            if name in top:
                value_next = name in with_value and "=" not in token
            else:
                unknown.append(name)
        elif maybe_value_next:
            maybe_value_next = False
        else:
            break  # (a mistyped command: argparse names it)
    if not unknown:
        return None
    name = unknown[0]
    owners = _owners(command, name) if command is not None else []
    owners = owners or [o for sub in commands.values() for o in _owners(sub, name)]
    if not owners:
        return _unrecognized(parser, unknown)
    where = f" ({owners[0]} {name} ...)" if len(owners) == 1 else ""
    return f"{name} is an option of {', '.join(owners)}: put it after the command{where}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if misplaced := _before_command(parser, argv):
        parser.error(misplaced)
    args, extra = parser.parse_known_args(argv)
    if extra:  # (before "a command is required": `fleetmon --verison` names its typo)
        chosen = _chosen_parser(parser, args)
        chosen.error(_unrecognized(chosen, extra))
    if args.command is None:
        parser.error(f"a command is required: {', '.join(_subcommands(parser))}")
    from fleetmon.supervisor import commands

    try:
        return getattr(commands, f"cmd_{args.command}")(args)
    except BadInput as exc:
        print(f"fleetmon: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        hint = ""
        if exc.errno == errno.EACCES and getattr(exc, "filename", None):
            hint = f" (fleetmon runs as uid {os.geteuid()}: does the state dir, or this file in it, belong to another user?)"
        # ("FILE: reason", or the reason alone: "[Errno 1]" tells an operator nothing)
        what = f"{exc.filename}: {exc.strerror}" if getattr(exc, "filename", None) and exc.strerror else exc.strerror or str(exc)
        print(f"fleetmon: error: {what}{hint}", file=sys.stderr)
        return EXIT_FAILURE


def print_json(obj) -> None:
    sys.stdout.write(_json.encode(obj).decode() + "\n")
