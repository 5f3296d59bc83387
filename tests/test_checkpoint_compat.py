"""Checkpoints outlive config changes: a stored config with a key this version does not
know and without one it has still evaluates and resumes (the keys warn, defaults fill in)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from eval.runner import evaluate_model
from eval.validation import validator
from train.checkpoint import load_trained_model, read_checkpoint, write_checkpoint
from train.synthetic import synthetic_experiment
from train.trainer import Trainer

SMALL = ["train.threads=2", "data.synthetic_batches=4", "data.synthetic_batch_size=8", "data.synthetic_signal=1.0",
         "data.val_split=validation", "optim.lr=3e-3"]  # fmt: skip


def _old_checkpoint(tmp_path: Path) -> tuple[Path, Trainer]:
    trainer = Trainer(
        synthetic_experiment(tmp_path / "run", [*SMALL, "train.epochs=1"]), validate=validator()
    )
    trainer.train()
    trainer.close()
    path = tmp_path / "run" / "checkpoints" / "step_00000004.pt"
    state = read_checkpoint(path)
    cfg = state["config"]
    cfg["model"]["width_multiplier"] = 2  # a field a later version added (or this one removed)
    del cfg["optim"]["min_lr_ratio"]  # a field the writing version did not have yet
    del cfg["eval"]["top_k"]
    cfg["augmentation_v0"] = {"p": 0.5}  # a retired section
    write_checkpoint(state, path)
    return path, trainer


def test_old_config_checkpoint_still_evaluates(tmp_path: Path) -> None:
    path, trainer = _old_checkpoint(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor = load_trained_model(path)
    said = " ".join(str(w.message) for w in caught)
    assert "width_multiplier" in said and "augmentation_v0" in said
    assert predictor.experiment.optim.min_lr_ratio == 0.01  # the default filled in
    result = evaluate_model(predictor, trainer.data.val, predictor.task)
    assert result.metrics["track/count"] == trainer.metrics["track/count"]
    assert abs(result.metrics["track/accuracy"] - trainer.metrics["track/accuracy"]) < 1e-6
    x = next(iter(trainer.data.val))["x"]
    assert torch.allclose(predictor.predict_proba(x), trainer.predictor().predict_proba(x), atol=1e-5)


def test_old_config_checkpoint_still_resumes(tmp_path: Path) -> None:
    path, first = _old_checkpoint(tmp_path)
    exp = synthetic_experiment(tmp_path / "run2", [*SMALL, "train.epochs=2", f"checkpoint.resume='{path}'"])
    resumed = Trainer(exp, validate=validator())
    assert resumed.step == first.step == 4 and resumed.epoch == 1
    assert all(
        torch.equal(a, b)
        for a, b in zip(resumed.model.state_dict().values(), first.model.state_dict().values())
    )
    result = resumed.train()
    resumed.close()
    assert result["step"] == 8 and result["epoch"] == 2 and "track/accuracy" in result["metrics"]


def test_an_audio_checkpoint_from_before_the_true_cqt_keeps_its_pseudo_cqt(tmp_path: Path) -> None:
    """Its ``cqt`` was the filter bank now named ``pseudo_cqt``: evaluation must rebuild that."""
    path, trainer = _old_checkpoint(tmp_path)
    state = read_checkpoint(path)
    features = state["config"]["features"]
    features["channels"] = ["mel", "mfcc", "cqt"]
    for key in ("cqt_bins_per_octave", "cqt_filter_scale"):  # what a config of then did not have
        features.pop(key, None)
    write_checkpoint(state, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert load_trained_model(path).experiment.features.channels == ["mel", "mfcc", "pseudo_cqt"]
    features["cqt_bins_per_octave"] = 12  # written by this version: the true CQT
    write_checkpoint(state, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert load_trained_model(path).experiment.features.channels == ["mel", "mfcc", "cqt"]
