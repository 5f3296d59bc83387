"""Tool, not library: shard-building throughput (``python -m shards bench``)."""
