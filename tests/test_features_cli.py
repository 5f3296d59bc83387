"""``python -m pipelines.features``: a file's channels as arrays and a picture, framed over the
whole file (frame t centred on sample t * hop), after the shard build's decode and resampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.bench.music import decoded, write_mp3
from pipelines.bench.reference import ReferenceFeatures
from pipelines.config import FeatureConfig
from pipelines.cqt import ConstantQ, CqtParams
from pipelines.features import main

CHANNELS = ["mel", "cqt", "chroma"]


def test_features_command_writes_arrays_and_pictures(tmp_path, capsys):
    songs = [write_mp3(tmp_path / f"song{i}.mp3", seconds=4.0 + i, seed=i) for i in range(2)]
    broken = tmp_path / "broken.mp3"
    broken.write_bytes(b"this is not audio " * 20)
    config = tmp_path / "x.toml"
    # raw channels: a 'meanstd' config needs no statistics here; other sections are ignored
    config.write_text('[features]\nn_mels = 128\nnormalize = "meanstd"\n[loader]\nbatch_size = 8\n')
    out = tmp_path / "out"
    args = [str(songs[0]), str(broken), str(songs[1]), "--config", str(config), "--out", str(out)]
    assert main([*args, f"--features.channels={CHANNELS}".replace("'", '"'), "--progress=none"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("warning", "error"))]
    assert len(err) == 1 and str(broken) in err[0], err  # one line for the bad file, the others written
    assert sorted(p.name for p in out.iterdir()) == ["song0.npz", "song0.png", "song1.npz", "song1.png"]

    fc = FeatureConfig(n_mels=128, channels=CHANNELS, normalize="none")
    for song in songs:
        y = decoded(song, fc.sample_rate)  # MP3 -> mono 22.05 kHz, as the shard build stores it
        frames = 1 + y.shape[0] // fc.hop_length
        with np.load(out / f"{song.stem}.npz") as got:
            assert sorted(got.files) == sorted(CHANNELS)
            assert {k: got[k].shape for k in got.files} == {
                "mel": (128, frames),
                "cqt": (84, frames),
                "chroma": (12, frames),
            }
            assert all(got[k].dtype == np.float32 for k in got.files)
            # librosa's framing (center=True): the torchaudio reference over the whole file, not chunks
            mel, _, _ = ReferenceFeatures(fc)(torch.from_numpy(y)[None])
            assert float(np.abs(got["mel"] - mel[0].numpy()).max()) < 0.5
            power = ConstantQ(CqtParams.of(fc), torch.device("cpu"))(torch.from_numpy(y))
            want = 10 * torch.log10(power.clamp_min(10 ** (fc.db_floor / 10))).numpy()
            assert float(np.abs(got["cqt"] - want).max()) < 1e-3  # the channel's own numbers, not resized
        with Image.open(out / f"{song.stem}.png") as img:
            assert img.format == "PNG" and img.width >= 400 and img.height >= 3 * 100


def test_features_command_refuses_a_bad_setting_in_one_line(tmp_path):
    song = write_mp3(tmp_path / "a.mp3", seconds=2.0, seed=0)
    with pytest.raises(ValueError, match="features.cqt_bins"):
        main(
            [
                str(song),
                "--out",
                str(tmp_path / "o"),
                "--features.sample_rate=8000",
                '--features.channels=["cqt"]',
            ]
        )
