"""Where things live under the state dir (contract: registry/, agents/, alerts.jsonl)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fleetmon.store import fsutil


def default_state_dir() -> Path:
    """``$FLEETMON_STATE_DIR`` (a leading ``~`` is the home directory: quoted in a unit file or a
    config, no shell expands it), else ``$XDG_STATE_HOME/fleetmon`` when that is an absolute path
    (the XDG spec: a relative one is invalid, ignored), else ``~/.local/state/fleetmon``."""
    if os.environ.get("FLEETMON_STATE_DIR"):
        return Path(os.environ["FLEETMON_STATE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "fleetmon"
    return Path.home() / ".local" / "state" / "fleetmon"


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
        """The writer's listening socket: under run/ when the path fits in sun_path, else in a
        private temp dir named after the state dir."""
        path = str(self.run / "writer.sock")
        if len(path.encode()) < 100:
            return path
        digest = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:16]
        d = Path(tempfile.gettempdir()) / f"fleetmon-{os.getuid()}-{digest}"
        fsutil.ensure_dir(d)
        return str(d / "writer.sock")

    def create(self) -> StateDir:
        """Create the layout with mode 0700 (whatever the umask)."""
        for d in (self.root, self.registry, self.agents, self.history, self.run):
            fsutil.ensure_dir(d)
        return self
