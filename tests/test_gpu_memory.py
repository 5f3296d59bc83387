"""Device memory of the DALI GPU loader (bounded by the configs, whatever the track length; given
back after evaluation) and the filter banks' precision with TF32 enabled. GPU only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from pipelines.channels import dct_matrix
from pipelines.config import AugmentConfig, FeatureConfig, LoaderConfig
from pipelines.loader import build_loader
from pipelines.memory import memory_bound, release_pool_memory
from shards.bench.synth import GENRES, synth_track
from shards.builder.config import BuildConfig
from shards.builder.driver import build

pytestmark = pytest.mark.gpu
MIB = 2**20
SR = 22050
# Device memory the bound does not model: cuFFT plans and work areas, DALI's per-device state and
# its pool's block granularity (the bound counts tensors only).
SLACK = 384 * MIB
LEFT_AFTER = 0.25  # of the pass's peak: what may stay once an evaluation pass gave its pool back


def _build(root: Path, seconds: list[float]) -> Path:
    """Seed-rate (22.05 kHz) shards, one split, 30-s segments: the tracks as given."""
    (root / "audio").mkdir(parents=True)
    rng = np.random.default_rng(3)
    rows = []
    for i, sec in enumerate(seconds):
        rel = f"audio/t{i}.wav"
        sf.write(root / rel, synth_track(i % 4, 0, ["noise"], sec, SR, rng), SR, subtype="PCM_16")
        rows.append({"path": rel, "label": GENRES[i % 4], "split": "test"})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    out = root.parent / f"{root.name}-shards"
    build(BuildConfig(source="folder", root=root, out=out, sample_rate=SR, workers=4), progress=False)
    return out


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same 16 samples of 30 s: as 16 tracks of 30 s, and as 2 tracks of 4 min."""
    base = tmp_path_factory.mktemp("memory")
    return {"short": _build(base / "short", [30.0] * 16), "long": _build(base / "long", [240.0] * 2)}


def _outside_torch() -> int:
    """Device bytes in use that torch's allocator does not hold (DALI's pools, libraries)."""
    free, total = torch.cuda.mem_get_info()
    return total - free - torch.cuda.memory_reserved()


def _eval_pass(shards: Path, base: int) -> dict[str, float]:
    """One evaluation pass of the seed features (8 samples per batch): DALI's peak footprint
    (its pool only grows within a pass), torch's peak, and what is left after the pass."""
    lc = LoaderConfig(eval_tracks_per_batch=8, num_threads=4)
    loader = build_loader(shards, "test", mode="eval", features=FeatureConfig(), augment=AugmentConfig(),
                          loader=lc, device="cuda")  # fmt: skip
    bound = memory_bound(loader.spec)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    allocated = torch.cuda.memory_allocated()
    dali, chunks = 0, 0
    for b in loader:
        chunks += b["x"].shape[0]
        dali = max(dali, _outside_torch() - base)
        del b
    torch.cuda.synchronize()
    return {"chunks": chunks, "dali_peak": dali, "torch_peak": torch.cuda.max_memory_allocated() - allocated,
            "left_after": _outside_torch() - base, "bound_dali": bound.dali, "bound_torch": bound.torch}  # fmt: skip


def test_eval_device_memory_is_bounded_whatever_the_track_length(
    builds: dict[str, Path], record_property: Callable
) -> None:
    _eval_pass(builds["short"], 0)  # warm-up: CUDA modules (cuFFT's kernels) load once per process
    release_pool_memory(torch.device("cuda"))
    base = _outside_torch()
    short, long = (_eval_pass(builds[k], base) for k in ("short", "long"))
    for name, r in (("short", short), ("long", long)):
        for k, v in r.items():
            record_property(
                f"{name}/{k}" + ("" if k == "chunks" else "_mib"), v if k == "chunks" else round(v / MIB, 1)
            )
    assert short["chunks"] == long["chunks"] == 16 * 5
    assert short["bound_dali"] == long["bound_dali"]  # the bound sees the 30-s segment, not the track
    for r in (short, long):
        assert r["dali_peak"] <= r["bound_dali"] + SLACK, r
        assert r["torch_peak"] <= r["bound_torch"], r
        assert r["left_after"] <= LEFT_AFTER * r["dali_peak"] + 32 * MIB, r  # shut down, pool given back
    assert long["dali_peak"] <= 1.25 * short["dali_peak"] + 64 * MIB, (short, long)


@pytest.mark.parametrize("api", ["legacy", "per-backend"])
def test_filter_banks_keep_float32_when_tf32_is_enabled(
    synth_shards: Callable[..., Path], record_property: Callable, api: str
) -> None:
    """TF32 enabled globally (as users do for speed), through the legacy ``allow_tf32`` or the
    per-backend ``fp32_precision`` (torch >= 2.9), must not reach the MFCC/chroma/CQT matmuls."""
    path = synth_shards(tracks=6, seconds=3.0, sample_rate=SR)
    fc = FeatureConfig(channels=["mel", "mfcc", "chroma", "cqt"], normalize="none")
    lc = LoaderConfig(
        chunk_seconds=2.0, eval_tracks_per_batch=2, num_threads=1, batch_size=4, chunks_per_track=2
    )

    def features() -> torch.Tensor:
        loader = build_loader(path, "validation", mode="eval", features=fc, augment=AugmentConfig(), loader=lc,
                              device="cuda")  # fmt: skip
        return torch.cat([b["x"] for b in loader])

    fp32 = features()
    old = torch.get_float32_matmul_precision()
    try:
        if api == "legacy":
            torch.backends.cuda.matmul.allow_tf32 = True
        else:
            torch.backends.cuda.matmul.fp32_precision = "tf32"
        tf32 = features()
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"  # restored for the model after each batch
        mel = fp32[:, 0].double()  # what a TF32 matmul does to the MFCC's DCT (the hazard)
        dct = torch.from_numpy(dct_matrix(fc.n_mfcc, fc.n_mels)).cuda()
        plain_err = float((torch.matmul(dct, mel.float()).double() - dct.double() @ mel).abs().max())
    finally:
        torch.set_float32_matmul_precision(old)
        torch.backends.cuda.matmul.fp32_precision = "none"
    err = [float((tf32[:, c] - fp32[:, c]).abs().max()) for c in range(4)]
    record_property("tf32_plain_mfcc_max_error", plain_err)
    record_property("loader_tf32_vs_fp32_max_diff", max(err))
    assert plain_err > 1e-2  # TF32 really was on, and visible in an unprotected MFCC
    assert max(err) <= 1e-5, err  # the loader's channels did not change
