"""GPU paths (skipped without CUDA): AMP bf16/fp16 with channels_last, DALI gpu loader."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from eval.validation import validator
from train.checkpoint import load_trained_model
from train.config import load_experiment
from train.logger import read_metrics
from train.synthetic import synthetic_experiment
from train.trainer import Trainer

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_channels_last_on_gpu(tmp_path: Path, amp: str) -> None:
    exp = synthetic_experiment(
        tmp_path,
        [
            "train.device=cuda", f"train.amp={amp}", "train.channels_last=true", "train.log_every=1",
            "model.family=efficientnet_b0", "data.synthetic_batches=1", "data.synthetic_resident=true",
            "data.synthetic_signal=1.0", "train.epochs=6", "optim.lr=2e-3", "optim.min_lr_ratio=1.0",
        ],
    )  # fmt: skip
    trainer = Trainer(exp, validate=validator())
    assert next(iter(trainer.data.train))["x"].is_cuda
    trainer.train()
    trainer.close()
    loss = [r["train/loss"] for r in read_metrics(tmp_path) if "train/loss" in r]
    assert all(torch.isfinite(torch.tensor(loss))) and loss[-1] < 0.7 * loss[0], loss
    ckpt = torch.load(tmp_path / "checkpoints" / "step_00000006.pt", weights_only=True)
    assert (ckpt["scaler"].get("scale", 0) > 0) == (amp == "fp16")
    pred = load_trained_model(tmp_path / "checkpoints" / "step_00000006.pt", "cuda")
    assert pred.predict_proba(torch.randn(2, 3, 32, 32, device="cuda")).shape == (2, 4)


def test_dali_gpu_loader_feeds_the_trainer(synth_shards: Callable[..., Path], tmp_path: Path) -> None:
    shards = synth_shards(task="hier", tracks=24, seconds=3.0, sample_rate=8000)
    exp = load_experiment(
        ROOT / "configs" / "demo_customcnn.toml",
        [f"data.shards={shards}", f"train.out={tmp_path}", "train.device=cuda", "train.epochs=1",
         "features.sample_rate=8000", "loader.chunk_seconds=1.0", "loader.batch_size=8",
         "loader.chunks_per_track=2"],
    )  # fmt: skip
    trainer = Trainer(exp, validate=validator())
    batch = next(iter(trainer.data.train))
    assert batch["x"].is_cuda and batch["x"].dtype == torch.float32
    result = trainer.train()
    trainer.close()
    assert "track/level_mean_accuracy" in result["metrics"]
