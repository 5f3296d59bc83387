"""musicstream shards: raw datasets -> WebDataset tar shards + DALI index + manifest (docs/shard-format.md).

Rooms: ``base`` (the shared floor every stage stands on), ``format`` (what a build is: the face
other stages import), ``importers`` (one module per raw dataset), ``builder`` (plan -> shard
task -> merge under any executor) and ``bench`` (tools). CLI: ``python -m shards``.
"""
