"""train.logger: metrics.jsonl on rank 0, and TensorBoard scalars when tensorboard is installed."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from train.logger import MetricsLogger, read_metrics


def test_tensorboard_gets_the_numeric_metrics_when_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple] = []

    class Writer:
        def __init__(self, logdir: str) -> None:
            calls.append(("init", logdir))

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            calls.append((tag, value, step))

        def close(self) -> None:
            calls.append(("close",))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = Writer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    log = MetricsLogger(tmp_path)
    log.log(3, 1, {"train/loss": 0.5, "sync/fingerprints": [1.0, 2.0]})
    log.close()
    assert calls == [("init", str(tmp_path / "tb")), ("train/loss", 0.5, 3), ("close",)]
    assert read_metrics(tmp_path)[0]["sync/fingerprints"] == [1.0, 2.0]
    MetricsLogger(tmp_path / "rank1", enabled=False).log(1, 0, {"x": 1.0})
    assert not (tmp_path / "rank1").exists()
