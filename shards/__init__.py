"""musicstream shards: raw datasets -> WebDataset tar shards + DALI index + manifest (docs/shard-format.md)."""
