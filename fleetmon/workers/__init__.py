"""The sampling processes: each reads its shard of agents (/proc directly on Linux, psutil elsewhere) and sends one batch per tick."""
