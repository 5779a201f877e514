"""What each subcommand does. Queries read the state dir; ``run`` starts the supervisor."""

from __future__ import annotations

import csv
import os
import signal
import sys
import time

from fleetmon.store import queries
from fleetmon.store.layout import StateDir
from fleetmon.supervisor.cli import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK, BadInput, print_json, state_dir
from fleetmon.units import check_agent_id


def _state(args, create: bool = False) -> StateDir:
    state = StateDir(state_dir(args))
    return state.create() if create else state


def _read_state(args) -> StateDir:
    """The state dir to query; a note on stderr when there is none: an empty answer from a mistyped
    --state-dir, or from another user's default (sudo), must not pass for an empty fleet unnoticed."""
    state = _state(args)
    if not state.root.exists():
        print(f"fleetmon: note: there is no state dir at {state.root} (a daemon run as another user, or with "
              "another --state-dir or $FLEETMON_STATE_DIR?)", file=sys.stderr)
    return state


def cmd_run(args) -> int:
    # Signals that come while it starts (the imports and the config below take a few tenths of a
    # second) are recorded from here and acted on once the daemon runs (Arbiter.run takes the list
    # over): until then SIGHUP's default action killed the daemon, and SIGTERM ended it by the
    # signal rather than with exit 0.
    early: list[int] = []
    if not args.check:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda signum, frame: early.append(signum))
    from fleetmon import logs
    from fleetmon.supervisor.arbiter import Arbiter
    from fleetmon.supervisor.config import ConfigError, load

    overrides = {
        "workers": args.workers,
        "interval": args.interval,
        "http": args.http,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "state_dir": str(args.state_dir) if args.state_dir else None,
    }
    try:
        config = load(args.config, overrides)
    except ConfigError as exc:
        return _refuse_run(args, str(exc))
    if config.http:
        from fleetmon.supervisor.httpaddr import parse_http

        try:
            parse_http(config.http)
        except ValueError as exc:
            source = "--http" if args.http else f"config file {args.config}: http"
            return _refuse_run(args, f"{source}: {exc}")
    from pathlib import Path

    from fleetmon.store.layout import default_state_dir

    root = Path(config.state_dir).expanduser() if config.state_dir else default_state_dir()
    if args.check:
        return _check(args, config, StateDir(root))
    logs.configure(config.log_level, config.log_format)
    arbiter = Arbiter(config, StateDir(root), args.config)
    arbiter.signals = early  # (its handlers, installed first thing in run, append to the same list)
    arbiter.overrides = overrides  # SIGHUP reloads the file and applies the same flags over it
    return arbiter.run()


def _check(args, config, state: StateDir) -> int:
    """``run --check``: the config (and flags) are valid, if we got here; say what they amount to and
    what the registry holds, and start nothing."""
    from fleetmon.supervisor import registry as reg
    from fleetmon.supervisor import render
    from fleetmon.units import format_duration, format_size

    where = f"config {args.config}" if args.config else "config (no file)"
    print(
        f"{where}: ok: {config.worker_count} worker{'s' if config.worker_count != 1 else ''}, interval "
        f"{format_duration(float(config.interval))}, history {config.history_size} points, keep_removed "
        f"{format_duration(float(config.keep_removed)) if config.keep_removed else 'off'}, alerts_max_size "
        f"{format_size(config.alerts_max_size) if config.alerts_max_size else 'off'}, state dir {state.root}"
    )
    from fleetmon.supervisor.httpaddr import parse_http
    from fleetmon.workers.sampler import resolve_reader

    http = "off"
    if config.http:
        host, port = parse_http(str(config.http))
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # (IPv6 as it is typed)
        http = shown + (" (every address: no authentication, firewall it)" if host in ("0.0.0.0", "::") else "")
    print(
        f"  stall_timeout {format_duration(float(config.stall_timeout))}, alert_repeat "
        f"{format_duration(float(config.alert_repeat)) if config.alert_repeat else 'every sample'}, http {http}, "
        f"reader {resolve_reader(config.reader)}, log {config.log_level.upper()} {config.log_format}"
    )
    print(f"  thresholds: default {render.limits_text(config.default_thresholds()) or 'none set'}")
    for name in sorted(config.thresholds.types):
        print(f"  thresholds: type {name} {render.limits_text(config.thresholds.types[name].to_wire()) or 'none set'} (the rest from default)")
    entries, errors = reg.read_all(state.registry)
    print(f"registry: {len(entries)} agent{'s' if len(entries) != 1 else ''}" + (
        f", {len(errors)} invalid (skipped by the daemon; a running one keeps an entry it read valid before):" if errors else ""
    ))
    for name, why in sorted(errors.items()):
        print(f"  {name}: {why}")
    return EXIT_OK


