"""Where things live under the state dir (contract: registry/, agents/, alerts.jsonl)."""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fleetmon.store import fsutil


def default_state_dir() -> Path:
    """``$FLEETMON_STATE_DIR`` (a leading ``~`` is the home directory: quoted in a unit file or a
    config, no shell expands it), else ``$XDG_STATE_HOME/fleetmon`` when that is an absolute path
    once a leading ``~`` is expanded (the XDG spec: a relative one is invalid, ignored), else ``~/.local/state/fleetmon``."""
    if os.environ.get("FLEETMON_STATE_DIR"):  # (relative: to the current directory, said in full)
        return Path(os.environ["FLEETMON_STATE_DIR"]).expanduser().absolute()
    xdg = os.path.expanduser(os.environ.get("XDG_STATE_HOME", ""))  # (~: as for FLEETMON_STATE_DIR)
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "fleetmon"
    return Path.home() / ".local" / "state" / "fleetmon"


_run_dirs: dict[str, int] = {}  # run/ directories held open to name a socket (StateDir.writer_socket)


@dataclass(frozen=True)
class StateDir:
    root: Path

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    @property
    def agents(self) -> Path:
        return self.root / "agents"

    @property
    def history(self) -> Path:
        return self.root / "history"

    @property
    def alerts(self) -> Path:
        return self.root / "alerts.jsonl"

    @property
    def alerts_previous(self) -> Path:
        """alerts.jsonl as it was when it last reached ``alerts_max_size`` (``persist.AlertLog``)."""
        return self.root / "alerts.jsonl.1"

    @property
    def status(self) -> Path:
        """Snapshot of every agent's metadata and last sample, replaced after each tick."""
        return self.root / "status.json"

    @property
    def daemon(self) -> Path:
        return self.root / "daemon.json"

    @property
    def alert_state(self) -> Path:
        """Open alert episodes (threshold state, ``since`` included), replaced when it changes."""
        return self.root / "thresholds.json"

    @property
    def run(self) -> Path:
        return self.root / "run"

    def registry_file(self, agent_id: str) -> Path:
        return self.registry / f"{agent_id}.json"

    def agent_file(self, agent_id: str) -> Path:
        return self.agents / f"{agent_id}.json"

    def ring_file(self, agent_id: str) -> Path:
        return self.history / f"{agent_id}.ring"

    def writer_socket(self) -> str:
        """The writer's listening socket, ``run/writer.sock``. A path too long for a socket address
        (108 bytes) is named through a descriptor of run/ this process holds open:
        ``/proc/self/fd/N/writer.sock`` (a forked worker has it at the same number; another process
        opens its own). Elsewhere than Linux, a private temp dir named after the state dir, which
        must be ours."""
        path = str(self.run / "writer.sock")
        if len(path.encode()) < 100:
            return path
        if os.path.isdir("/proc/self/fd"):
            key = str(self.run)
            fd = _run_dirs.get(key)
            if fd is None:
                try:
                    fd = os.open(self.run, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                except OSError:
                    return path  # no run/ yet: nothing listens there (connecting fails: too long)
                _run_dirs[key] = fd
            return f"/proc/self/fd/{fd}/writer.sock"
        digest = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:16]
        d = Path(tempfile.gettempdir()) / f"fleetmon-{os.getuid()}-{digest}"
        fsutil.ensure_dir(d)
        st = os.lstat(d)
        if st.st_uid != os.geteuid():  # made by another user first: they could take the socket over
            raise PermissionError(errno.EPERM, f"{d} (for the writer's socket) belongs to uid {st.st_uid}: use a shorter state dir path")
        return str(d / "writer.sock")

    def create(self) -> StateDir:
        """Create the layout with mode 0700 (whatever the umask)."""
        for d in (self.root, self.registry, self.agents, self.history, self.run):
            fsutil.ensure_dir(d)
        return self
