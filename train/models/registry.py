"""One registry for every model family (timm ``_registry.py`` style).

A family name maps to a builder plus its size presets (plain data); ``build_model``
resolves the preset, merges ``ModelConfig.kwargs`` over it and calls the builder.
Names not registered fall through to timm, so any timm model can be trained.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch.nn as nn

from shards.base.registry import Registry
from train.config import ModelConfig
from train.models.pretrained import TIMM_DEFAULT, Weights, fetch_weights

if TYPE_CHECKING:
    from pipelines.batches import BatchLoader
    from shards.base.tasks import TaskSpec

Builder = Callable[..., nn.Module]
LoadWeightsFn = Callable[[nn.Module, Weights, int], None]
"""load_weights(model, fetched weights, in_chans): map, adapt and load them into ``model``."""


@dataclass(frozen=True)
class FitContext:
    """What a family's own fit may know about the run (nothing else of the trainer)."""

    is_main: bool
    threads: int | None


FitFn = Callable[[nn.Module, "BatchLoader", "TaskSpec", FitContext], dict[str, float]]
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
    load_weights: LoadWeightsFn | None = None
    """Adapt fetched pretrained tensors to a built model and load them (timm's
    ``pretrained_filter_fn``); None: the family takes no pretrained weights (and warns)."""
    default_hub_id: Callable[[nn.Module], str | None] | None = None
    """The hub repo ``model.pretrained = "timm"`` names for a built model (timm: its
    ``pretrained_cfg["hf_hub_id"]``)."""

    def check_task(self, kind: str) -> None:
        """Refuse a task kind this family cannot serve (gbm: no hierarchies)."""
        if kind not in self.tasks:
            raise ValueError(f"model.family: {self.name} cannot be used for a {kind!r} task")

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


def resolve_family(cfg: ModelConfig) -> Family:
    """The ``[model]`` section checked without building anything: a known family and one of its
    presets (``train.config.load_experiment`` calls it, so every experiment is checked once)."""
    family = get_family(cfg.family)
    resolve_kwargs(cfg, family)
    return family


def build_model(
    cfg: ModelConfig,
    family: Family | None = None,
    *,
    in_chans: int,
    head_sizes: list[int],
    input_shape: tuple[int, int, int],
) -> nn.Module:
    """Build ``cfg.family`` (``family``: already looked up): a module mapping (B, C, F, T) to
    logits (B, sum(head_sizes))."""
    family = family or get_family(cfg.family)
    if input_shape[0] != in_chans:
        raise ValueError(f"input_shape {input_shape} does not start with in_chans={in_chans}")
    kwargs = resolve_kwargs(cfg, family)
    try:
        model = family.builder(
            cfg, in_chans=in_chans, num_outputs=sum(head_sizes), input_shape=tuple(input_shape), **kwargs
        )
    except TypeError as e:
        if "unexpected keyword" not in str(e):
            raise
        raise ValueError(f"model.kwargs: {family.name} does not accept this option: {e}") from None
    if cfg.pretrained is not None:
        load_pretrained(model, family, cfg.pretrained, in_chans)
    return model


def load_pretrained(model: nn.Module, family: Family, spec: str, in_chans: int) -> None:
    """The one place pretrained weights reach a model, for every family: fetch ``spec``
    (``train.models.pretrained``), then the family's own mapping (``Family.load_weights``)."""
    if family.load_weights is None:  # such a family says so itself when built (gbm warns)
        return
    named = spec == TIMM_DEFAULT and family.default_hub_id is not None
    hub_id = family.default_hub_id(model) if named else None  # type: ignore[misc]
    family.load_weights(model, fetch_weights(spec, default_hub_id=hub_id), in_chans)
