"""fleetmon: watch the resource usage of a fleet of long-running agent processes on one host."""

__version__ = "0.1.0"
