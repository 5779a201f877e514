"""``fleetmon agents supervisord-listener``: register the programs supervisord runs, as they start.

supervisord runs it as an ``[eventlistener:...]`` subscribed to ``PROCESS_STATE_RUNNING`` (see
contrib/supervisord/fleetmon-agents.conf). Each time a process of a matching program enters
RUNNING, its registry entry is written with the pid it has now, as ``fleetmon agents add`` would: a
new pid for the same id is a restart, which the daemon follows and counts. An entry written by hand
keeps its type (unless ``--type`` is given) and its own thresholds.

The listener protocol (supervisor's docs, "Events"): on standard output ``READY``, then on standard
input a header line of ``key:value`` tokens whose ``len`` is the byte length of the payload that
follows, then ``RESULT 2\\nOK`` on standard output and ``READY`` again. Standard output carries
nothing else; what the listener has to say goes to standard error, which supervisord keeps in the
listener's log. A failure to register one process is logged and answered OK all the same: FAIL
would make supervisord send the same event again and again.
"""

from __future__ import annotations

import fnmatch
import sys
from pathlib import Path
from typing import BinaryIO

from fleetmon.store import fsutil
from fleetmon.supervisor import registry as reg
from fleetmon.units import check_agent_id, whole_number

SUBSCRIBED = "PROCESS_STATE_RUNNING"
MAX_PAYLOAD = 1 << 20  # supervisord's process state payloads are a line of tokens


def tokens(text: str) -> dict[str, str]:
    """``ver:3.0 len:54`` -> {"ver": "3.0", "len": "54"}."""
    out = {}
    for token in text.split():
        key, sep, value = token.partition(":")
        if sep:
            out[key] = value
    return out


def agent_id(group: str, process: str) -> str:
    """``web`` for a program's only process (supervisord names it after its group), ``web.web_01``
    for one of a group's processes (supervisorctl's ``web:web_01``: ':' is not allowed in an id)."""
    return process if group == process else f"{group}.{process}"


class Registrar:
    def __init__(self, registry: Path, patterns: list[str], agent_type: str | None, log=None):
        self.registry = registry
        self.patterns = patterns
        self.agent_type = agent_type
        self.log = log or (lambda message: print(f"fleetmon supervisord-listener: {message}", file=sys.stderr, flush=True))

    def matches(self, group: str, process: str) -> bool:
        names = (f"{group}:{process}", group, process)
        return any(fnmatch.fnmatchcase(name, p) for p in self.patterns for name in names)

    def running(self, payload: str) -> str | None:
        """Register the process a PROCESS_STATE_RUNNING payload names, if it matches. Returns the
        agent id written, or None."""
        t = tokens(payload)
        group, process = t.get("groupname", ""), t.get("processname", "")
        if not group or not process or not self.matches(group, process):
            return None
        try:
            pid = whole_number(t["pid"])
            if not 0 < pid <= reg.MAX_PID:
                raise ValueError(f"pid {pid} out of range")
            aid = check_agent_id(agent_id(group, process))
        except (KeyError, ValueError) as exc:
            self.log(f"{group}:{process} not registered: {exc}")
            return None
        old = self._entry(aid)
        if old is not None and old.pidfile is not None:
            self.log(f"{aid} is registered by pidfile ({old.pidfile}), which follows its restarts: left as it is")
            return None
        if old is not None and old.pid == pid and (self.agent_type is None or old.type == self.agent_type):
            return None  # (nothing changed: not written again)
        entry = reg.RegistryEntry(
            aid, self.agent_type or (old.type if old is not None else None), pid, None, old.thresholds if old is not None else None,
        )
        reg.write_entry(self.registry, entry)
        self.log(f"registered {aid} (pid {pid})" + (f", was pid {old.pid}" if old is not None and old.pid else ""))
        return aid

    def _entry(self, aid: str) -> reg.RegistryEntry | None:
        try:
            return reg.parse_entry(fsutil.read_private(self.registry / f"{aid}.json", reg.MAX_ENTRY_BYTES), f"{aid}.json")
        except FileNotFoundError:
            return None
        except (OSError, reg.InvalidEntry) as exc:
            self.log(f"{aid}: the registry entry there is replaced: {exc}")
            return None


def listen(registrar: Registrar, stdin: BinaryIO, stdout: BinaryIO) -> int:
    """Serve events until supervisord closes standard input."""
    while True:
        stdout.write(b"READY\n")
        stdout.flush()
        header = stdin.readline()
        if not header:
            return 0
        h = tokens(header.decode("utf-8", "replace"))
        try:
            size = int(h["len"])
            if not 0 <= size <= MAX_PAYLOAD:
                raise ValueError(f"len {size}")
        except (KeyError, ValueError) as exc:
            registrar.log(f"not a supervisord event header ({exc}): {header[:200]!r}; is this running under supervisord?")
            return 2
        payload = stdin.read(size).decode("utf-8", "replace")
        if h.get("eventname") == SUBSCRIBED:
            try:
                registrar.running(payload.partition("\n")[0])
            except Exception as exc:  # e.g. a full disk: logged, and the next start is registered again
                registrar.log(f"cannot register from {payload[:200]!r}: {exc}")
        stdout.write(b"RESULT 2\nOK")
        stdout.flush()
