"""Tools, not library: shard-building throughput (``python -m shards bench``), the scale-out
measurement, a local S3 server for tests and benchmarks, and the synthetic dataset generator
(``python -m shards synth``: the demo's, the tests' and the benchmarks' data)."""
