"""The DALI image branch on image shards: parity with PIL + torchvision, the loader contract."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.tars import read_ids, read_members

from pipelines.bench.image_baseline import ImageBaselineLoader, reference_image
from pipelines.config import AugmentConfig, FeatureConfig, LoaderConfig
from pipelines.loader import build_loader
from pipelines.shard_checks import ShardError
from shards.format.manifest import read_manifest

CHANNELS = ["mel", "cqt", "chroma"]
# Tolerances on [0, 1] pixel values, DALI (libjpeg-turbo decode, its antialiased linear resize)
# against PIL decode + torchvision's antialiased bilinear resize of the same bytes. Measured on
# synthetic spectrogram JPEGs (345 px wide -> 48): mean |diff| 0.0008 (0.0016 after min-max), max
# 0.074 in the first/last column (the two filters treat the border differently), 0.046 inside.
MEAN_TOL, MAX_TOL = 0.004, 0.1


def _features(color: str = "gray", normalize: str = "none", **kw: object) -> FeatureConfig:
    return FeatureConfig(n_mels=32, n_mfcc=8, image_frames=48, channels=CHANNELS, image_color=color,  # type: ignore[arg-type]
                         normalize=normalize, **kw)  # type: ignore[arg-type]  # fmt: skip


LOADER = LoaderConfig(
    batch_size=4, chunks_per_track=2, num_threads=1, eval_tracks_per_batch=3, initial_fill=8
)
AUGMENT = AugmentConfig(freq_width=4, time_width=6)


@pytest.fixture(scope="module")
def shards(synth_image_shards: Callable[..., Path]) -> Path:
    return synth_image_shards(tracks=24, seconds=3.0)


def _eval_all(shards: Path, features: FeatureConfig, device: str = "cpu") -> dict[str, torch.Tensor]:
    loader = build_loader(
        shards, "test", mode="eval", features=features, augment=AUGMENT, loader=LOADER, device=device
    )
    batches = list(loader)
    return {k: torch.cat([b[k].cpu() for b in batches]) for k in ("x", "y", "track")}


@pytest.mark.parametrize("color", ["gray", "rgb"])
def test_decode_resize_normalise_match_pil_torchvision(shards: Path, color: str) -> None:
    members = read_members(shards, "test")
    for normalize in ("none", "minmax"):
        out = _eval_all(shards, _features(color, normalize))
        assert out["x"].shape == (4, 3 * (3 if color == "rgb" else 1), 32, 48)
        for x, tid in zip(out["x"], out["track"].tolist()):
            ref = torch.cat(
                [reference_image(members[tid][f"{c}.jpg"], (32, 48), color) for c in CHANNELS]
            ).numpy()
            ref = ref / 255.0
            if normalize == "minmax":  # independent of the shared FeatureAssembler: per plane in numpy
                lo, hi = ref.min(axis=(1, 2), keepdims=True), ref.max(axis=(1, 2), keepdims=True)
                ref = (ref - lo) / np.maximum(hi - lo, 1e-8)
            diff = np.abs(x.numpy() - ref)
            assert diff.mean() < MEAN_TOL and diff.max() < MAX_TOL, (normalize, diff.mean(), diff.max())


def test_eval_each_image_once_and_training_batches(shards: Path) -> None:
    m = read_manifest(shards)
    ids = read_ids(shards, "test")
    out = _eval_all(shards, _features(normalize="minmax"))
    assert sorted(out["track"].tolist()) == sorted(ids) == list(range(m.splits["test"].num_samples))
    for y, tid in zip(out["y"].tolist(), out["track"].tolist()):
        assert y == int(ids[tid]["lbl"][0]) and set(ids[tid]) == {"tid", "lbl"}  # no segments in images

    fc = _features(normalize="minmax")
    loader = build_loader(shards, "train", mode="train", features=fc, augment=AUGMENT, loader=LOADER)
    assert loader.feature_shape == (3, 32, 48)
    assert len(loader) == m.splits["train"].num_samples // LOADER.tracks_per_batch
    seen, masked = [], 0
    for b in loader:
        assert b["x"].shape == (4, 3, 32, 48) and b["x"].dtype == torch.float32
        t = b["track"].tolist()
        assert t[0::2] == t[1::2]  # K = 2 crops per image, consecutive
        masked += int((b["x"] == 0).all(dim=1).all(dim=1).sum())  # whole masked time columns
        assert not torch.equal(b["x"][0], b["x"][1])  # two random crops (and masks) differ
        seen += t[0::2]
    assert len(seen) == len(set(seen)) and masked > 0


def test_meanstd_statistics_of_image_shards(shards: Path, tmp_path: Path) -> None:
    from pipelines.stats import compute_stats, write_stats

    fc = _features(normalize="meanstd", stats_file=tmp_path / "stats.json")
    stats = compute_stats(shards, features=fc, loader=LOADER, split="test", progress=False)
    assert sorted(stats["mean"]) == ["chroma", "cqt", "mel"] and 0 < stats["mean"]["mel"] < 1
    write_stats(shards, stats, tmp_path / "stats.json")
    x = _eval_all(shards, fc)["x"].double()
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3, dtype=torch.float64), atol=1e-2)


def test_missing_channel_is_one_error(shards: Path) -> None:
    fc = FeatureConfig(n_mels=32, n_mfcc=8, channels=["mel", "mfcc"])
    with pytest.raises(
        ShardError,
        match=r"image build has no \['mfcc'\] image: set features.channels = \['mel', 'chroma', 'cqt'\]",
    ):
        build_loader(shards, "test", mode="eval", features=fc, augment=AUGMENT, loader=LOADER)


def test_baseline_yields_the_same_contract(shards: Path) -> None:
    fc = _features(normalize="minmax")
    base = ImageBaselineLoader(
        shards, "test", mode="eval", features=fc, augment=AUGMENT, loader=LOADER, workers=0
    )
    batches = list(base)
    x = torch.cat([b["x"] for b in batches])
    track = torch.cat([b["track"] for b in batches])
    ref = _eval_all(shards, fc)
    order, ref_order = track.argsort(), ref["track"].argsort()
    assert torch.equal(track[order], ref["track"][ref_order])
    diff = (x[order] - ref["x"][ref_order]).abs()
    assert float(diff.mean()) < MEAN_TOL and float(diff.max()) < MAX_TOL


@pytest.mark.gpu
def test_gpu_nvjpeg_matches_cpu(shards: Path) -> None:
    fc = _features(normalize="none")
    cpu, gpu = _eval_all(shards, fc), _eval_all(shards, fc, device="cuda")
    assert torch.equal(cpu["track"], gpu["track"])
    diff = (cpu["x"] - gpu["x"]).abs()
    assert float(diff.mean()) < MEAN_TOL and float(diff.max()) < MAX_TOL
