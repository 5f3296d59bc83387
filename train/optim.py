"""AdamW (no decay on biases/norms), warm-up + cosine schedule, and a weight EMA."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from train.config import OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW with weight decay only on weights of rank >= 2 (not biases, norms, tokens)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(("token", "pos_embed")) else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]))


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Multiplier of cfg.lr after ``step`` optimiser steps: linear warm-up, then cosine to the floor."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, total - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    opt: torch.optim.Optimizer, total_steps: int, cfg: OptimConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total_steps, cfg))


def move_schedule(
    sched: torch.optim.lr_scheduler.LambdaLR,
    epoch: int,
    batch: int,
    per_epoch: int,
    total: int,
    cfg: OptimConfig,
) -> None:
    """Put the schedule at ``batch`` of ``epoch`` (``per_epoch`` batches, ``total`` steps): a
    resume on another rank count, the same share of the run in this count's steps, with the
    learning rates set to match."""
    step = sched.last_epoch = epoch * max(1, -(-per_epoch // cfg.grad_accum)) + batch // cfg.grad_accum
    factor = lr_factor(step, total, cfg)
    for group, base in zip(sched.optimizer.param_groups, sched.base_lrs):
        group["lr"] = base * factor
    sched._last_lr = [g["lr"] for g in sched.optimizer.param_groups]  # what get_last_lr() reports


class EMA:
    """Exponential moving average of parameters (buffers copied), validated and checkpointed."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_p: list[torch.Tensor] = list(self.module.parameters())
        own_p: list[torch.Tensor] = list(model.parameters())
        torch._foreach_lerp_(ema_p, own_p, 1.0 - self.decay)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
