"""The DALI input pipeline: shards -> chunked multi-channel spectrograms on the training device.

Entry point: ``pipelines.loader.build_loader``; see docs/pipeline.md. To look at the features
of audio files: ``python -m pipelines.features`` (``pipelines.features.main``).
"""
