"""Sampler hooks for the fault suite, loaded in the workers through the ``sampler_hook`` config key.

Workers are forked from the daemon, which runs with the repository root on ``PYTHONPATH``; the hooks
are steered by files whose paths come from the environment, so a test turns a fault on and off by
creating and deleting a file.
"""

from __future__ import annotations

import os
import time

BLOCK_ENV = "FLEETMON_TEST_BLOCK"


def block(agent_id: str, pid: int | None) -> None:
    """Block (like a read of a hung /proc file) before sampling any agent whose id starts with
    ``stuck`` for as long as the file named by ``$FLEETMON_TEST_BLOCK`` exists (at most 10 min)."""
    flag = os.environ.get(BLOCK_ENV)
    if not flag or not agent_id.startswith("stuck"):
        return
    deadline = time.monotonic() + 600
    while os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.05)
