"""What a loader's DALI graph depends on, from its build(s), configs, mode and rank."""

from __future__ import annotations

import warnings
from typing import Literal

import torch

from pipelines.config import AugmentConfig, FeatureConfig, LoaderConfig, framing
from pipelines.graph import GraphSpec
from shards.format import Manifest, MemberLayout, member_layout


def warn_downsampling(shards_rate: int, rate: int) -> None:
    """DALI 2.4's resampler evaluates its sinc at the input rate, so it
    does not low-pass when downsampling (content above rate/2 aliases)."""
    warnings.warn(
        f"shards are at {shards_rate} Hz and features at {rate} Hz: DALI's audio_resample does not "
        f"low-pass when downsampling, so content above {rate / 2:.0f} Hz folds into the features; "
        f"build the shards at {rate} Hz (python -m shards ... sample_rate={rate}) for clean features",
        stacklevel=3,
    )


def graph_spec(
    manifest: Manifest,
    split: str,
    mode: Literal["train", "eval"],
    configs: tuple[FeatureConfig, AugmentConfig, LoaderConfig],
    *,
    rank: int,
    world_size: int,
    dev: torch.device,
    image_exts: list[str],
    tars: list[str],
    idxs: list[str],
    plain_reads: bool = False,
    codec: str | None = None,
    rate: int | None = None,
    members: MemberLayout | None = None,
) -> GraphSpec:
    """What the DALI graph of this split, mode and rank depends on (``codec``/``rate``/``members``:
    what a training plan over mixed builds delivers, when not the manifest's own)."""
    features, augment, loader = configs
    return GraphSpec(
        tars=tars,
        idxs=idxs,
        codec=codec or manifest.codec,
        shards_rate=rate or manifest.sample_rate,
        features=features,
        augment=augment,
        loader=loader,
        framing=framing(features, loader),
        mode=mode,
        device="gpu" if dev.type == "cuda" else "cpu",
        rank=rank,
        world_size=world_size,
        device_id=dev.index if dev.type == "cuda" else None,
        members=members or member_layout(manifest),
        segment_samples=manifest.segment_samples,
        longest_sample=round(manifest.split(split).longest_sample_seconds * manifest.sample_rate),
        image_exts=image_exts,
        plain_reads=plain_reads,
    )
