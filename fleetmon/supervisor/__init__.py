"""The parent process: config, registry, sharding, ticks, health of children, signals, CLI."""
