"""The sampling processes: each reads its shard of agents with psutil and sends one batch per tick."""
