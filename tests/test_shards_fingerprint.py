"""The plan fingerprint is what makes an existing build "up to date": pinned, so moving code
around (issue 26 gave shards/ its rooms) never makes users rebuild, and a change that does
alter the shards' bytes shows up here as a deliberate edit of this value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shards.bench.synth import make_synth
from shards.cli import main

# computed with the code before the move into shards/{format,importers,builder} (75e6d19)
PINNED = "d84fd9d80108cce2eb3425d9b0c9928942732190acbc7e33e616bfe75f8e8e4f"


def test_synthetic_build_fingerprint_is_pinned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_synth(tmp_path / "raw", tracks=8, seconds=2.0, seed=3)
    monkeypatch.chdir(tmp_path)  # relative paths: the fingerprint hashes each record's path
    argv = ["plan", "folder", "--root", "raw", "--out", "out", "--workers", "1", "--progress", "none"]
    assert main(argv) == 0
    plan = json.loads(Path("out/.build/plan.json").read_text())
    assert plan["context"]["fingerprint"] == PINNED
