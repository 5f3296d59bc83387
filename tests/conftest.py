"""Shared pytest setup: GPU tests skip cleanly without CUDA; small thread pools (CI has 2 cores);
``synth_shards``, a session-cached factory of tiny synthetic shard builds."""

from __future__ import annotations

import inspect
import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

pytest_plugins = ["helpers.s3"]  # the `s3` fixture: a local S3 server per test module


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (gpu marker)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def synth_shards(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory ``synth_shards(task="single", codec="pcm16", tracks=24, seconds=8.0,
    sample_rate=22050, seed=0, shard_size_mb=2.0) -> Path`` of a built shard folder.

    Built once per argument set and session (``shards.bench.synth.build_synth_shards``); every
    split (train/validation/test) holds >= 2 tracks; with the defaults: 16/4/4 tracks,
    train in 4 shards. The raw synthetic dataset stays beside it in ``../raw``
    (``labels.csv`` + audio files) for tests that compare against the source audio.
    Labels follow ``shards.bench.synth`` (genre = ``class_of_signal`` of the audio).
    """
    from shards.bench.synth import build_synth_shards

    cache: dict[tuple, Path] = {}
    signature = inspect.signature(build_synth_shards)
    fixed = {"out", "workers", "raw", "progress"}  # chosen here, not by the tests

    def make(**settings: Any) -> Path:
        """``build_synth_shards``'s settings (its defaults apply), one build per distinct set."""
        if fixed & settings.keys():
            raise TypeError(f"synth_shards: {sorted(fixed & settings.keys())} are the fixture's own")
        bound = signature.bind(None, **settings)
        bound.apply_defaults()
        chosen = {k: v for k, v in bound.arguments.items() if k not in fixed}
        key = tuple(
            (k, float(v) if k in ("seconds", "shard_size_mb") else v) for k, v in sorted(chosen.items())
        )
        if key not in cache:
            base = tmp_path_factory.mktemp(f"synth-{chosen['task']}-{chosen['codec']}-{chosen['tracks']}")
            cache[key] = build_synth_shards(base / "shards", workers=1, raw=base / "raw", **chosen)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def synth_image_shards(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory ``synth_image_shards(task="single", tracks=24, seconds=3.0) -> Path``: image shards
    (mel/cqt/chroma JPEGs rendered from ``shards synth`` audio, ``pipelines.synth_images``) built
    with the folder importer, once per argument set and session; the raw images in ``../raw``."""
    from pipelines.bench.synth_images import build_synth_image_shards

    cache: dict[tuple, Path] = {}

    def make(task: str = "single", tracks: int = 24, seconds: float = 3.0) -> Path:
        key = (task, tracks, float(seconds))
        if key not in cache:
            base = tmp_path_factory.mktemp(f"synth-images-{task}-{tracks}")
            cache[key] = build_synth_image_shards(
                base / "shards", raw=base / "raw", task=task, tracks=tracks, seconds=seconds
            )
        return cache[key]

    return make
