"""The documented name of the long-track benchmark (``python -m pipelines.bench_long``); the tool
itself is ``pipelines.bench.long_tracks``."""
