"""Every family trains through the real Trainer on synthetic batches: the loss falls, and the
custom CNN and the GBM end clearly above chance on the learnable synthetic data."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval.validation import validator
from train.logger import read_metrics
from train.synthetic import synthetic_experiment
from train.trainer import Trainer


def _run(tmp_path: Path, overrides: list[str]) -> tuple[dict, list[dict]]:
    trainer = Trainer(
        synthetic_experiment(tmp_path, ["train.log_every=1", "train.threads=2", *overrides]),
        validate=validator(),
    )
    try:
        result = trainer.train()
    finally:
        trainer.close()
    return result, read_metrics(tmp_path)


def _losses(rows: list[dict]) -> list[float]:
    return [r["train/loss"] for r in rows if "train/loss" in r]


FAMILIES = [
    pytest.param("customcnn", ["model.preset=tiny"], id="customcnn"),
    pytest.param("ast", ["model.preset=tiny", "model.kwargs={depth = 2}"], id="ast"),
    pytest.param("efficientnet_b0", [], id="efficientnet_b0"),
    pytest.param("resnet50", [], id="resnet50", marks=pytest.mark.slow),
    pytest.param("efficientnet_b2", [], id="efficientnet_b2", marks=pytest.mark.slow),
    pytest.param("efficientnet_b4", [], id="efficientnet_b4", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("family", "extra"), FAMILIES)
def test_family_loss_falls(tmp_path: Path, family: str, extra: list[str]) -> None:
    """A few optimiser steps on one device-resident batch (so CPU time stays small)."""
    result, rows = _run(
        tmp_path,
        [
            f"model.family={family}",
            "data.synthetic_batches=1",
            "data.synthetic_batch_size=8",
            "data.synthetic_resident=true",
            "train.epochs=4",
            "optim.lr=2e-3",
            "optim.min_lr_ratio=1.0",
            *extra,
        ],
    )
    assert result["step"] == 4
    loss = _losses(rows)
    assert loss[-1] < 0.7 * loss[0], f"loss did not fall: {loss}"


@pytest.mark.parametrize(
    ("task", "classes", "metric", "floor"),
    [
        ("single", "[4]", "track/accuracy", 0.7),  # chance 0.25
        ("hier", "[2, 6]", "track/level_mean_accuracy", 0.7),  # chance (0.5 + 0.17) / 2
        ("multi", "[5]", "track/roc_auc", 0.8),  # chance 0.5
    ],
)
def test_customcnn_beats_chance(tmp_path: Path, task: str, classes: str, metric: str, floor: float) -> None:
    result, rows = _run(
        tmp_path,
        [
            f"data.synthetic_task={task}",
            f"data.synthetic_classes={classes}",
            "data.val_split=validation",
            "data.synthetic_signal=1.0",
            "data.synthetic_batches=8",
            "train.epochs=2",
            "optim.lr=3e-3",
        ],
    )
    assert result["metrics"][metric] > floor, result["metrics"]
    assert (tmp_path / "checkpoints" / "best.pt").is_file()
    assert rows[-1]["sync/max_diff"] == 0.0


def test_gbm_beats_chance(tmp_path: Path) -> None:
    result, rows = _run(
        tmp_path,
        [
            "model.family=gbm",
            "model.kwargs={pca_components = 16, rounds = 60, bands = 8}",
            "data.val_split=validation",
            "data.synthetic_signal=1.0",
            "data.synthetic_batches=10",
        ],
    )
    acc = result["metrics"]["track/accuracy"]
    assert acc > 0.6, result["metrics"]  # chance 0.25
    assert rows[-1]["gbm/samples"] == 160
    assert (tmp_path / "checkpoints" / "best.pt").is_file()


@pytest.mark.slow
def test_compiled_model_trains_and_checkpoints_uncompiled_names(tmp_path: Path) -> None:
    result, rows = _run(
        tmp_path,
        ["train.compile=true", "data.synthetic_batches=1", "data.synthetic_resident=true", "train.epochs=3"],
    )
    assert result["step"] == 3
    import torch

    ckpt = torch.load(tmp_path / "checkpoints" / "step_00000003.pt", weights_only=True)
    assert not any(k.startswith("_orig_mod") for k in ckpt["model"])
