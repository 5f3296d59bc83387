"""``python -m train.stepbench``: a model's step on the real loader vs resident batches."""

from __future__ import annotations

import json

from train.stepbench import main


def test_train_step_mode_compares_real_loader_with_resident_batches(synth_shards, capsys):
    """train.stepbench times the real Trainer step on the DALI loader and on resident batches."""
    shards = synth_shards(task="single", tracks=24, seconds=4.0, sample_rate=16000)
    args = [str(shards), "--family", "customcnn", "--json", "--warmup", "1", "--batches", "3"]
    args += ["--loader.batch_size=8", "--loader.chunks_per_track=2", "--loader.num_threads=1"]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert [r["pipeline"] for r in rows] == ["synthetic-resident", "dali-cpu"]
    assert all(r["model"] == "customcnn" and r["batch"] == 8 and r["steps_per_s"] > 0 for r in rows)
    assert abs(rows[1]["vs_synthetic"] - rows[1]["steps_per_s"] / rows[0]["steps_per_s"]) < 0.01
