"""Training on two builds at once (``data.shards`` as a list): their vocabularies merged by name,
validation reported per build and mixed, the trace naming each chunk's build and its class in
the merged vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from test_train_e2e import _train

from shards.bench.synth import make_synth
from shards.builder.config import BuildConfig
from shards.builder.driver import build
from shards.format.manifest import read_manifest
from train.logger import read_metrics


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second build whose "disco" tracks are labelled "electro", a class the first has not."""
    root = tmp_path_factory.mktemp("other")
    make_synth(root / "raw", tracks=24, seconds=3.0, seed=7, formats=["wav"], sample_rates=[8000])
    df = pd.read_csv(root / "raw" / "labels.csv")
    df.loc[df["label"] == "disco", "label"] = "electro"
    df.to_csv(root / "raw" / "labels.csv", index=False)
    cfg = BuildConfig(source="folder", root=root / "raw", out=root / "shards", task="single", codec="pcm16",
                      sample_rate=8000, workers=1)  # fmt: skip
    build(cfg, progress=False)
    return root / "shards"


def test_two_builds_train_on_one_vocabulary_and_validate_per_build(
    synth_shards, other: Path, tmp_path: Path
) -> None:
    first = synth_shards(task="single", tracks=24, seconds=3.0, sample_rate=8000)
    trace = tmp_path / "trace"
    trainer = _train(first, tmp_path / "run", [f'data.shards=["{first}", "{other}"]', "data.weights=[1, 1]",
                                               f"loader.trace={trace}", "train.epochs=1"])  # fmt: skip
    classes = read_manifest(first).task.classes
    assert trainer.task.classes == [*classes, "electro"]  # the first build's order, then the new class
    val = [r for r in read_metrics(tmp_path / "run") if "val/track/count" in r][-1]
    parts = [val[f"val/{b}-shards/track/count"] for b in (0, 1)]
    tracks = [read_manifest(p).split("validation").tracks for p in (first, other)]
    assert parts == tracks and val["val/track/count"] == sum(tracks)  # each build's, and all together
    assert 0.0 <= val["val/1-shards/track/accuracy"] <= 1.0
    rows = [json.loads(ln) for ln in (trace / "rank0.jsonl").read_text().splitlines()]
    labels = {(r["source"], r["labels"][0]) for r in rows}
    assert (1, 4) in labels and (0, 4) not in labels  # "electro": index 4, only in the second build
    assert (0, classes.index("disco")) in labels and (1, classes.index("disco")) not in labels
