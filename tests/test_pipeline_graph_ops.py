"""The training graph's DALI operator count does not grow with chunks per track
(``python -m pipelines.bench ... --graph-ops``), and the SpecAugment masks made in torch from
the graph's draws."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipelines.bench.throughput import main
from pipelines.config import AugmentConfig, LoaderConfig
from pipelines.feature_stack import masks_from_draws

SEED = Path(__file__).resolve().parents[1] / "configs" / "fma_small_efficientnet_b2.toml"


@pytest.mark.parametrize("rate", [22050, 16000])  # 16 kHz shards are resampled to the seed's 22.05 kHz
def test_seed_training_graph_has_at_most_60_operators_whatever_chunks_per_track(synth_shards, rate, capsys):
    shards = synth_shards(tracks=8, seconds=8.0, sample_rate=rate)
    counts = {}
    for k in (4, 8):
        args = [
            str(shards),
            "--config",
            str(SEED),
            f"--loader.chunks_per_track={k}",
            f"--loader.batch_size={k}",
        ]
        assert main([*args, "--graph-ops", "--json"]) == 0
        counts[k] = json.loads(capsys.readouterr().out)
    assert counts[4] == counts[8]
    train, ev = counts[4]["train"], counts[4]["eval"]
    assert train["gpu"] > 0 and ev["gpu"] > 0 and ev["cpu"] > 0  # the gpu graph, built without CUDA
    assert train["cpu"] + train["gpu"] <= 60


def test_masks_from_draws_are_full_bands_of_the_drawn_widths():
    a = AugmentConfig(freq_masks=1, freq_width=3, time_masks=2, time_width=4)
    draws = torch.tensor(
        [[[0.99, 0.0], [0.0, 0.5], [0.5, 0.99]],  # freq: width 3 from 0; time: width 0; width 2 at the end
         [[0.0, 0.3], [0.99, 0.0], [0.0, 0.0]]]  # freq: width 0; time: width 4 from 0
    )  # fmt: skip
    m = masks_from_draws(draws, a, f=8, t=10)
    assert m.shape == (2, 8, 10) and m.dtype == torch.uint8
    rows0, cols0 = (m[0] == 0).all(dim=1), (m[0] == 0).all(dim=0)  # fully masked rows, columns
    assert rows0.tolist() == [True] * 3 + [False] * 5
    assert cols0.tolist() == [False] * 8 + [True] * 2  # start floor(0.99 * (10 - 2 + 1)) = 8
    assert not (m[1] == 0).all(dim=1).any()
    assert (m[1] == 0).all(dim=0).tolist() == [True] * 4 + [False] * 6
    assert bool(((m[0] == 0) == (rows0[:, None] | cols0[None, :])).all())


def test_more_chunks_per_track_than_one_multi_paste_takes_are_refused():
    with pytest.raises(ValueError, match=r"loader.chunks_per_track: must be 1..64, got 65"):
        LoaderConfig(batch_size=65, chunks_per_track=65)
