"""1,000 idle processes, ``--workers 2 --interval 1s``: every agent gets a point at every tick."""

from __future__ import annotations

import json
import os
import time

import pytest

from fleetmon.store.ring import read_points
from tests.helpers import cli_json
from tests.integration.common import parse_ts

AGENTS = 1000
TICKS = 5


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_thousand_idle_agents_get_a_point_every_tick(procs, state_dir, daemons):
    sleepers = [procs.sleeper() for _ in range(AGENTS)]
    registry = state_dir / "registry"
    registry.mkdir(parents=True, mode=0o700)
    ids = [f"idle-{i:04d}" for i in range(AGENTS)]
    for agent_id, p in zip(ids, sleepers, strict=True):
        path = registry / f"{agent_id}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, json.dumps({"id": agent_id, "pid": p.pid}).encode())
        os.close(fd)

    d = daemons(state_dir, "--workers", "2", "--interval", "1s")
    t0 = time.monotonic()
    running = d.wait_tick(TICKS + 1, timeout=60)
    elapsed = time.monotonic() - t0
    assert sum(w["agents"] for w in running["workers"]) == AGENTS
    assert all(w["agents"] > AGENTS // 4 for w in running["workers"])  # both workers hold a share
    assert d.stop() == 0
    final = d.daemon_json()
    ticks = final["tick"]
    assert final["persisted_tick"] == ticks >= TICKS + 1
    assert final["lost_batches"] == 0 and final["write_errors"] == 0

    counts = {}
    gaps = []
    for agent_id in ids:
        points = read_points(state_dir / "history" / f"{agent_id}.ring")
        counts[agent_id] = len(points)
        stamps = [p.timestamp for p in points]
        gaps += [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    missing = {a: n for a, n in counts.items() if n != ticks}
    print(f"{AGENTS} agents, {ticks} ticks in {elapsed:.1f}s, points per agent: {sorted(set(counts.values()))}, "
          f"max gap {max(gaps):.3f}s")
    assert not missing, f"{len(missing)} agents without a point every tick, e.g. {list(missing.items())[:5]}"
    assert max(gaps) < 1.5  # one point per 1 s tick, none skipped
    assert final["samples_total"] == AGENTS * ticks

    # the CLI sees the same, and every agent is running
    h = cli_json("history", ids[-1], state_dir=state_dir)["points"]
    assert len(h) == ticks and all(p["memory_rss"] and p["num_threads"] == 1 for p in h)
    st = cli_json("status", state_dir=state_dir, timeout=60)
    assert len(st["agents"]) == AGENTS and {a["status"] for a in st["agents"]} == {"running"}
    assert all(abs(parse_ts(a["last_sample"]["timestamp"]) - parse_ts(h[-1]["timestamp"])) < 1.0 for a in st["agents"])
