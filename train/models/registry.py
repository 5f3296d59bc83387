"""One registry for every model family (timm ``_registry.py`` style).

A family name maps to a builder plus its size presets (plain data); ``build_model``
resolves the preset, merges ``ModelConfig.kwargs`` over it and calls the builder.
Names not registered fall through to timm, so any timm model can be trained.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from shards.manifest import TaskSpec
from shards.registry import Registry
from train.config import ModelConfig

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class FitContext:
    """What a family's own fit may know about the run (nothing else of the trainer)."""

    is_main: bool
    threads: int | None


FitFn = Callable[[nn.Module, Any, TaskSpec, FitContext], dict[str, float]]
"""fit(model, training loader, task, context) -> stats to log; called on every rank."""


@dataclass(frozen=True)
class Family:
    """A registered family: builder(cfg, in_chans=, num_outputs=, input_shape=, **preset)."""

    name: str
    builder: Builder
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    default_preset: str | None = None
    tasks: frozenset[str] = frozenset({"single", "multi", "hier"})
    fit: FitFn | None = None
    """The family's own one-pass fit instead of the gradient loop (gbm: PCA + LightGBM)."""

    @property
    def trainable(self) -> bool:
        """Trained by the gradient loop (optimiser, scheduler, DDP); False when it has ``fit``."""
        return self.fit is None


def _load_builtin() -> None:
    """Import the built-in family modules (each registers itself) on first use."""
    from train.models import ast, customcnn, gbm, timm_family  # noqa: F401


FAMILIES: Registry[Family] = Registry("model family", builtin=_load_builtin)


def register_family(family: Family) -> Family:
    return FAMILIES.register(family.name, family)


def list_families() -> list[str]:
    return sorted(FAMILIES.names())


def get_family(name: str) -> Family:
    """The registered family, or a timm family for any model name timm knows."""
    family = FAMILIES.find(name)
    if family is not None:
        return family
    import timm

    if timm.is_model(name):
        from train.models.timm_family import timm_family

        return timm_family(name)
    raise ValueError(
        f"model.family: unknown family {name!r}; registered: {list_families()} or any timm model name"
    )


def resolve_kwargs(cfg: ModelConfig, family: Family) -> dict[str, Any]:
    """Preset values overlaid with cfg.kwargs (kwargs win)."""
    preset = cfg.preset or family.default_preset
    if preset is None:
        if family.presets:
            raise ValueError(f"model.preset: family {family.name} needs one of {sorted(family.presets)}")
        base: dict[str, Any] = {}
    elif preset not in family.presets:
        raise ValueError(
            f"model.preset: {preset!r} is not a preset of {family.name}; known: {sorted(family.presets)}"
        )
    else:
        base = dict(family.presets[preset])
    return {**base, **cfg.kwargs}


def check_model_config(cfg: ModelConfig, task_kind: str | None = None) -> Family:
    """Resolve family, preset and task compatibility without building anything."""
    family = get_family(cfg.family)
    if task_kind is not None and task_kind not in family.tasks:
        raise ValueError(f"model.family: {family.name} cannot be used for a {task_kind!r} task")
    resolve_kwargs(cfg, family)
    return family


def build_model(
    cfg: ModelConfig,
    *,
    in_chans: int,
    head_sizes: list[int],
    input_shape: tuple[int, int, int],
    task_kind: str | None = None,
) -> nn.Module:
    """Build ``cfg.family``: a module mapping (B, C, F, T) to logits (B, sum(head_sizes))."""
    family = check_model_config(cfg, task_kind)
    if input_shape[0] != in_chans:
        raise ValueError(f"input_shape {input_shape} does not start with in_chans={in_chans}")
    kwargs = resolve_kwargs(cfg, family)
    try:
        return family.builder(
            cfg, in_chans=in_chans, num_outputs=sum(head_sizes), input_shape=tuple(input_shape), **kwargs
        )
    except TypeError as e:
        if "unexpected keyword" not in str(e):
            raise
        raise ValueError(f"model.kwargs: {family.name} does not accept this option: {e}") from None
