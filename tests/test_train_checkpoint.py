"""Checkpoints: resume continues as if never stopped; SIGTERM saves and exits; weights_only."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from eval.validation import validator
from train.checkpoint import load_trained_model
from train.synthetic import synthetic_experiment
from train.trainer import Trainer

# constant LR (min_lr_ratio=1) so a 1-epoch run's schedule equals the first epoch of a
# 2-epoch run; dropout + EMA + accumulation with a partial last group exercise RNG/state.
COMMON = [
    "train.threads=2",
    "data.synthetic_batches=5",
    "data.synthetic_batch_size=8",
    "model.dropout=0.3",
    "train.ema_decay=0.9",
    "optim.grad_accum=2",
    "optim.min_lr_ratio=1.0",
    "optim.lr=2e-3",
]


def _train(out: Path, extra: list[str], hooks: list | None = None) -> Trainer:
    trainer = Trainer(synthetic_experiment(out, COMMON + extra), hooks=hooks, validate=validator())
    trainer.result = trainer.train()
    trainer.close()
    return trainer


def _assert_same_weights(a: Trainer, b: Trainer) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.allclose(sa[k].float(), sb[k].float(), atol=1e-6), k
    ea, eb = a.ema.state_dict(), b.ema.state_dict()
    assert all(torch.allclose(ea[k].float(), eb[k].float(), atol=1e-6) for k in ea)


def test_two_epochs_equal_one_plus_resume_plus_one(tmp_path: Path) -> None:
    full = _train(tmp_path / "full", ["train.epochs=2"])
    first = _train(tmp_path / "split", ["train.epochs=1"])
    assert first.step == 3  # 5 batches, accumulation 2: 2 full steps + 1 flushed at epoch end
    resumed = _train(tmp_path / "split", ["train.epochs=2"])
    assert resumed.step == full.step == 6 and resumed.epoch == 2
    _assert_same_weights(full, resumed)
    # and the run did learn something: the weights moved from their init
    fresh = Trainer(
        synthetic_experiment(tmp_path / "fresh", COMMON + ["checkpoint.resume=none"]), validate=validator()
    )
    assert not torch.allclose(fresh.model.stem[0].weight, full.model.stem[0].weight)


def test_sigterm_mid_epoch_leaves_a_checkpoint_that_resumes(tmp_path: Path) -> None:
    full = _train(tmp_path / "full", ["train.epochs=2", "optim.grad_accum=1"])

    def preempt(trainer: Trainer) -> None:
        if trainer.step == 2:  # mid-epoch 1 (5 steps per epoch)
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = _train(tmp_path / "cut", ["train.epochs=2", "optim.grad_accum=1"], hooks=[preempt])
    assert stopped.result["stopped"] and stopped.step == 2 and stopped.epoch == 0
    files = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir())
    assert files == ["step_00000002.pt"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    resumed = _train(tmp_path / "cut", ["train.epochs=2", "optim.grad_accum=1"])
    assert resumed.step == 10 and not resumed.result["stopped"]
    _assert_same_weights(full, resumed)


def test_checkpoint_is_weights_only_and_feeds_eval(tmp_path: Path) -> None:
    trainer = _train(tmp_path, ["train.epochs=1", "data.val_split=validation", "data.synthetic_signal=1.0"])
    best = tmp_path / "checkpoints" / "best.pt"
    ckpt = torch.load(best, weights_only=True)
    for key in (
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "step",
        "epoch",
        "rng",
        "loader",
        "config",
        "task",
    ):
        assert key in ckpt
    assert ckpt["family"] == "customcnn" and ckpt["config"]["model"]["preset"] == "tiny"
    assert ckpt["metrics"]["track/accuracy"] == trainer.metrics["track/accuracy"]
    predictor = load_trained_model(best)
    x = next(iter(trainer.data.val))["x"]
    probs = predictor.predict_proba(x)
    assert probs.shape == (x.shape[0], 4)
    assert torch.allclose(probs.sum(1), torch.ones(x.shape[0]), atol=1e-5)
    assert torch.allclose(probs, trainer.predictor().predict_proba(x), atol=1e-5)  # EMA weights
    assert predictor.task.classes == trainer.task.classes


def test_gbm_checkpoint_loads_weights_only(tmp_path: Path) -> None:
    extra = ["model.family=gbm", "model.kwargs={pca_components = 8, rounds = 10}", "train.threads=1"]
    trainer = Trainer(synthetic_experiment(tmp_path, extra), validate=validator())
    trainer.train()
    path = tmp_path / "checkpoints" / "step_00000001.pt"
    ckpt = torch.load(path, weights_only=True)
    assert isinstance(ckpt["model"]["_extra_state"]["boosters"][0], str)
    x = next(iter(trainer.data.train))["x"]
    assert torch.allclose(load_trained_model(path).predict_proba(x), trainer.predictor().predict_proba(x))


def test_resume_with_other_vocabulary_is_refused(tmp_path: Path) -> None:
    _train(tmp_path, ["train.epochs=1", "data.synthetic_batches=2"])
    with pytest.raises(ValueError, match="different label vocabulary"):
        Trainer(synthetic_experiment(tmp_path, COMMON + ["data.synthetic_classes=[5]"]), validate=validator())


def test_keep_last_and_every_steps(tmp_path: Path) -> None:
    _train(
        tmp_path,
        ["train.epochs=1", "optim.grad_accum=1", "checkpoint.every_steps=1", "checkpoint.keep_last=2"],
    )
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_00000004.pt", "step_00000005.pt"]  # no temp files left behind


def test_explicit_resume_path_must_exist(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint.resume"):
        Trainer(
            synthetic_experiment(tmp_path, [f"checkpoint.resume='{tmp_path / 'nope.pt'}'"]),
            validate=validator(),
        )


def test_epoch_checkpoint_carries_this_epochs_best(tmp_path: Path) -> None:
    """The step file written at an epoch end already knows the epoch's score, so a resumed
    run compares against it (and does not overwrite a better best.pt with a worse one)."""
    trainer = _train(tmp_path, ["train.epochs=1", "data.val_split=validation"])
    score = trainer.metrics["track/accuracy"]
    step = torch.load(tmp_path / "checkpoints" / "step_00000003.pt", weights_only=True)
    assert step["best"] == score
    resumed = Trainer(
        synthetic_experiment(tmp_path, COMMON + ["train.epochs=2", "data.val_split=validation"]),
        validate=validator(),
    )
    assert resumed.checkpointer.best == score


def test_nan_score_never_becomes_the_best(tmp_path: Path) -> None:
    from train.checkpoint import Checkpointer
    from train.config import CheckpointConfig

    c = Checkpointer(tmp_path, CheckpointConfig())
    assert not c.improved(float("nan"), "max") and c.best is None
    assert c.improved(0.5, "max") and not c.improved(float("nan"), "max") and c.best == 0.5
    c.best = float("nan")  # written by an older run
    assert c.improved(0.1, "max") and c.best == 0.1


def test_resume_keeps_a_fresh_scaler_when_the_checkpoint_had_none(tmp_path: Path) -> None:
    """A bf16/CPU run saves an empty scaler state; resuming it with fp16 must not crash."""
    _train(tmp_path, ["train.epochs=1"])
    state = torch.load(tmp_path / "checkpoints" / "step_00000003.pt", weights_only=True)
    assert state["scaler"] == {}
    trainer = Trainer(
        synthetic_experiment(tmp_path, COMMON + ["train.epochs=2", "checkpoint.resume=none"]),
        validate=validator(),
    )
    trainer.scaler = torch.amp.GradScaler("cpu", enabled=True)  # what fp16 on CUDA builds
    trainer.load_state_dict(state)
    assert trainer.step == 3 and trainer.scaler.is_enabled()


class _FakeDDP:
    """Records which micro-batches ran under no_sync (gradients not all-reduced)."""

    def __init__(self) -> None:
        self.unsynced: list[int] = []
        self.batch = 0

    def no_sync(self):  # noqa: ANN201
        import contextlib

        self.unsynced.append(self.batch)
        return contextlib.nullcontext()


def test_partial_accumulation_group_at_epoch_end_is_synchronised(tmp_path: Path) -> None:
    """5 batches, grad_accum=2: groups (0,1) (2,3) (4). Batch 4 closes its own group, so DDP
    all-reduces it; under no_sync its gradients would differ per rank and the ranks diverge."""
    fake = _FakeDDP()

    def count(trainer: Trainer) -> None:
        fake.batch = trainer.batch_in_epoch

    trainer = Trainer(
        synthetic_experiment(tmp_path, COMMON + ["train.epochs=1"]), hooks=[count], validate=validator()
    )
    trainer.ddp = fake  # type: ignore[assignment]
    for i, batch in enumerate(trainer.data.train):
        fake.batch = i
        trainer.train_step(batch)
        trainer.batch_in_epoch += 1
    assert fake.unsynced == [0, 2]  # batches 1, 3 and 4 end a group and synchronise
    assert trainer.step == 3 and trainer.micro == 0
    assert trainer.total_steps == 3  # the schedule counts the partial group's step


def test_signal_after_the_last_agreement_does_not_skip_the_final_save(tmp_path: Path) -> None:
    """max_steps ends the run mid-epoch; a SIGTERM landing after the ranks last agreed must
    not make this rank skip the final (collective) save that the other ranks enter."""
    trainer = Trainer(
        synthetic_experiment(tmp_path, COMMON + ["optim.grad_accum=1", "train.max_steps=2"]),
        validate=validator(),
    )
    done = trainer._done

    def late_signal() -> bool:
        if done():
            trainer.stop.requested = True  # what the handler does, after _should_stop ran
        return done()

    trainer._done = late_signal  # type: ignore[method-assign]
    result = trainer.train()
    trainer.close()
    assert result["step"] == 2 and not result["stopped"]
    assert (tmp_path / "checkpoints" / "step_00000002.pt").is_file()
