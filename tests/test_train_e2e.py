"""End to end on real (tiny) synthetic shards through the DALI cpu pipeline."""

from __future__ import annotations

import os
import signal
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from eval.validation import validator
from train.checkpoint import load_trained_model
from train.config import load_experiment
from train.logger import read_metrics
from train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
# 8 kHz, 1 s chunks, 32 mel rows: (3, 32, 32) per chunk keeps every step cheap on 2 cores
TINY = [
    "features.sample_rate=8000", "features.n_fft=256", "features.hop_length=256", "features.n_mels=32",
    "features.n_mfcc=16", "loader.batch_size=8", "loader.chunks_per_track=2", "loader.chunk_seconds=1.0",
    "loader.num_threads=1", "loader.eval_tracks_per_batch=4", "loader.initial_fill=8",
    "augment.freq_width=4", "augment.time_width=4", "model.family=customcnn", "model.preset=tiny",
    "train.amp=none", "train.device=cpu", "train.threads=2", "train.log_every=1", "optim.lr=3e-3",
]  # fmt: skip


def _exp(shards: Path, out: Path, extra: list[str]):
    return load_experiment(
        ROOT / "configs" / "demo_customcnn.toml", [f"data.shards={shards}", f"train.out={out}"] + TINY + extra
    )


def _train(shards: Path, out: Path, extra: list[str], hooks: list[Callable] | None = None) -> Trainer:
    trainer = Trainer(_exp(shards, out, extra), hooks=hooks, validate=validator())
    trainer.result = trainer.train()
    trainer.close()
    return trainer


@pytest.fixture(scope="module")
def single(synth_shards: Callable[..., Path]) -> Path:
    return synth_shards(task="single", tracks=24, seconds=3.0, sample_rate=8000)


def test_trains_validates_and_checkpoints_on_shards(single: Path, tmp_path: Path) -> None:
    trainer = _train(single, tmp_path, ["train.epochs=2"])
    assert trainer.data.feature_shape == (3, 32, 32)
    assert trainer.step == 2 * len(trainer.data.train) > 0
    rows = read_metrics(tmp_path)
    assert [r["epoch"] for r in rows if "val/track/accuracy" in r] == [1, 2]
    curves = tmp_path / "curves.png"  # written by close() on rank 0
    assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = load_trained_model(tmp_path / "checkpoints" / "best.pt")
    assert best.task.classes == trainer.task.classes
    assert best.configs["features"].n_mels == 32
    # close() released both loaders' pipelines (before __main__ destroys the process group)
    assert trainer.data.train._dali is None and trainer.data.val._dali is None
    batch = next(iter(trainer.data.val))
    probs = best.predict_proba(batch["x"])
    assert torch.allclose(probs.sum(1), torch.ones(len(probs)), atol=1e-5)


@pytest.mark.parametrize(("amp", "warns"), [("auto", False), ("bf16", True)])
def test_amp_auto_trains_in_float32_on_cpu_without_a_warning(
    single: Path, tmp_path: Path, amp: str, warns: bool
) -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        trainer = Trainer(_exp(single, tmp_path, [f"train.amp={amp}"]), validate=validator())
        trainer.close()
    assert trainer.exp.train.amp == amp and trainer._amp is None  # CPU: float32 either way
    assert any("no effect on CPU" in str(w.message) for w in seen) == warns


def test_sigterm_on_shards_resumes_like_an_uninterrupted_run(single: Path, tmp_path: Path) -> None:
    extra = ["train.epochs=2", "data.val_split=''", "optim.min_lr_ratio=1.0"]
    full = _train(single, tmp_path / "full", extra)

    def preempt(trainer: Trainer) -> None:
        if trainer.step == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    cut = _train(single, tmp_path / "cut", extra, hooks=[preempt])
    assert cut.result["stopped"] and cut.step == 1
    resumed = _train(single, tmp_path / "cut", extra)
    assert resumed.step == full.step
    for k, v in full.model.state_dict().items():
        assert torch.allclose(v.float(), resumed.model.state_dict()[k].float(), atol=1e-5), k


@pytest.mark.parametrize(
    ("task", "metric"), [("hier", "track/level_mean_accuracy"), ("multi", "track/roc_auc")]
)
def test_other_tasks_on_shards(
    synth_shards: Callable[..., Path], tmp_path: Path, task: str, metric: str
) -> None:
    shards = synth_shards(task=task, tracks=24, seconds=3.0, sample_rate=8000)
    trainer = _train(shards, tmp_path, ["train.epochs=1"])
    assert metric in trainer.metrics
    assert trainer.task.kind == task


def test_augmentations_change_the_losses_and_are_exactly_off_at_neutral(single: Path, tmp_path: Path) -> None:
    """Issue 33: speed, gain and mixup all on -> other losses at every step; all three at their
    neutral settings -> the losses of a run without the keys, bit for bit."""

    def losses(name: str, extra: list[str]) -> list[float]:
        _train(single, tmp_path / name, ["train.epochs=1", "data.val_split=''", *extra])
        return [r["train/loss"] for r in read_metrics(tmp_path / name) if "train/loss" in r]

    plain = losses("plain", [])
    neutral = losses("neutral", ["augment.speed=[1.0, 1.0]", "augment.gain_db=0", "augment.mixup_alpha=0"])
    on = losses("on", ["augment.speed=[0.8, 1.25]", "augment.gain_db=6", "augment.mixup_alpha=0.4"])
    assert len(plain) == len(on) > 1 and neutral == plain
    assert all(a != b for a, b in zip(on, plain))
