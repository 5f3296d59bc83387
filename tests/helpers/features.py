"""The plain feature recipes the fused library code must reproduce (test references only)."""

from __future__ import annotations

import torch

from pipelines.bench.reference import ReferenceFeatures, eval_chunks, preemphasize
from pipelines.config import FeatureConfig, Framing
from pipelines.feature_stack import FeatureAssembler

_EPS = 1e-8


def normalize_reference(asm: FeatureAssembler, x: torch.Tensor) -> torch.Tensor:
    """In place on ``x (N, C, F, T)``: per-chunk, per-channel min-max to [0, 1], the dataset
    mean/std, or nothing, as ``asm``'s config says."""
    if asm.cfg.normalize == "minmax":
        lo = x.amin(dim=(2, 3), keepdim=True)
        hi = x.amax(dim=(2, 3), keepdim=True)
        x.sub_(lo).div_((hi - lo).clamp_min(_EPS))
    elif asm.cfg.normalize == "meanstd":
        assert asm.mean is not None and asm.std is not None
        x.sub_(asm.mean).div_(asm.std)
    return x


def reference_track(
    signal: torch.Tensor, features: FeatureConfig, fr: Framing, assembler: FeatureAssembler | None = None
) -> torch.Tensor:
    """Evaluation features of one whole track ``(n_chunks, C, F, T)`` on the CPU."""
    ref = ReferenceFeatures(features)
    asm = assembler or FeatureAssembler(features, "cpu")
    with torch.no_grad():
        chunks = eval_chunks(preemphasize(signal, features.preemphasis), fr.chunk)
        return asm(*ref(chunks), wave=chunks)
