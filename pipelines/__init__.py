"""The DALI input pipeline: shards -> chunked multi-channel spectrograms on the training device.

Entry point: ``pipelines.loader.build_loader``; see docs/pipeline.md.
"""
