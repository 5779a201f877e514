"""Sampler hooks of the operator suite (loaded in the workers through the ``sampler_hook`` key)."""

from __future__ import annotations

import os
import sys

CRASH_ENV = "FLEETMON_TEST_CRASH"


def crash_once(agent_id: str, pid: int | None) -> None:
    """If the file named by ``$FLEETMON_TEST_CRASH`` exists: remove it, write a stray line to
    stderr, and crash this worker with an uncaught exception (its traceback goes to stderr)."""
    flag = os.environ.get(CRASH_ENV)
    if not flag:
        return
    try:
        os.unlink(flag)
    except FileNotFoundError:
        return
    print("a stray line written to stderr by a worker", file=sys.stderr)
    raise RuntimeError("test crash of a worker")


def slow_in_worker_1(agent_id: str, pid: int | None) -> None:
    """Worker 1 (process name fleetmon-w1) takes 0.3 s over each agent named slow*."""
    import time

    try:
        with open("/proc/self/comm") as f:
            name = f.read().strip()
    except OSError:
        return
    if name == "fleetmon-w1" and agent_id.startswith("slow"):
        time.sleep(0.3)
