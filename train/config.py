"""The trainer's config sections: [data] [model] [optim] [train] [checkpoint].

A full experiment also carries the pipeline's [features] [augment] [loader] and the
evaluator's [eval]; ``load_experiment`` reads them all from one TOML file plus
``--section.key=value`` overrides and refuses unknown keys/sections before any GPU work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from eval.config import EvalConfig
from pipelines.config import AugmentConfig, FeatureConfig, LoaderConfig
from pipelines.defaults import feature_defaults
from shards.base.config import apply_overrides, load_sections, sections_from_tree, to_dict
from train.logger import tensorboard_installed

AmpMode = Literal["bf16", "fp16", "auto", "none"]


@dataclass(kw_only=True)
class DataConfig:
    """Where the batches come from: a shard build, or the synthetic loader."""

    shards: str | list[str] | None = None
    """Shard build folder or ``s3://bucket/prefix`` (holds manifest.json), or a list of builds
    trained on together (mixed per epoch by ``weights``); required unless ``synthetic``."""
    weights: list[float] | None = None
    """Mixed builds: each one's share of an epoch's training chunks (normalised); none: in
    proportion to their audio."""
    train_split: str = "train"
    """Split trained on."""
    val_split: str | None = "validation"
    """Split validated on every epoch; empty/none disables validation."""
    synthetic: bool = False
    """Use ``train.synthetic.SyntheticLoader`` (device-resident batches) instead of shards."""
    synthetic_task: Literal["single", "multi", "hier"] = "single"
    """Task kind of the synthetic data."""
    synthetic_classes: list[int] = field(default_factory=lambda: [4])
    """Classes per head (hier: one entry per level, each a multiple of the one above)."""
    synthetic_shape: list[int] = field(default_factory=lambda: [3, 32, 32])
    """(C, F, T) of one synthetic chunk."""
    synthetic_batches: int = 8
    """Batches per synthetic epoch (per rank)."""
    synthetic_batch_size: int = 16
    """Chunks per synthetic batch."""
    synthetic_learnable: bool = True
    """Class-dependent patterns (a model can learn them) instead of pure noise."""
    synthetic_resident: bool = False
    """Generate the batches once, on the device, and replay them every epoch (benchmark mode)."""
    synthetic_signal: float = 0.3
    """Amplitude of the class patterns relative to unit noise (lower = harder)."""

    @property
    def builds(self) -> list[str]:
        """``shards`` as a list (one entry for a single build)."""
        if self.shards is None:
            return []
        return [self.shards] if isinstance(self.shards, str) else list(self.shards)

    def __post_init__(self) -> None:
        if isinstance(self.shards, list) and len(self.shards) == 1:
            self.shards = self.shards[0]
        if self.val_split == "":
            self.val_split = None
        if len(self.synthetic_shape) != 3 or min(self.synthetic_shape) < 1:
            raise ValueError(
                f"data.synthetic_shape: need three positive sizes (C, F, T), got {self.synthetic_shape}"
            )
        if not self.synthetic_classes or min(self.synthetic_classes) < 2:
            raise ValueError(f"data.synthetic_classes: need sizes >= 2, got {self.synthetic_classes}")
        if self.weights is not None and (len(self.weights) != len(self.builds) or min(self.weights) <= 0):
            raise ValueError(
                f"data.weights: need {len(self.builds)} positive shares (one per data.shards entry)"
            )
        if self.synthetic_batches < 1 or self.synthetic_batch_size < 1:
            raise ValueError("data.synthetic_batches/synthetic_batch_size: must be >= 1")


@dataclass(kw_only=True)
class ModelConfig:
    """Which network (or GBM) to build; family-specific options go in ``kwargs``."""

    family: str = "customcnn"
    """Registry name (customcnn, ast, gbm, resnet50, efficientnet_b0/b2/b4) or any timm model name."""
    preset: str | None = None
    """Size preset of the family (customcnn/ast: tiny, small, base); none = family default."""
    pretrained: str | None = None
    """Pretrained weights: "timm" (the timm model's default tag), "hf-hub:OWNER/NAME" (through the
    Hugging Face cache; HF_HUB_OFFLINE=1 reads only the cache), "local-dir:/path" (config.json +
    model.safetensors: timm save_for_hf / transformers save_pretrained), or a weights file."""
    dropout: float = 0.0
    """Dropout before the classifier."""
    drop_path: float = 0.0
    """Stochastic depth rate (timm / AST)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Family-specific options, e.g. {pca_components = 64, num_leaves = 31} for gbm."""

    def __post_init__(self) -> None:
        if not self.family:
            raise ValueError("model.family: empty")
        if self.pretrained is not None:
            self.pretrained = str(self.pretrained) or None
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout: {self.dropout} outside [0, 1)")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"model.drop_path: {self.drop_path} outside [0, 1)")


@dataclass(kw_only=True)
class OptimConfig:
    """AdamW with linear warm-up then cosine decay, per optimiser step."""

    lr: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 0.05
    """AdamW decoupled weight decay (not applied to biases and norms)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    warmup_steps: int = 0
    """Optimiser steps of linear warm-up from 0 to ``lr``."""
    min_lr_ratio: float = 0.01
    """Cosine floor as a fraction of ``lr``."""
    grad_accum: int = 1
    """Micro-batches per optimiser step."""
    clip_norm: float | None = 1.0
    """Gradient norm clip; none disables."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr: must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay: must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0 <= beta < 1 for beta in self.betas):
            raise ValueError(f"optim.betas: need two values in [0, 1), got {self.betas}")
        if self.warmup_steps < 0 or self.grad_accum < 1:
            raise ValueError("optim.warmup_steps must be >= 0 and optim.grad_accum >= 1")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"optim.min_lr_ratio: {self.min_lr_ratio} outside [0, 1]")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ValueError(f"optim.clip_norm: must be > 0 or none, got {self.clip_norm}")


@dataclass(kw_only=True)
class TrainConfig:
    """The loop: length, precision, regularisation, logging and model selection."""

    epochs: int = 10
    """Passes over the training split."""
    max_steps: int | None = None
    """Stop after this many optimiser steps (overrides epochs when reached first)."""
    amp: AmpMode = "bf16"
    """Autocast dtype on CUDA; fp16 adds a GradScaler; ignored (float32, with a warning) on CPU;
    auto = bf16 on a CUDA device that supports it, float32 elsewhere (no warning: the demo's choice)."""
    channels_last: bool = False
    """Use channels_last memory format (faster convnets on GPU)."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    ema_decay: float | None = None
    """Keep an exponential moving average of the weights (validated and checkpointed)."""
    label_smoothing: float = 0.0
    """Cross-entropy label smoothing (single/hier tasks)."""
    seed: int = 0
    """Seed of model init (the same on every rank) and of the torch RNG used by dropout /
    drop-path afterwards (plus the rank) and of synthetic data; the shard pipeline's
    shuffling, chunk offsets and SpecAugment masks use ``loader.seed``."""
    out: Path = Path("runs/default")
    """Run folder: checkpoints/, metrics.jsonl, config.json, curves.png (and tb/ with TensorBoard)."""
    log_every: int = 10
    """Optimiser steps between metric lines."""
    tensorboard: bool | None = None
    """Also write TensorBoard event files to ``out/tb``: true (needs the ``tensorboard`` extra),
    false, or none = when the extra is installed."""
    best_metric: str | None = None
    """Validation metric that selects ``best.pt``; none = the task's primary track metric
    (single track/accuracy, multi track/roc_auc, hier track/level_mean_accuracy)."""
    best_mode: Literal["max", "min"] = "max"
    """Whether a higher or lower ``best_metric`` is better."""
    device: str = "auto"
    """auto (cuda:LOCAL_RANK when available, else cpu), cpu, or cuda."""
    threads: int | None = None
    """torch CPU threads per process; none keeps torch's default."""
    deterministic: bool = False
    """Deterministic cuDNN/cuBLAS kernels (bit-repeatable GPU runs, slower; the GPU proof's resume
    check sets it); ops without a deterministic kernel warn instead of failing."""

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"train.epochs: must be >= 1, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"train.max_steps: must be >= 1 or none, got {self.max_steps}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"train.ema_decay: must be in (0, 1), got {self.ema_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"train.label_smoothing: {self.label_smoothing} outside [0, 1)")
        if self.log_every < 1:
            raise ValueError("train.log_every: must be >= 1")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"train.device: {self.device!r} is not auto, cpu or cuda")
        if self.tensorboard and not tensorboard_installed():  # asked for, absent
            raise ValueError(
                "train.tensorboard: the tensorboard package is not installed (pip install .[tensorboard])"
            )


