"""Numeric settings a run shares between training and its validation: the autocast dtype,
and deterministic GPU kernels for runs that must repeat bit for bit."""

from __future__ import annotations

import os
import warnings

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(amp: str, device: torch.device, *, warn: bool = False) -> torch.dtype | None:
    """``train.amp`` on ``device``: the autocast dtype, or None for float32. ``auto`` = bf16 on a
    CUDA device that supports it; bf16/fp16 have no effect on the CPU (a warning with ``warn``)."""
    if amp == "none":
        return None
    cuda = device.type == "cuda"
    if amp == "auto":
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else None
    if not cuda:
        if warn:
            warnings.warn(f"train.amp={amp!r} has no effect on CPU; training in float32", stacklevel=3)
        return None
    return AMP_DTYPES[amp]


def deterministic_kernels() -> None:
    """cuDNN and cuBLAS kernels that give the same bits on every run (slower; ``train.deterministic``).

    Ops with no deterministic CUDA kernel only warn (``warn_only``): a run that uses one repeats
    to within its rounding, not bitwise. ``CUBLAS_WORKSPACE_CONFIG`` must be set before cuBLAS
    makes its first handle, i.e. before the first matmul of the process."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)
