"""Mixup (``augment.mixup_alpha``, train/mixup.py): the convex combination per task kind,
Beta(alpha, alpha) draws reproducible from (seed, rank), exactly off at 0, never in
validation, and a mid-epoch resume with it on that loses no draw."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from eval.validation import validator
from shards.base.tasks import TaskSpec
from train.config import load_experiment_tree
from train.logger import read_metrics
from train.loss import TaskLoss
from train.mixup import Mixup, soft_targets
from train.synthetic import synthetic_experiment, synthetic_task
from train.trainer import Trainer

TASKS = {"single": [4], "multi": [5], "hier": [2, 4]}
# dropout draws from torch's global stream: mixup's own generator must leave it alone
COMMON = ["train.threads=2", "data.synthetic_batches=5", "data.synthetic_batch_size=8", "model.dropout=0.3",
          "optim.min_lr_ratio=1.0", "optim.lr=2e-3", "train.log_every=1"]  # fmt: skip


def _labels(spec: TaskSpec, n: int, g: torch.Generator) -> torch.Tensor:
    if spec.kind == "single":
        return torch.randint(0, spec.head_sizes[0], (n,), generator=g)
    if spec.kind == "multi":
        return (torch.rand((n, spec.head_sizes[0]), generator=g) < 0.4).float()
    leaf = torch.randint(0, spec.head_sizes[-1], (n,), generator=g)
    return torch.stack([torch.tensor(spec.levels[1].parent)[leaf], leaf], 1)


@pytest.mark.parametrize("kind", sorted(TASKS))
def test_mixed_batch_is_the_convex_combination(kind: str) -> None:
    spec = synthetic_task(kind, TASKS[kind])
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 2, 6, 5, generator=g), _labels(spec, 8, g)
    mix = Mixup(0.4, spec, seed=3, rank=0)
    lam, perm = Mixup(0.4, spec, seed=3, rank=0).draw(8)  # the draw the mix will make
    mx, q = mix(x, y)
    assert 0.0 <= lam <= 1.0 and sorted(perm.tolist()) == list(range(8)) and perm.tolist() != list(range(8))
    assert mx.shape == x.shape and torch.allclose(mx, lam * x + (1 - lam) * x[perm], atol=1e-6)
    hard = soft_targets(spec, y)
    assert q.shape == (8, sum(spec.head_sizes)) and q.dtype == torch.float32
    assert torch.allclose(q, lam * hard + (1 - lam) * hard[perm], atol=1e-6)
    assert q.min() >= 0 and q.max() <= 1 + 1e-6
    if kind != "multi":  # every head's block is a distribution
        for block in torch.split(q, spec.head_sizes, dim=1):
            assert torch.allclose(block.sum(1), torch.ones(8), atol=1e-6)
    else:  # a tag's target is the share of the pair that carries it
        levels = torch.tensor([0.0, lam, 1 - lam, 1.0])
        assert ((q.reshape(-1, 1) - levels).abs().min(1).values < 1e-6).all()


def test_lambda_is_beta_alpha_alpha() -> None:
    """Mean 1/2 and variance 1 / (4 (2 alpha + 1)): Beta(0.2, 0.2) is U-shaped, not uniform."""
    mix = Mixup(0.2, synthetic_task("single", [4]), seed=0, rank=0)
    lam = torch.tensor([mix.draw(4)[0] for _ in range(4000)], dtype=torch.float64)
    assert lam.min() >= 0 and lam.max() <= 1
    assert lam.mean().item() == pytest.approx(0.5, abs=0.02)
    assert lam.var().item() == pytest.approx(1 / (4 * 1.4), rel=0.08)
    assert ((lam < 0.1) | (lam > 0.9)).float().mean().item() > 0.5  # most mass near the ends


def test_draws_follow_seed_and_rank_and_resume_from_state() -> None:
    spec = synthetic_task("single", [4])

    def draws(m: Mixup, n: int = 5) -> list[tuple[float, list[int]]]:
        return [(lam, p.tolist()) for lam, p in (m.draw(16) for _ in range(n))]

    assert draws(Mixup(0.4, spec, seed=7, rank=1)) == draws(Mixup(0.4, spec, seed=7, rank=1))
    assert draws(Mixup(0.4, spec, seed=7, rank=1)) != draws(Mixup(0.4, spec, seed=7, rank=0))
    assert draws(Mixup(0.4, spec, seed=7, rank=1)) != draws(Mixup(0.4, spec, seed=8, rank=1))
    a = Mixup(0.4, spec, seed=7, rank=1)
    draws(a, 3)
    state = a.state_dict()
    b = Mixup(0.4, spec, seed=0, rank=0)
    b.load_state_dict(state)
    assert draws(a) == draws(b)


@pytest.mark.parametrize("kind", sorted(TASKS))
def test_soft_target_loss_is_the_mix_of_the_two_losses(kind: str) -> None:
    """lam * loss(y_a) + (1 - lam) * loss(y_b), per level for hier, with the run's label smoothing."""
    spec = synthetic_task(kind, TASKS[kind])
    g = torch.Generator().manual_seed(2)
    logits, ya, yb = (
        torch.randn(6, sum(spec.head_sizes), generator=g),
        _labels(spec, 6, g),
        _labels(spec, 6, g),
    )
    head, lam = TaskLoss(spec, label_smoothing=0.1), 0.3
    q = lam * soft_targets(spec, ya) + (1 - lam) * soft_targets(spec, yb)
    expected = lam * head.loss(logits, ya) + (1 - lam) * head.loss(logits, yb)
    assert head.loss(logits, q).item() == pytest.approx(expected.item(), rel=1e-5)
    # and a one-hot soft target is the hard label's loss (smoothing applied the same way)
    assert head.loss(logits, soft_targets(spec, ya)).item() == pytest.approx(
        head.loss(logits, ya).item(), rel=1e-5
    )
    if kind == "single":
        assert head.loss(logits, ya).item() != pytest.approx(F.cross_entropy(logits, ya).item(), rel=1e-3)