@dataclass(kw_only=True)
class CheckpointConfig:
    """When to save, how many to keep, and where to resume from."""

    every_steps: int | None = None
    """Save every N optimiser steps (plus every epoch end); none = epoch ends only."""
    keep_last: int = 2
    """Step/epoch checkpoints kept (best.pt is extra)."""
    resume: str = "auto"
    """auto (latest in out/checkpoints if any), none, or a checkpoint path."""

    def __post_init__(self) -> None:
        if self.every_steps is not None and self.every_steps < 1:
            raise ValueError(f"checkpoint.every_steps: must be >= 1 or none, got {self.every_steps}")
        if self.keep_last < 1:
            raise ValueError(f"checkpoint.keep_last: must be >= 1, got {self.keep_last}")


TRAIN_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "checkpoint": CheckpointConfig,
}
# The other stages' sections of an experiment file; every one is a real dataclass.
OTHER_SECTIONS: dict[str, type] = {
    "features": FeatureConfig,
    "augment": AugmentConfig,
    "loader": LoaderConfig,
    "eval": EvalConfig,
}
SECTIONS: dict[str, type] = {**TRAIN_SECTIONS, **OTHER_SECTIONS}


@dataclass(kw_only=True)
class Experiment:
    """Every section of one experiment; each component receives only its own."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    source: str = "config"

    def __post_init__(self) -> None:
        if not self.data.synthetic and self.data.shards is None:
            raise ValueError(f"{self.source}: data.shards is required unless data.synthetic = true")

    def to_dict(self) -> dict[str, Any]:
        """All sections as plain data (stored in checkpoints)."""
        return {n: to_dict(getattr(self, n)) for n in SECTIONS}


def load_experiment(path: str | Path | None = None, overrides: list[str] | None = None) -> Experiment:
    """Read an experiment TOML plus CLI overrides; unknown sections/keys are errors. An image
    build's channels and sizes fill the ``[features]`` keys the config leaves unset
    (``pipelines.defaults``)."""
    label = str(path) if path else "config"
    return _experiment(load_sections(SECTIONS, path, overrides, defaults=feature_defaults(None)), label)


def load_experiment_tree(overrides: list[str], label: str = "overrides") -> Experiment:
    """An ``Experiment`` from ``section.key=value`` strings only (no file)."""
    return experiment_from_tree(apply_overrides({}, overrides), label)


def experiment_from_tree(tree: dict[str, Any], label: str = "config", *, strict: bool = True) -> Experiment:
    """Build an ``Experiment`` from nested plain data (a TOML tree or a checkpoint's config).

    ``strict=False`` is how a checkpoint's stored config is read: keys that this version
    no longer has (or does not have yet) warn and take defaults, so checkpoints outlive
    config changes."""
    return _experiment(sections_from_tree(SECTIONS, tree, label, strict=strict), label)


def _experiment(sections: dict[str, Any], label: str) -> Experiment:
    from train.models.registry import resolve_family  # the registry reads ModelConfig from here

    exp = Experiment(**sections, source=label)
    resolve_family(exp.model)  # an unknown family or preset fails here, before any GPU work
    return exp
