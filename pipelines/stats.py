"""``python -m pipelines.stats SHARDS``: per-channel mean/std for ``features.normalize='meanstd'``.

Computed once from the training split (evaluation chunks, no augmentation, no
normalisation) for every channel, written atomically beside the manifest as
``feature_stats.json`` together with the feature settings it is valid for.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from pipelines.channels import channel_names
from pipelines.config import AugmentConfig, FeatureConfig, LoaderConfig
from pipelines.defaults import feature_defaults
from pipelines.feature_stack import CQT_DEFINITION, STATS_FILE, stats_key
from pipelines.loader import build_loader
from shards.base.config import load_sections
from shards.base.errors import CliParser, run_cli
from shards.base.progress import progress as progress_bar
from shards.format import read_manifest, storage


def compute_stats(
    shards: str | Path,
    *,
    features: FeatureConfig,
    loader: LoaderConfig,
    split: str = "train",
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Mean and std of every channel over all chunks of ``split`` (float64 accumulation)."""
    manifest = read_manifest(shards)
    # image builds: their channels; audio: every registered channel these settings can compute,
    # so any later choice finds its stats
    names = list(manifest.images) if manifest.kind == "image" else computable(features)
    # (images: gray, one plane per channel, as 'meanstd' needs)
    gray = dataclasses.replace(features, channels=names, normalize="none", image_color="gray")
    dl = build_loader(
        shards,
        split,
        mode="eval",
        features=gray,
        augment=AugmentConfig(enabled=False),
        loader=loader,
        rank=0,
        world_size=1,
        device=device,
    )
    # per-channel sums on the batches' device, float64 accumulators fed by float64 reductions
    # (no float64 copy of x, no transfer per batch: one .cpu() at the end)
    total = torch.zeros(len(names), dtype=torch.float64, device=dl.device)
    square = torch.zeros_like(total)
    count = 0
    chunks = 0
    for batch in progress_bar(dl, total=len(dl), desc="stats", unit="batch", enabled=progress):
        x = batch["x"]
        total += x.sum(dim=(0, 2, 3), dtype=torch.float64)
        square += x.square().sum(dim=(0, 2, 3), dtype=torch.float64)
        count += x[:, 0].numel()
        chunks += x.shape[0]
    total, square = total.cpu(), square.cpu()
    mean = total / count
    std = (square / count - mean * mean).clamp_min(0).sqrt()
    return {
        "features": stats_key(features),
        "split": split,
        "chunks": chunks,
        "mean": {c: float(v) for c, v in zip(names, mean)},
        "std": {c: float(v) for c, v in zip(names, std)},
    } | ({"cqt": CQT_DEFINITION} if manifest.kind == "audio" else {})


def computable(features: FeatureConfig) -> list[str]:
    """The registered channels ``features`` can compute (a CQT whose top bins would pass the
    Nyquist frequency cannot: 84 bins from C1 need more than 8 kHz)."""
    names = []
    for name in channel_names():
        try:
            dataclasses.replace(features, channels=[name], normalize="none", norm_mean=None, norm_std=None)
        except ValueError:
            continue
        names.append(name)
    return names


def write_stats(shards: str | Path, stats: dict, out: Path | None = None) -> storage.Location:
    """Beside the manifest (a local folder or an object-store prefix) unless ``out`` is given."""
    path = out or storage.join(shards, STATS_FILE)
    storage.write_text(path, json.dumps(stats, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = CliParser(prog="python -m pipelines.stats", description=__doc__.splitlines()[0])
    ap.add_argument("shards", help="shard build folder or s3://bucket/prefix (with manifest.json)")
    ap.add_argument("--config", type=Path, help="experiment TOML ([features] and [loader] are used)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda[:N]")
    ap.add_argument("--out", type=Path, help=f"output file (default SHARDS/{STATS_FILE})")
    args, overrides = ap.parse_known_args(argv)
    cfg = load_sections(
        {"features": FeatureConfig, "loader": LoaderConfig},
        args.config,
        overrides,
        allow_other=True,
        defaults=feature_defaults(args.shards),  # an image build's channels and sizes, unless set
    )
    stats = compute_stats(
        args.shards, features=cfg["features"], loader=cfg["loader"], split=args.split, device=args.device
    )
    path = write_stats(args.shards, stats, args.out)
    print(
        f"{path}: {stats['chunks']} chunks; "
        + ", ".join(f"{c} {stats['mean'][c]:.3g}±{stats['std'][c]:.3g}" for c in stats["mean"])
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
