"""``fleetmon history ID --plot FILE.png``: an agent's history as a picture.

Four stacked panels over the window, sharing the time axis: cpu, memory (RSS), open fds, threads.
Thresholds are drawn as dashed lines: the agent's own (registry entry) and those its alert events
were judged against (which include config thresholds the CLI cannot see otherwise).
Alert periods are shaded per resource: warning yellow, error red, built from ``alerts.jsonl`` and
the agent's still-open alerts. matplotlib with the Agg backend, no pyplot global state; it is in
the optional extra ``plot`` (``pip install 'fleetmon[plot]'``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from matplotlib import dates as mdates  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fleetmon.store import queries  # noqa: E402
from fleetmon.store.layout import StateDir  # noqa: E402
from fleetmon.supervisor import registry as reg  # noqa: E402
from fleetmon.units import format_duration, parse_rfc3339  # noqa: E402

MIB = 1024 * 1024
SHADE = {"warning": "#f5c542", "error": "#e0483e"}
# panel: (title, y label, point field, resource of its alerts, threshold key in a registry entry, scale)
PANELS = [
    ("cpu", "cpu %", 1, "cpu", "cpu_threshold", 1.0),
    ("memory", "RSS MiB", 2, "memory", "memory_threshold", MIB),
    ("open fds", "fds", 6, "open_files", "open_files_threshold", 1.0),
    ("threads", "threads", 7, None, None, 1.0),
]


def alert_periods(events, open_alerts, start: float, end: float) -> dict[str, list[tuple[float, float, str]]]:
    """Per resource, the (from, to, state) spans an alert was open within [start, end].

    ``events``: the agent's alert events, oldest first (objects with timestamp, resource, state,
    since); ``open_alerts``: its alerts still open now (resource, state, since), for episodes whose
    events fall before the window."""
    spans: dict[str, list[tuple[float, float, str]]] = {}
    by_resource: dict[str, list] = {}
    for e in events:
        by_resource.setdefault(e.resource, []).append(e)
    for resource, evs in by_resource.items():
        out = spans.setdefault(resource, [])
        first = evs[0]
        first_ts, first_since = parse_rfc3339(first.timestamp), parse_rfc3339(first.since)
        if first.state != "warning" and first_since < first_ts:
            # The episode opened before the first event we have: warning until it became error (or,
            # for a close, whatever it was: drawn as warning).
            out.append((first_since, first_ts, "warning"))
        state, since = None, 0.0
        for e in evs:
            ts = parse_rfc3339(e.timestamp)
            if state is not None:
                out.append((since, ts, state))
            state, since = (e.state, ts) if e.state in SHADE else (None, 0.0)
        if state is not None:
            out.append((since, end, state))
    for b in open_alerts:
        if b.resource not in by_resource and b.state in SHADE:
            spans.setdefault(b.resource, []).append((parse_rfc3339(b.since), end, b.state))
    clipped: dict[str, list[tuple[float, float, str]]] = {}
    for resource, items in spans.items():
        kept = [(max(a, start), min(b, end), s) for a, b, s in items if b > start and a < end and b > a]
        if kept:
            clipped[resource] = kept
    return clipped


def threshold_lines(entry_thresholds, events) -> dict[str, set[float]]:
    """Per resource, the threshold values to draw: the registry entry's own, and every threshold an
    alert event of the window was judged against. 0 (off) is not drawn."""
    lines: dict[str, set[float]] = {}
    if entry_thresholds is not None:
        for _, _, _, resource, key, _ in PANELS:
            if key and getattr(entry_thresholds, key, None):
                lines.setdefault(resource, set()).add(float(getattr(entry_thresholds, key)))
    for e in events:
        if e.threshold:
            lines.setdefault(e.resource, set()).add(float(e.threshold))
    return lines


def _when(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)


def history_png(state: StateDir, agent_id: str, points, path: Path, since: float, now: float | None = None) -> Path:
    """Draw ``points`` (the agent's history over the last ``since`` seconds) to the PNG ``path``."""
    now = time.time() if now is None else now
    start = now - since
    entries, _ = reg.read_all(state.registry)
    entry = entries.get(agent_id)
    events = [e for e in queries.alerts(state, since, now).events if e.agent_id == agent_id]
    record = next((a for a in queries.status(state).agents if a.id == agent_id), None)
    # Data ends at the last point (the daemon may have stopped since): so do the pictures.
    first = max(start, min((p[0] for p in points), default=start))
    last = max((p[0] for p in points), default=now)
    periods = alert_periods(events, record.alerts if record else [], start, last)
    limits = threshold_lines(entry.thresholds if entry else None, events)

    fig = Figure(figsize=(11, 9), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(PANELS), 1, sharex=True)
    title = f"{agent_id}"
    if entry is not None:
        title += f" ({entry.type})"
    fig.suptitle(f"{title}: last {format_duration(since)}, {len(points)} points (UTC)")
    xs = [_when(p[0]) for p in points]
    for ax, (name, label, field, resource, _, scale) in zip(axes, PANELS, strict=True):
        ys = [None if p[field] is None else p[field] / scale for p in points]
        ax.plot(xs, [float("nan") if y is None else y for y in ys], color="#1f5fa8", linewidth=1.2, marker="." if len(points) < 60 else None, label=name)
        if resource is not None:
            for a, b, st in periods.get(resource, []):
                ax.axvspan(_when(a), _when(b), color=SHADE[st], alpha=0.25 if st == "warning" else 0.3, linewidth=0)
            for value in sorted(limits.get(resource, ())):
                ax.axhline(value / scale, color="#c0392b", linestyle="--", linewidth=1.0)
                ax.annotate(
                    f"threshold {value / scale:g}", xy=(1.0, value / scale), xycoords=("axes fraction", "data"),
                    ha="right", va="bottom", fontsize=8, color="#c0392b",
                )
        ax.set_ylabel(label)
        if name in ("open fds", "threads"):
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    lo = min([first] + [a for spans in periods.values() for a, _, _ in spans])
    pad = max(1.0, (last - lo) * 0.01)
    axes[0].set_xlim(_when(lo - pad), _when(last + pad))
    axes[-1].xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S" if last - lo <= 2 * 86400 else "%m-%d %H:%M"))
    if not points:
        axes[0].text(0.5, 0.5, "no samples in this window", transform=axes[0].transAxes, ha="center", va="center")
    path = Path(path)
    fig.savefig(path, format="png")
    return path
