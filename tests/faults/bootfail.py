"""A sampler hook module whose import fails while the file named by ``$FLEETMON_TEST_BOOTFAIL``
exists: a worker started then dies at boot, every time, until the file is removed."""

from __future__ import annotations

import os

_flag = os.environ.get("FLEETMON_TEST_BOOTFAIL")
if _flag and os.path.exists(_flag):
    raise RuntimeError("worker boot failure injected by the test")


def hook(agent_id: str, pid: int | None) -> None:
    return None
