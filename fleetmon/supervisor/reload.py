"""SIGHUP: reload the config file and the registry without a restart."""

from __future__ import annotations

from loguru import logger


def handle_hup(arbiter) -> None:
    logger.info("SIGHUP: rescanning the registry")
    if arbiter.registry.scan(force=True):
        arbiter._reshard()
        arbiter._tell_writer(arbiter._registry_msg())
