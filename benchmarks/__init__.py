"""Benchmarks of fleetmon: one script per question (see README.md)."""
