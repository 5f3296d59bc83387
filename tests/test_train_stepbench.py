"""``python -m train.stepbench``: a model's step on the real loader vs resident batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from train.bench.step import main

ROOT = Path(__file__).resolve().parents[1]


def test_train_step_mode_compares_real_loader_with_resident_batches(synth_shards, capsys):
    """train.stepbench times the real Trainer step on the DALI loader and on resident batches."""
    shards = synth_shards(task="single", tracks=24, seconds=4.0, sample_rate=16000)
    args = [str(shards), "--family", "customcnn", "--json", "--warmup", "1", "--batches", "3"]
    args += ["--loader.batch_size=8", "--loader.chunks_per_track=2", "--loader.num_threads=1"]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert [r["pipeline"] for r in rows] == ["synthetic-resident", "dali-cpu"]
    assert all(r["model"] == "customcnn" and r["batch"] == 8 and r["steps_per_s"] > 0 for r in rows)
    assert rows[0]["params_m"] == rows[1]["params_m"] > 0
    assert abs(rows[1]["vs_synthetic"] - rows[1]["steps_per_s"] / rows[0]["steps_per_s"]) < 0.01


@pytest.mark.slow
def test_real_and_synthetic_step_time_the_same_network(synth_shards):
    """With no preset in the config, both sides build the family's default (ast: base), not the
    synthetic bench's own small default, with the config's kwargs: vs_synthetic compares like with like."""
    from train.bench.families import bench_real_loader

    shards = synth_shards(task="single", tracks=24, seconds=4.0, sample_rate=16000)
    extra = [
        "model.preset=''",
        "model.kwargs={depth = 1}",
        "loader.batch_size=8",
        "loader.chunks_per_track=2",
        "loader.num_threads=1",
    ]
    r = bench_real_loader(ROOT / "configs" / "demo_customcnn.toml", shards, "ast", 1, 1, extra)
    assert 6 < r["params_m"] < 10  # AST base at depth 1 (7.7M); tiny at depth 1 would be 0.5M
    assert r["real_steps_per_s"] > 0 and r["synthetic_steps_per_s"] > 0


def test_mixup_flag_times_the_resident_step_with_mixup_on_and_off(synth_shards, capsys):
    """--mixup ALPHA: the resident step with augment.mixup_alpha=ALPHA vs 0 (same network) and the mix alone."""
    shards = synth_shards(task="single", tracks=24, seconds=4.0, sample_rate=16000)
    args = [str(shards), "--family", "customcnn", "--json", "--warmup", "1", "--batches", "2"]
    args += ["--mixup", "0.4", "--mixup-rounds", "1", "--loader.batch_size=8", "--loader.chunks_per_track=2"]
    assert main([*args, "--loader.num_threads=1"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    off, on = rows[2:]
    assert (off["mixup_alpha"], on["mixup_alpha"]) == (0.0, 0.4) and off["params_m"] == on[
        "params_m"
    ] == rows[0]["params_m"]
    assert on["vs_mixup_off"] == pytest.approx(on["steps_per_s"] / off["steps_per_s"], abs=0.01)
    assert on["mix_ms_per_batch"] > 0
