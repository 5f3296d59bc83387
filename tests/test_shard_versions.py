"""Shard format version 3 (one packed ``ids`` member per sample) and the versions before it.

A version-2 build (separate ``lbl``, ``tid``, ``seg`` members) made from a fresh build
(``helpers.old_formats``) gives the very same loader batches, audio and image; the DALI reader
asks for 2 members per audio sample on version 3 (4 on version 2); an older version's build
in the output folder is rebuilt, never taken for up to date (the format version is part of
the build's fingerprint).
"""

from __future__ import annotations

import dataclasses
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.old_formats import as_version
from helpers.tars import read_ids

import pipelines.graph as graph
import shards.builder.merge
import shards.builder.plan as plan_module
import shards.format.members
from pipelines.bench.small import small_configs
from pipelines.config import AugmentConfig, FeatureConfig, LoaderConfig
from pipelines.loader import build_loader
from shards.builder.config import BuildConfig
from shards.builder.driver import build, import_dataset
from shards.format.manifest import read_manifest
from shards.format.verify import verify_build

SR = 8000
IMAGE_CHANNELS = ["mel", "cqt", "chroma"]


@pytest.fixture(scope="module")
def segmented(synth_shards: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A multi-label audio build (6 label entries) of 2.5-s tracks stored as 1-s segments."""
    raw = synth_shards(task="multi", tracks=12, seconds=2.5, sample_rate=SR, shard_size_mb=0.1).parent / "raw"
    out = tmp_path_factory.mktemp("v3") / "shards"
    build(_config(raw, out), progress=False)
    return out


def _config(raw_or_build: Path, out: Path) -> BuildConfig:
    """The segmented build's config (``raw_or_build``: the raw folder, or a build made from it)."""
    raw = raw_or_build
    if (raw / "manifest.json").is_file():
        raw = Path(read_manifest(raw).build["root"])
    return BuildConfig(source="folder", root=raw, out=out, task="multi", sample_rate=SR, workers=1,
                       shard_size_mb=0.05, segment_seconds=1.0)  # fmt: skip


def _exts(build_dir: Path, split: str) -> set[frozenset[str]]:
    """The member extensions of every sample of a split, as sets."""
    out: dict[str, set[str]] = {}
    for tar in read_manifest(build_dir).paths(split)[0]:
        with tarfile.open(tar) as tf:
            for name in tf.getnames():
                key, ext = name.split(".", 1)
                out.setdefault(key, set()).add(ext)
    return {frozenset(e) for e in out.values()}


def _same_batches(a: Any, b: Any, epochs: int) -> int:
    """Every batch of ``epochs`` epochs equal, key by key; returns the batches compared."""
    n = 0
    for _ in range(epochs):
        xs, ys = list(a), list(b)
        assert len(xs) == len(ys) > 0
        for x, y in zip(xs, ys):
            assert x.keys() == y.keys()
            for k in x:
                assert torch.equal(x[k], y[k]), k
        n += len(xs)
    return n


def _loaders(paths: list[Path], split: str, mode: str, **kw: Any) -> list[Any]:
    return [build_loader(p, split, mode=mode, **kw) for p in paths]  # type: ignore[arg-type]


def test_a_version_2_audio_build_gives_the_same_batches(segmented: Path, tmp_path: Path) -> None:
    v3 = segmented
    v2 = as_version(v3, tmp_path / "v2", 2)
    m2, m3 = read_manifest(v2), read_manifest(v3)
    assert (m2.version, m3.version) == (2, 3) and m2.segmented and m3.task.label_width == 6
    assert _exts(v3, "train") == {frozenset({"pcm", "ids", "json"})}
    assert _exts(v2, "train") == {frozenset({"pcm", "lbl", "tid", "seg", "json"})}
    assert verify_build(m2, show_progress=False).bad == []  # tars match the v2 manifest's sha256, sizes
    ids2, ids3 = read_ids(v2, "train"), read_ids(v3, "train")
    assert ids2.keys() == ids3.keys() and len(ids3) > m3.split("train").num_tracks  # several segments
    for sample, fields in ids3.items():
        assert {k: v.tolist() for k, v in fields.items()} == {k: v.tolist() for k, v in ids2[sample].items()}
    fc, aug, lc = small_configs(batch_size=4)
    fc = dataclasses.replace(fc, channels=["mel", "chroma"])
    kw: dict[str, Any] = dict(features=fc, augment=aug, loader=lc)
    assert _same_batches(*_loaders([v2, v3], "train", "train", **kw), epochs=2) >= 4
    assert _same_batches(*_loaders([v2, v3], "test", "eval", **kw), epochs=1) >= 1


def test_a_version_2_image_build_gives_the_same_batches(
    synth_image_shards: Callable[..., Path], tmp_path: Path
) -> None:
    v3 = synth_image_shards(tracks=24, seconds=3.0)
    v2 = as_version(v3, tmp_path / "v2", 2)
    assert read_manifest(v2).version == 2 and not read_manifest(v2).segmented
    assert _exts(v3, "train") == {frozenset({"mel.jpg", "cqt.jpg", "chroma.jpg", "ids", "json"})}
    assert _exts(v2, "train") == {frozenset({"mel.jpg", "cqt.jpg", "chroma.jpg", "lbl", "tid", "json"})}
    fc = FeatureConfig(n_mels=32, n_mfcc=8, image_frames=48, channels=IMAGE_CHANNELS, normalize="minmax")
    lc = LoaderConfig(
        batch_size=4, chunks_per_track=2, num_threads=1, eval_tracks_per_batch=3, initial_fill=8
    )
    kw: dict[str, Any] = dict(features=fc, augment=AugmentConfig(freq_width=4, time_width=6), loader=lc)
    assert _same_batches(*_loaders([v2, v3], "train", "train", **kw), epochs=2) >= 4
    assert _same_batches(*_loaders([v2, v3], "test", "eval", **kw), epochs=1) >= 1


def test_the_reader_asks_for_two_members_per_audio_sample(
    segmented: Path, synth_image_shards: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What DALI's reader is told to read in evaluation (one request per member per sample on
    ``s3://``); training reads the sample plan's media member only (its ids are the catalog's)."""
    asked: list[list[str]] = []
    reader = graph.fn.readers.webdataset

    def spy(**kw: Any) -> Any:
        asked.append(list(kw["ext"]))
        return reader(**kw)

    monkeypatch.setattr(graph.fn.readers, "webdataset", spy)
    fc, aug, lc = small_configs(batch_size=4)
    v2 = as_version(segmented, tmp_path / "v2", 2)
    for path in (segmented, v2):
        for split, mode in (("train", "train"), ("test", "eval")):
            next(iter(build_loader(path, split, mode=mode, features=fc, augment=aug, loader=lc)))  # type: ignore[arg-type]
    assert asked == [["pcm", "ids"], ["pcm", "lbl", "tid", "seg"]]
    images = synth_image_shards(tracks=24, seconds=3.0)
    fc = FeatureConfig(n_mels=32, n_mfcc=8, image_frames=48, channels=IMAGE_CHANNELS)
    next(iter(build_loader(images, "test", mode="eval", features=fc, augment=aug, loader=lc)))
    assert asked[-1] == ["mel.jpg", "cqt.jpg", "chroma.jpg", "ids"]


def test_the_fingerprint_follows_the_shard_format(segmented: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard-format change makes another plan: an older format's build never matches it."""
    cfg = _config(segmented, segmented)
    ds = import_dataset(cfg)
    ordered = plan_module.order_records(ds, cfg.seed)
    now = plan_module.fingerprint(cfg, ds, ordered)
    monkeypatch.setattr(plan_module, "VERSION", 2)
    assert plan_module.fingerprint(cfg, ds, ordered) != now


def test_a_version_2_build_in_the_folder_is_rebuilt(
    segmented: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder holds a complete build of the same inputs and options by a version-2 writer
    (emulated: the format version the writer, the plan and the manifest use set to 2): building
    again must not take it for up to date, and writes version 3."""
    out = tmp_path / "out"
    with monkeypatch.context() as old_writer:
        for module in (shards.format.members, plan_module, shards.builder.merge):
            old_writer.setattr(module, "VERSION", 2)
        assert build(_config(segmented, out), progress=False).version == 2
    assert _exts(out, "train") == {frozenset({"pcm", "lbl", "tid", "seg", "json"})}
    assert read_ids(out, "train").keys() == read_ids(segmented, "train").keys()
    m = build(_config(segmented, out), progress=False)
    assert m.version == 3 and read_manifest(out).version == 3
    assert _exts(out, "train") == {frozenset({"pcm", "ids", "json"})}
    assert verify_build(read_manifest(out), show_progress=False).bad == []
    tars = {t: t.stat().st_mtime_ns for t in out.rglob("*.tar")}
    assert build(_config(segmented, out), progress=False) == m  # now up to date: nothing rewritten
    assert {t: t.stat().st_mtime_ns for t in out.rglob("*.tar")} == tars
