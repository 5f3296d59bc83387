"""The evaluator's one config section, ``[eval]`` (CLI flags > TOML > defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Aggregate = Literal["mean", "max"]


LOADER_KEYS = ("cache_dir", "cache_gb", "remote", "eval_tracks_per_batch", "num_threads", "verify")
"""``[loader]`` keys an evaluation may set: where and how shards are read on this machine."""


@dataclass(kw_only=True)
class EvalConfig:
    """What to evaluate, on which split, and where the report goes."""

    checkpoints: list[Path] = field(default_factory=list)
    """Checkpoints to evaluate (``--checkpoint``); several give one side-by-side table."""
    shards: str | None = None
    """Shard build folder or ``s3://bucket/prefix`` holding ``manifest.json`` (``--shards``)."""
    split: str = "test"
    """Split the report is about; never used to tune anything."""
    threshold_split: str | None = "validation"
    """Multi-label only: split the decision thresholds are searched on; empty/none = no search.
    Must differ from ``split`` (checked once the task kind is known)."""
    aggregate: Aggregate = "mean"
    """Chunk -> track: mean (default) or max of the chunk probabilities."""
    out: Path = Path("eval_out")
    """Report folder: metrics.json, report.md, CSV and PNG files."""
    top_k: list[int] = field(default_factory=lambda: [3, 5])
    """Single-label top-k accuracies (a k is skipped unless the task has more than k classes)."""
    max_pr_curves: int = 10
    """Multi-label: PR curves drawn for this many most frequent tags (plus the micro average)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the model runs: auto = cuda:LOCAL_RANK when CUDA is visible, else cpu."""
    loader: dict[str, Any] = field(default_factory=dict)
    """This machine's settings over the checkpoint's ``[loader]`` (``--loader.KEY=VALUE``): only
    the keys of ``LOADER_KEYS``; the rest is the model's and stays as trained."""

    def __post_init__(self) -> None:
        self.checkpoints = [Path(p) for p in self.checkpoints]
        unknown = sorted(set(self.loader) - set(LOADER_KEYS))
        if unknown:
            raise ValueError(
                f"loader.{unknown[0]}: evaluation uses the checkpoint's loader; only "
                f"{', '.join(LOADER_KEYS)} can be set (--loader.KEY=VALUE)"
            )
        if self.threshold_split == "":
            self.threshold_split = None
        if not self.split:
            raise ValueError("eval.split: empty split name")
        if self.aggregate not in ("mean", "max"):
            raise ValueError(f"eval.aggregate: {self.aggregate!r} is not mean or max")
        if any(k < 1 for k in self.top_k):
            raise ValueError(f"eval.top_k: values must be >= 1, got {self.top_k}")
        if self.max_pr_curves < 0:
            raise ValueError(f"eval.max_pr_curves: must be >= 0, got {self.max_pr_curves}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"eval.device: {self.device!r} is not auto, cpu or cuda")

    def check_threshold_split(self, kind: str) -> None:
        """Multi-label thresholds are never tuned on the split being reported."""
        if kind == "multi" and self.threshold_split is not None and self.threshold_split == self.split:
            raise ValueError(
                f"eval.threshold_split: thresholds may not be tuned on the reported split {self.split!r}; "
                "use another split (validation) or an empty value to skip the search"
            )
