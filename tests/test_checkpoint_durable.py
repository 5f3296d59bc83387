"""A checkpoint's rename is made durable (its folder fsynced) before older ones are pruned (issue 28)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from train.checkpoint_io import write_checkpoint


def test_the_folder_is_fsynced_after_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[tuple[str, bool]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        synced.append(("fsync", stat.S_ISDIR(os.fstat(fd).st_mode)))
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        synced.append(("rename", False))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_checkpoint({"w": torch.zeros(4)}, tmp_path / "step_1.pt")
    assert synced == [("fsync", False), ("rename", False), ("fsync", True)]  # file, rename, its folder
