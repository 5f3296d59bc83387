"""The device-memory bound beyond one loader's tensors: cuFFT work areas, the pools' rounding, and
the training and validation loaders checked together with the CUDA context (they coexist while
validating). Pure arithmetic from the configs, so it runs on the CPU (docs/pipeline.md, "Device memory")."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from pipelines.memory import CUDA_CONTEXT, GB, GRANULE, cufft_work, memory_bound
from train.config import load_experiment
from train.data import build_data, data_source

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "features.sample_rate=8000", "features.n_fft=256", "features.hop_length=256", "features.n_mels=32",
    "features.n_mfcc=16", "loader.batch_size=8", "loader.chunks_per_track=2", "loader.chunk_seconds=1.0",
    "loader.num_threads=1", "loader.eval_tracks_per_batch=4", "model.family=customcnn", "model.preset=tiny",
    "train.device=cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def single(synth_shards: Callable[..., Path]) -> Path:
    return synth_shards(task="single", tracks=24, seconds=3.0, sample_rate=8000)


def _data(shards: Path, budget_gb: float | None):
    extra = [] if budget_gb is None else [f"loader.device_memory_gb={budget_gb!r}"]
    exp = load_experiment(ROOT / "configs" / "demo_customcnn.toml", [f"data.shards={shards}", *TINY, *extra])
    manifest, task = data_source(exp)
    return build_data(exp, task, manifest, rank=0, world_size=1, device=torch.device("cpu"))


def test_training_and_validation_loaders_must_fit_together_with_the_cuda_context(single: Path) -> None:
    data = _data(single, None)
    train, val = (memory_bound(lo.spec).total for lo in (data.train, data.val))  # type: ignore[attr-defined]
    together = train + val + CUDA_CONTEXT
    assert max(train, val) < together - 1  # a budget each loader fits alone...
    with pytest.raises(ValueError, match="together") as e:  # ...but not both, with the context
        _data(single, (together - 1) / GB)
    line = str(e.value)
    assert "\n" not in line and str(single) in line and "CUDA context" in line and "validating" in line
    assert f"train {train / GB:.2f} + eval {val / GB:.2f} GB" in line
    data = _data(single, (together + 1) / GB)
    assert data.val is not None


def test_cufft_work_areas_follow_dalis_plans_and_count_once() -> None:
    # DALI's R2C plans: power-of-2 batches of windows, at most 2^26 / n_fft; one work area per
    # stream (<= 4), each the largest plan's; a work area taken as one complex output of its batch
    assert cufft_work(1000, 2048) == 2 * 512 * 1025 * 8  # 512 + 488 windows: two plans, two streams
    assert cufft_work(10**6, 2048) == 4 * 32768 * 1025 * 8  # capped plan, all four streams
    assert cufft_work(1, 256) == 1 * 1 * 129 * 8


def test_the_bound_adds_cufft_and_granularity_once_per_run(single: Path) -> None:
    spec = _data(single, None).train.spec  # type: ignore[attr-defined]
    one, three = (memory_bound(dataclasses.replace(spec, loader=dataclasses.replace(spec.loader, prefetch=p)))
                  for p in (1, 3))  # fmt: skip
    f = spec.features
    assert (
        one.cufft
        == three.cufft
        == cufft_work(spec.batch_size * one.rows * spec.framing.stride_frames, f.n_fft)
    )
    assert one.cufft > 0 and one.dali > one.cufft + 14 * GRANULE and one.torch > 9 * GRANULE
