"""Float32 precision settings and autocast: the filter banks stay in full float32 under either
TF32 API (PyTorch's legacy one and the per-backend one recommended since 2.9), training runs under
either, and validation runs under the autocast that training uses. CPU only."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from eval.validation import validator
from pipelines.channels import full_fp32_matmuls
from train.config import load_experiment
from train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = torch.backends

# Each way a user turns TF32 (or bf16) matmuls on: the legacy API, then the per-backend one.
SETTINGS: dict[str, Callable[[], None]] = {
    "legacy high": lambda: torch.set_float32_matmul_precision("high"),
    "legacy medium": lambda: torch.set_float32_matmul_precision("medium"),
    "legacy allow_tf32": lambda: setattr(BACKENDS.cuda.matmul, "allow_tf32", True),
    "fp32_precision tf32": lambda: setattr(BACKENDS, "fp32_precision", "tf32"),
    "cuda.matmul.fp32_precision tf32": lambda: setattr(BACKENDS.cuda.matmul, "fp32_precision", "tf32"),
    "mkldnn.matmul.fp32_precision bf16": lambda: setattr(BACKENDS.mkldnn.matmul, "fp32_precision", "bf16"),
}
NEW_API = [k for k in SETTINGS if not k.startswith("legacy")]  # per-backend, since torch 2.9
TINY = [
    "features.sample_rate=8000", "features.n_fft=256", "features.hop_length=256", "features.n_mels=32",
    "features.n_mfcc=16", "loader.batch_size=8", "loader.chunks_per_track=2", "loader.chunk_seconds=1.0",
    "loader.num_threads=1", "loader.eval_tracks_per_batch=4", "loader.initial_fill=8",
    "model.family=customcnn", "model.preset=tiny", "train.amp=none", "train.device=cpu", "train.threads=2",
    "train.epochs=1", "optim.warmup_steps=1",
]  # fmt: skip


def readable() -> dict[str, object]:
    """Every getter of both APIs; "raises" where the legacy getters refuse a mixed state."""
    getters: dict[str, Callable[[], object]] = {
        "generic": lambda: BACKENDS.fp32_precision,
        "cuda.matmul": lambda: BACKENDS.cuda.matmul.fp32_precision,
        "mkldnn.matmul": lambda: BACKENDS.mkldnn.matmul.fp32_precision,
        "legacy": torch.get_float32_matmul_precision,
        "allow_tf32": lambda: BACKENDS.cuda.matmul.allow_tf32,
    }
    out: dict[str, object] = {}
    for name, get in getters.items():
        try:
            out[name] = get()
        except RuntimeError:
            out[name] = "raises"
    return out


@pytest.fixture(autouse=True)
def pristine_precision() -> Iterator[None]:
    """Each test starts and ends with PyTorch's defaults (the settings are process-wide)."""

    def reset() -> None:
        torch.set_float32_matmul_precision("highest")  # the legacy flag back to its default
        for backend in (BACKENDS, BACKENDS.cuda.matmul, BACKENDS.mkldnn.matmul):
            backend.fp32_precision = "none"

    reset()
    yield
    reset()


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_filter_banks_run_in_ieee_float32_under_either_api_and_the_setting_comes_back(setting: str) -> None:
    SETTINGS[setting]()
    before = readable()
    with full_fp32_matmuls():
        inside = (BACKENDS.cuda.matmul.fp32_precision, BACKENDS.mkldnn.matmul.fp32_precision)
        assert set(inside) <= {"ieee", "none"} and "ieee" in inside  # none: float32 by default
        torch.ones(4, 4) @ torch.ones(4, 4)
    assert readable() == before  # restored for the model: both APIs read what they read before


def test_full_fp32_touches_nothing_when_nothing_is_reduced() -> None:
    before = readable()
    with full_fp32_matmuls():
        assert readable() == before
    assert before["legacy"] == "highest" and before["cuda.matmul"] == "none"


@pytest.fixture(scope="module")
def single(synth_shards: Callable[..., Path]) -> Path:
    return synth_shards(task="single", tracks=24, seconds=3.0, sample_rate=8000)


def _trainer(shards: Path, out: Path) -> Trainer:
    exp = load_experiment(
        ROOT / "configs" / "demo_customcnn.toml", [f"data.shards={shards}", f"train.out={out}", *TINY]
    )
    return Trainer(exp, validate=validator())


@pytest.mark.parametrize("setting", ["legacy high", *NEW_API[:2]])
def test_training_runs_under_either_tf32_api(single: Path, tmp_path: Path, setting: str) -> None:
    """mel, mfcc and chroma: every batch goes through the filter banks' matmuls."""
    SETTINGS[setting]()
    trainer = _trainer(single, tmp_path)
    try:
        result = trainer.train()
    finally:
        trainer.close()
    assert trainer.exp.features.channels == ["mel", "mfcc", "chroma"]
    assert trainer.step == len(trainer.data.train) > 0 and not result["stopped"]
    assert "track/accuracy" in trainer.metrics
    assert BACKENDS.cuda.matmul.fp32_precision == "tf32"  # the user's setting survives the run


def test_validation_runs_under_the_training_autocast(single: Path, tmp_path: Path) -> None:
    """bf16 autocast (what ``train.amp`` resolves to on CUDA) forced on the CPU: the forward passes
    of validation see the same autocast as the training steps."""
    trainer = _trainer(single, tmp_path)
    trainer._amp = torch.bfloat16
    seen: dict[bool, set[object]] = {True: set(), False: set()}

    def record(module: torch.nn.Module, args: object, output: torch.Tensor) -> None:
        on = torch.is_autocast_enabled("cpu")
        seen[module.training].add(torch.get_autocast_dtype("cpu") if on else torch.float32)

    trainer.model.register_forward_hook(record)
    try:
        trainer.train()
    finally:
        trainer.close()
    assert "track/accuracy" in trainer.metrics
    assert seen == {True: {torch.bfloat16}, False: {torch.bfloat16}}
