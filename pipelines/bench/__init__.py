"""Tools, not library: the input-pipeline benchmarks (``python -m pipelines.bench``,
``python -m pipelines.bench_long``), the loaders they compare DALI with (webdataset + torchaudio /
PIL in a DataLoader), the torchaudio parity reference and synthetic image shards.

The library never imports this package (tests/test_layering.py); tests do.
"""
