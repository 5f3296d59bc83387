"""Tools, not library: the input-pipeline benchmarks (``python -m pipelines.bench``,
``python -m pipelines.bench_long``), the loaders they compare DALI with (webdataset + torchaudio /
PIL in a DataLoader), the torchaudio parity reference, synthetic image shards and synthesised
music as MP3 (``pipelines.bench.music``: the CQT's parity clips).

The library never imports this package (tests/test_layering.py); tests do.
"""
