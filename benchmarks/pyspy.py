"""py-spy attached to a running daemon, and a summary of where each process spends its samples."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.harness import DaemonRun

NOT_FOUND = "--profile needs py-spy: pip install py-spy (into this Python's environment, or anywhere on PATH)"


def find() -> str | None:
    """py-spy on PATH, or beside this Python (a virtualenv's bin/, not on PATH when the benchmark is run
    as ``.venv/bin/python -m benchmarks...``)."""
    return shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))


def profile_dir(text: str) -> Path:
    """An argparse type for ``--profile DIR``: refused at once when py-spy is not installed (not after
    the fleet is spawned and the baselines have run)."""
    if find() is None:
        raise argparse.ArgumentTypeError(NOT_FOUND)
    return Path(text)


class Profiler:
    """py-spy attached to every process of the daemon for ``seconds`` (raw collapsed stacks, one
    file per process), and a summary of where each role spends its samples."""

    def __init__(self, directory: Path, label: str, daemon: DaemonRun, seconds: float, rate: int = 200):
        self.directory = directory
        self.files: dict[str, Path] = {}
        self.procs: list[subprocess.Popen] = []
        spy = find()
        if spy is None:
            raise RuntimeError(NOT_FOUND)
        directory.mkdir(parents=True, exist_ok=True)
        writer = daemon.writer_pid()
        for i, pid in enumerate(sorted(daemon.tree())):
            role = "supervisor" if pid == daemon.pid else "writer" if pid == writer else f"worker{i}"
            path = directory / f"{label}-{role}.txt"
            self.files[role] = path
            self.procs.append(
                subprocess.Popen(
                    [
                        spy,
                        "record",
                        "--pid",
                        str(pid),
                        "--duration",
                        str(int(seconds) + 1),
                        "--rate",
                        str(rate),
                        "--nonblocking",
                        "--format",
                        "raw",
                        "--output",
                        str(path),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

    def finish(self) -> dict:
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.terminate()
                p.wait(10)
        return {role: summarize_stacks(path) for role, path in self.files.items() if path.exists()}


def summarize_stacks(path: Path, top: int = 12) -> dict:
    """Samples, and the functions with the most samples inclusive and self, from py-spy raw output."""
    import re
    from collections import Counter

    frame = re.compile(r"(.*) \((.*?):\d+\)")

    def short(f: str) -> str:
        m = frame.match(f)
        return f"{m.group(1)} ({m.group(2).rsplit('/', 1)[-1]})" if m else f

    total, own, incl = 0, Counter(), Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [short(f) for f in stack.split(";")]
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    trunk = {f for f, k in incl.items() if k == total}  # entry points every sample goes through
    for f in trunk:
        del incl[f]
    pct = lambda c: [(f, round(100 * k / total, 1)) for f, k in c.most_common(top)] if total else []  # noqa: E731
    return {"samples": total, "self_pct": pct(own), "inclusive_pct": pct(incl)}
