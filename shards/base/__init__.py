"""The shared base every stage stands on: the config loader, registries, one-line user errors,
atomic files, everything distributed, what labels mean, and how output reads (progress, logs).

It imports nothing else of the project (tests/test_layering.py), so shards, pipelines, train
and eval all import it by its own name and never each other for these.
"""