def _refuse_run(args, message: str) -> int:
    """Bad input to ``run``: exit 2 with one line; under ``--log-format json`` a JSON log line."""
    if args.log_format != "json":
        raise BadInput(message)
    from loguru import logger

    from fleetmon import logs

    logs.configure("INFO", "json")
    logger.error("fleetmon: error: {}", message)
    return EXIT_BAD_INPUT


PIDFILE_CHECK_TIMEOUT = 2.0


def _check_pidfile_briefly(path: str, timeout: float = PIDFILE_CHECK_TIMEOUT) -> tuple[int | None, str | None]:
    """``check_pidfile`` in a child process, given up on after ``timeout``: a file on a dead NFS or
    FUSE mount blocks its reader in the kernel, where no signal reaches it (``timeout`` could not
    end the command); the child is left to end when the read does."""
    import json
    import select
    import signal

    from fleetmon.workers.sampler import check_pidfile

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            os.write(w, json.dumps(check_pidfile(path)).encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        if not select.select([r], [], [], timeout)[0]:
            os.kill(pid, signal.SIGKILL)  # (it dies when the read returns; its parent will be gone by then)
            time.sleep(0.05)
            try:
                os.waitpid(pid, os.WNOHANG)  # reaped if it could die at once
            except ChildProcessError:
                pass
            return None, f"could not be read within {timeout:g}s (on a stalled mount?)"
        data = b""
        while chunk := os.read(r, 65536):
            data += chunk
    finally:
        os.close(r)
    os.waitpid(pid, 0)
    try:
        found, problem = json.loads(data)
    except ValueError:  # the child ended without an answer (killed, or failed)
        return None, "could not be checked"
    return found, problem


def _warn_pidfile(agent_id: str, path: str) -> None:
    """Tell on stderr what the workers would log of this pidfile now (missing, empty, garbage, no
    such process): it is registered anyway, since the agent may write it later."""
    pid, problem = _check_pidfile_briefly(path)
    if problem is not None and problem.startswith("cannot be") and os.geteuid() != 0:
        print(f"fleetmon: warning: the pidfile {path} {problem} by you: the daemon must be able to read it "
              "(under the shipped units it runs as root)", file=sys.stderr)
    elif problem is not None:
        hint = " (a typo?)" if problem == "is missing" else ""
        print(f"fleetmon: warning: the pidfile {path} {problem}{hint}: {agent_id} shows as not running "
              "until it holds the agent's pid", file=sys.stderr)
    elif not _pid_exists(pid):
        print(f"fleetmon: warning: the pidfile {path} holds pid {pid}, which no process has now: {agent_id} "
              "shows as not running until the agent writes its new pid there", file=sys.stderr)


def cmd_agents(args) -> int:
    from fleetmon.supervisor import registry as reg
    from fleetmon.wire import Thresholds

    if args.agents_command == "add":
        thresholds = None
        if any(v is not None for v in (args.cpu, args.memory, args.open_files, args.duration)):
            thresholds = Thresholds(args.cpu, args.memory, args.open_files, args.duration)
        # A relative pidfile would be read from the daemon's working directory (/ under systemd),
        # not from where this command ran: registered as the absolute path it names here.
        pidfile = os.path.abspath(args.pidfile) if args.pidfile else None
        try:
            entry = reg.RegistryEntry(args.id, args.type, args.pid, pidfile, thresholds)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        if entry.pid is not None:
            _refuse_a_thread(entry.pid)
        state = _state(args, create=True)  # only once the input is valid: bad input writes nothing
        path = reg.write_entry(state.registry, entry)
        print(f"registered {entry.id} ({'pid ' + str(entry.pid) if entry.pid else 'pidfile ' + str(entry.pidfile)}) in {path}")
        if entry.pid is not None and not _pid_exists(entry.pid):
            print(f"fleetmon: warning: no process has pid {entry.pid} now: {entry.id} will show as not running "
                  "(a typo? for an agent that restarts, register its --pidfile)", file=sys.stderr)
        elif entry.pidfile is not None:
            _warn_pidfile(entry.id, entry.pidfile)
        return EXIT_OK
    if args.agents_command == "import":
        return _import(args)
    if args.agents_command == "supervisord-listener":
        return _supervisord_listener(args)
    if args.agents_command == "rm":
        state = _state(args)
        if not reg.remove_entry(state.registry, args.id):
            where = "" if state.root.exists() else f" (there is no state dir at {state.root}: another --state-dir?)"
            raise BadInput(f"unknown agent {args.id!r}: not registered{where}")
        print(f"unregistered {args.id} (its history is kept for keep_removed, default 7d)")
        return EXIT_OK
    entries, errors = reg.read_all(_read_state(args).registry)
    if args.json:
        print_json({"agents": [entries[k] for k in sorted(entries)]})
    else:
        from fleetmon.supervisor import render

        render.agents_table(entries, errors)
    return EXIT_OK


def _supervisord_listener(args) -> int:
    from fleetmon.supervisor import supervisord_events as sv

    if sys.stdin.isatty():
        raise BadInput("agents supervisord-listener is run by supervisord as an [eventlistener] "
                       "(see contrib/supervisord/fleetmon-agents.conf), not from a terminal")
    state = _state(args, create=True)
    registrar = sv.Registrar(state.registry, args.program, args.type)
    registrar.log(f"registering programs matching {', '.join(args.program)} in {state.registry}")
    return sv.listen(registrar, sys.stdin.buffer, sys.stdout.buffer)


def cmd_status(args) -> int:
    from fleetmon.supervisor import render

    state = _read_state(args)
    st, as_of = queries.status_as_of(state)
    agents, how = st.agents, []
    if args.problems:
        agents = [a for a in agents if render.is_problem(a)]
        how.append("--problems")
    if args.type:
        agents = [a for a in agents if a.type in args.type]
        how.append("--type " + ",".join(args.type))
    if args.sort != "id":
        agents = render.sort_agents(agents, args.sort)
        how.append(f"--sort {args.sort}")
    if args.limit:
        agents = agents[: args.limit]
        how.append(f"--limit {args.limit}")
    # (once, and only for what shows it: it may look at the state dir's lock)
    daemon = render.daemon_state(st.daemon, state.run) if not args.json or args.exit_code else None
    if args.json:
        print_json(queries.StatusJSON(st.daemon, agents))
    else:
        render.status_view(st, shown=agents, how=" ".join(how), state=daemon)
    if args.exit_code:  # a check must not pass on stale rows
        if daemon != "running":
            why = render.stale_note(st.daemon, daemon) if st.daemon is not None else "none ever ran there"
            print(f"fleetmon: status: no daemon is recording in {state.root} ({why}): exit 1", file=sys.stderr)
            return EXIT_FAILURE
        if not render.recent(as_of, st.daemon.interval):
            print(f"fleetmon: status: status.json in {state.root} is stale (the daemon cannot write it? see its log): "
                  "exit 1", file=sys.stderr)
            return EXIT_FAILURE
    return EXIT_FAILURE if args.exit_code and agents else EXIT_OK


def cmd_history(args) -> int:
    state = _state(args)
    check_agent_id(args.id)
    try:
        points = queries.history_points(state, args.id, args.since, args.every)
    except queries.UnknownAgent:
        where = "" if state.root.exists() else f" (there is no state dir at {state.root}: another --state-dir?)"
        print(f"fleetmon: error: unknown agent {args.id!r}: not registered and no history{where}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from fleetmon.store.records import point_json

    if args.json:
        print_json(queries.HistoryJSON(args.id, [point_json(p) for p in points]))
    elif args.csv:
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(["timestamp", "cpu", "memory_rss", "memory_vms", "disk_read_bytes", "disk_write_bytes", "open_files", "num_threads"])
        for p in points:
            j = point_json(p)
            w.writerow(["" if v is None else v for v in (j.timestamp, j.cpu, j.memory_rss, j.memory_vms, j.disk_read_bytes, j.disk_write_bytes, j.open_files, j.num_threads)])
    elif args.plot:
        try:
            from fleetmon.supervisor import plot
        except ImportError:
            raise BadInput("--plot needs matplotlib: pip install 'fleetmon[plot]'") from None
        plot.history_png(state, args.id, points, args.plot, args.since)
        print(f"wrote {args.plot}")
    else:
        from fleetmon.supervisor import render

        render.history_table(args.id, points)
    return EXIT_OK


def _import(args) -> int:
    from fleetmon.supervisor import registry as reg

    limit = reg.MAX_IMPORT_BYTES
    try:
        if args.file == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(args.file, "rb") as f:
                data = f.read(limit + 1)
    except OSError as exc:
        raise BadInput(f"cannot read {args.file}: {exc.strerror}") from None
    if len(data) > limit:
        raise BadInput(f"{args.file}: more than {limit >> 20} MiB: split it (nothing imported)")
    try:
        entries = reg.parse_many(data)
    except reg.InvalidEntry as exc:
        raise BadInput(f"{args.file}: {exc} (nothing imported)") from None
    for e in entries:
        if e.pid is not None:
            try:
                _refuse_a_thread(e.pid)
            except BadInput as exc:
                raise BadInput(f"{args.file}: {e.id!r}: {exc} (nothing imported)") from None
    state = _state(args, create=True)
    known = {name[:-5] for name in os.listdir(state.registry) if name.endswith(".json")}
    try:
        reg.write_entries(state.registry, entries)
    except OSError as exc:
        print(f"fleetmon: error: cannot write the registry entries in {state.registry}: {exc.strerror or exc} "
              "(written all or none, but for a failure while renaming: see `fleetmon agents ls`)", file=sys.stderr)
        return EXIT_FAILURE
    replaced = sum(e.id in known for e in entries)
    print(f"imported {len(entries)} agents into {state.registry} ({len(entries) - replaced} new, {replaced} replaced)")
    missing = [e.id for e in entries if e.pid is not None and not _pid_exists(e.pid)]
    if missing:
        print(f"fleetmon: warning: no process has the pid of {len(missing)} of them now: {', '.join(missing[:10])}"
              + (" ..." if len(missing) > 10 else ""), file=sys.stderr)
    return EXIT_OK


def _refuse_a_thread(pid: int) -> None:
    """A thread id answers in /proc like a process, with the whole process's figures, and ends with
    its thread: never what an agent's pid should be (exit 2, nothing written)."""
    from fleetmon.workers import procfs

    group = procfs.thread_group(pid)
    if group is not None:
        raise BadInput(f"pid {pid} is a thread of process {group}, not a process: register --pid {group}")


def _pid_exists(pid: int) -> bool:
    import psutil

    return psutil.pid_exists(pid)


def cmd_alerts(args) -> int:
    result, oldest = queries.alerts_window(
        _read_state(args), args.since, agents=set(args.agent or ()), states=set(args.state or ()), limit=args.limit
    )
    if oldest is not None:  # (stderr: the JSON on stdout keeps its shape)
        print(f"fleetmon: note: the oldest alert change kept is from {oldest}; --since reaches further back, and "
              "changes before it are in neither alerts.jsonl nor alerts.jsonl.1 (dropped when alerts.jsonl reached "
              "alerts_max_size, or moved on by a log rotation)", file=sys.stderr)
    if args.json:
        print_json(result)
    else:
        from fleetmon.supervisor import render

        render.alerts_table(result.events, args.since)
    return EXIT_OK


def cmd_top(args) -> int:
    from fleetmon.supervisor import top

    state = _state(args)
    if not state.root.exists():  # (a mistyped --state-dir would show an empty fleet, as if nothing ran)
        raise BadInput(f"there is no state dir at {state.root}: another --state-dir? (a daemon creates it when it starts)")
    return top.run(state, args.refresh)


def cmd_demo(args) -> int:
    from fleetmon.supervisor import demo, lock

    if not 4 <= args.agents <= demo.MAX_AGENTS:
        raise BadInput(f"--agents must be from 4 (one of each kind) to {demo.MAX_AGENTS} (a Python process each)")
    state = StateDir(args.state_dir.absolute()) if args.state_dir else None  # default: a fresh temp dir
    if state is not None and lock.held(state.run):
        # (its daemon would take the demo's agents into its registry, and the demo's own stop at once)
        raise BadInput(f"state dir {state.root} is in use by a running daemon: leave --state-dir out for a fresh one")
    return demo.run(state, args.agents, args.duration, args.interval)
