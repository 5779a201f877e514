"""The threshold state machine: pure functions of (previous state, sample), with the clock injected
as the sample's timestamp.

For each agent and resource: over means strictly greater than the threshold. The first sample over
opens an episode (``since`` = its timestamp) in ``warning``; once ``timestamp - since >= duration`` it
is ``error`` (a duration of 0 goes straight to ``error``). The first sample at or under the threshold
closes it (``ok``). A ``None`` value changes nothing. A threshold that is absent or 0 is off.
"""

from __future__ import annotations

import msgspec

from fleetmon.wire import Thresholds

RESOURCES = ("cpu", "memory", "open_files")
LEVEL = {"warning": "WARNING", "error": "ERROR", "ok": "INFO"}


class Limits(msgspec.Struct, frozen=True):
    """Resolved thresholds of one agent (0 = off)."""

    cpu: float = 0.0
    memory: int = 0
    open_files: int = 0
    duration: float = 0.0

    def for_resource(self, resource: str) -> float:
        return getattr(self, resource)

    @property
    def any(self) -> bool:
        return bool(self.cpu or self.memory or self.open_files)


class Alert(msgspec.Struct):
    """An open episode: ``state`` is warning or error."""

    state: str
    since: float
    logged: float = 0.0  # sample time of the last log line for this episode
    # the threshold of its last change (0: not known), for closing it once the agent's own limits
    # are gone (taken out of the registry while no daemon ran)
    threshold: float = 0.0


class Event(msgspec.Struct, frozen=True):
    """One alert state change, as a line of alerts.jsonl."""

    timestamp: str
    agent_id: str
    resource: str
    state: str
    value: float | None
    threshold: float
    since: str
    reason: str | None = None


def resolve(*sources: Thresholds | None) -> Limits:
    """Merge threshold sources, most specific first, field by field: the first source that sets a
    field wins (setting it to 0 turns it off)."""
    values: dict[str, float | int | None] = {
        "cpu_threshold": None,
        "memory_threshold": None,
        "open_files_threshold": None,
        "threshold_duration": None,
    }
    for source in sources:
        if source is None:
            continue
        for key in values:
            if values[key] is None:
                values[key] = getattr(source, key)
    return Limits(
        cpu=float(values["cpu_threshold"] or 0),
        memory=int(values["memory_threshold"] or 0),
        open_files=int(values["open_files_threshold"] or 0),
        duration=float(values["threshold_duration"] or 0),
    )


def step(
    alert: Alert | None, value: float | None, threshold: float, duration: float, ts: float
) -> tuple[Alert | None, str | None]:
    """Advance one resource's state by one sample. Returns (new alert or None, changed-to state or None).

    The returned state is ``warning``, ``error`` or ``ok`` when the state changed, else None.
    """
    if not threshold:
        return (None, "ok") if alert is not None else (None, None)
    if value is None:
        return alert, None
    if value > threshold:
        if alert is None:
            state = "error" if duration <= 0 else "warning"
            return Alert(state, ts), state
        if alert.state == "warning" and ts - alert.since >= duration:
            return Alert("error", alert.since, alert.logged), "error"
        return alert, None
    if alert is not None:
        return None, "ok"
    return None, None


def value_of(resource: str, cpu: float | None, rss: int | None, fds: int | None) -> float | None:
    if resource == "cpu":
        return cpu
    if resource == "memory":
        return rss
    return fds
