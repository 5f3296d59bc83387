"""End to end on image shards: images rendered from synthetic audio -> shards -> train -> eval."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from eval.cli import main as eval_main
from eval.predict import Predictor
from shards.format.manifest import read_manifest
from train.__main__ import main as train_main

ROOT = Path(__file__).resolve().parents[1]
IMAGE = [
    "features.n_mels=32", "features.n_mfcc=8", "features.image_frames=32",
    'features.channels=["mel","cqt","chroma"]', "loader.batch_size=8", "loader.chunks_per_track=2",
    "loader.num_threads=1", "loader.eval_tracks_per_batch=8", "loader.initial_fill=16",
    "augment.freq_width=4", "augment.time_width=4", "train.device=cpu", "train.threads=2",
    "train.amp=none", "optim.warmup_steps=2",
]  # fmt: skip


@pytest.mark.slow
def test_build_train_eval_on_images(synth_image_shards: Callable[..., Path], tmp_path: Path) -> None:
    shards = synth_image_shards(tracks=48, seconds=3.0)
    m = read_manifest(shards)
    assert m.kind == "image" and m.splits["test"].num_samples == 7
    run, out = tmp_path / "run", tmp_path / "report"
    over = [f"--data.shards={shards}", f"--train.out={run}", "--train.epochs=4", *(f"--{o}" for o in IMAGE)]
    assert train_main(["--config", str(ROOT / "configs" / "demo_customcnn.toml"), *over]) == 0
    ckpt = run / "checkpoints" / "best.pt"
    assert (
        eval_main(
            ["--checkpoint", str(ckpt), "--shards", str(shards), "--out", str(out), "--eval.device=cpu"]
        )
        == 0
    )
    metrics = next(iter(json.loads((out / "metrics.json").read_text())["models"].values()))["metrics"]
    # 4 balanced classes, chance 0.25; this run scores 5 of the 7 test tracks (0.71)
    assert metrics["track/accuracy"] >= 0.5, metrics
    with pytest.raises(ValueError, match="trained on image shards"):  # predict reads audio files
        Predictor.from_checkpoint(ckpt, device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_b0", "ast", "customcnn", "gbm_pca"])
def test_ccmusic_seed_configs_read_image_shards(synth_image_shards: Callable[..., Path], name: str) -> None:
    """The four ccmusic seed configs, unchanged, feed (3, 256, 256) mel + cqt + chroma batches."""
    from pipelines.loader import build_loader
    from train.config import load_experiment

    shards = synth_image_shards(task="hier", tracks=24, seconds=3.0)
    exp = load_experiment(ROOT / "configs" / f"ccmusic_{name}.toml", [f"--data.shards={shards}"])
    kw = dict(features=exp.features, augment=exp.augment, loader=exp.loader)
    train = build_loader(shards, "train", mode="train", **kw)  # type: ignore[arg-type]
    assert train.feature_shape == (3, 256, 256)
    batch = next(iter(train))
    assert batch["x"].shape == (exp.loader.batch_size, 3, 256, 256) and batch["y"].shape[1] == 3
    assert float(batch["x"].max()) == 1.0 and float(batch["x"].min()) == 0.0  # min-max per plane
