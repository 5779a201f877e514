"""Everything on disk: the writer process, history rings, metadata, thresholds and queries."""
