"""Sharding stability and restart backoff: pure decisions of the supervisor."""

from __future__ import annotations

import random
import string

from hypothesis import given
from hypothesis import strategies as st

from fleetmon.supervisor import sharding

IDS = [f"agent-{i:05d}" for i in range(2000)]
agent_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")


@given(agent_ids, st.integers(min_value=1, max_value=64))
def test_shard_in_range_and_stable(agent_id, workers):
    first = sharding.shard_for(agent_id, workers)
    assert 0 <= first < workers
    assert all(sharding.shard_for(agent_id, workers) == first for _ in range(3))


def test_shard_does_not_depend_on_other_agents_or_order():
    """An agent's worker depends only on its id and the pool size: adding, removing or reordering
    other agents never moves it (so the worker's cached psutil.Process keeps its cpu baseline)."""
    before = {a: sharding.shard_for(a, 4) for a in IDS}
    shuffled = IDS[:]
    random.Random(7).shuffle(shuffled)
    subset = shuffled[: len(shuffled) // 3]
    after = {a: sharding.shard_for(a, 4) for a in subset + [f"new-{i}" for i in range(100)]}
    assert all(after[a] == before[a] for a in subset)


def test_shard_is_stable_across_processes():
    """The rule must not depend on Python's per-process hash randomisation."""
    import subprocess
    import sys

    code = "from fleetmon.supervisor.sharding import shard_for; print([shard_for(f'agent-{i:05d}', 7) for i in range(50)])"
    outs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}, check=True).stdout
        for seed in ("1", "2")
    }
    assert outs == {str([sharding.shard_for(f"agent-{i:05d}", 7) for i in range(50)]) + "\n"}


def test_shards_are_balanced():
    rng = random.Random(1)
    ids = ["".join(rng.choices(string.ascii_letters + string.digits, k=12)) for _ in range(10_000)]
    for workers in (2, 3, 8):
        counts = [0] * workers
        for a in ids:
            counts[sharding.shard_for(a, workers)] += 1
        expected = len(ids) / workers
        assert max(abs(c - expected) for c in counts) < 0.1 * expected, counts


def test_restart_backoff_grows_and_caps():
    assert sharding.restart_delay(0) == 0.0
    delays = [sharding.restart_delay(n) for n in range(1, 20)]
    assert delays[0] == sharding.BACKOFF_FIRST
    assert all(b >= a for a, b in zip(delays, delays[1:], strict=False))
    assert delays[1] == 2 * delays[0]
    assert max(delays) == sharding.BACKOFF_MAX


def test_boot_failures_counted_only_for_short_lives():
    assert sharding.next_failures(0, 0.1) == 1
    assert sharding.next_failures(3, sharding.BOOT_GRACE - 0.01) == 4
    assert sharding.next_failures(3, sharding.BOOT_GRACE + 1) == 0


def test_quarantine_delay_doubles_from_one_interval_and_caps():
    assert sharding.quarantine_delay(1, 1.0) == 1.0
    assert sharding.quarantine_delay(2, 1.0) == 2.0
    assert sharding.quarantine_delay(3, 1.0) == 4.0
    assert sharding.quarantine_delay(50, 1.0) == 64.0
    assert sharding.quarantine_delay(50, 600.0) == 3600.0


def test_quarantine_delay_is_at_least_one_interval_even_past_an_hour():
    assert sharding.quarantine_delay(1, 7200.0) == 7200.0
    assert sharding.quarantine_delay(10, 7200.0) == 7200.0