def _train(out: Path, extra: list[str], hooks: list | None = None) -> tuple[Trainer, dict[int, float]]:
    trainer = Trainer(synthetic_experiment(out, COMMON + extra), hooks=hooks)
    trainer.result = trainer.train()
    trainer.close()
    losses = {m["step"]: m["train/loss"] for m in read_metrics(out) if "train/loss" in m}
    return trainer, losses


@pytest.mark.parametrize("kind", sorted(TASKS))
def test_alpha_zero_is_exactly_off(tmp_path: Path, kind: str) -> None:
    task = [f"data.synthetic_task={kind}", f"data.synthetic_classes={TASKS[kind]}"]
    plain, base = _train(tmp_path / "plain", task)
    _, zero = _train(tmp_path / "zero", [*task, "augment.mixup_alpha=0"])
    on, mixed = _train(tmp_path / "on", [*task, "augment.mixup_alpha=0.4"])
    assert len(base) == 5 and zero == base  # bit for bit, every step
    assert mixed.keys() == base.keys() and all(mixed[s] != base[s] for s in base)
    w = on.model.state_dict()
    assert any(not torch.equal(v, plain.model.state_dict()[k]) for k, v in w.items())


def test_validation_never_mixes(tmp_path: Path) -> None:
    """The same weights validate to the same numbers with mixup on or off, and validating draws nothing."""
    extra = ["data.val_split=validation", "checkpoint.resume=none"]
    on = Trainer(
        synthetic_experiment(tmp_path / "on", [*COMMON, *extra, "augment.mixup_alpha=1.0"]),
        validate=validator(),
    )
    off = Trainer(synthetic_experiment(tmp_path / "off", [*COMMON, *extra]), validate=validator())
    assert all(torch.equal(v, off.model.state_dict()[k]) for k, v in on.model.state_dict().items())
    before = on.mixup.generator.get_state()
    assert on.validate() == off.validate()
    assert torch.equal(on.mixup.generator.get_state(), before)
    on.close()
    off.close()


def test_resume_mid_epoch_with_mixup_is_exact(tmp_path: Path) -> None:
    """SIGTERM at step 2 of 10, resume: every step's loss equals the uninterrupted run's (the
    mixup generator is in the checkpoint, per rank; without it the resumed lambdas restart)."""
    extra = ["train.epochs=2", "augment.mixup_alpha=0.4"]
    full, full_losses = _train(tmp_path / "full", extra)

    def preempt(trainer: Trainer) -> None:
        if trainer.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped, _ = _train(tmp_path / "cut", extra, hooks=[preempt])
    assert stopped.result["stopped"] and stopped.step == 2
    ckpt = torch.load(tmp_path / "cut" / "checkpoints" / "step_00000002.pt", weights_only=True)
    assert isinstance(ckpt["mixup"][0]["generator"], torch.Tensor)
    resumed, cut_losses = _train(tmp_path / "cut", extra)
    assert resumed.step == full.step == 10
    assert cut_losses == full_losses
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_negative_alpha_is_refused() -> None:
    with pytest.raises(ValueError, match="augment.mixup_alpha"):
        load_experiment_tree(["data.synthetic=true", "augment.mixup_alpha=-0.1"])


@pytest.mark.gpu
@pytest.mark.parametrize("kind", sorted(TASKS))
def test_mixup_on_the_gpu_matches_the_cpu(kind: str) -> None:
    """The same draws mix a CUDA batch on the device (CPU generator, the index sent over)."""
    spec = synthetic_task(kind, TASKS[kind])
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(16, 3, 8, 7, generator=g), _labels(spec, 16, g)
    cx, cq = Mixup(0.4, spec, seed=5, rank=0)(x, y)
    gx, gq = Mixup(0.4, spec, seed=5, rank=0)(x.cuda(), y.cuda())
    assert gx.device.type == gq.device.type == "cuda"
    assert torch.allclose(gx.cpu(), cx, atol=1e-6) and torch.allclose(gq.cpu(), cq, atol=1e-6)
