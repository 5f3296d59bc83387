"""Bad shards and bad settings fail before any DALI work, with one error naming the file;
configs validate their fields; 'meanstd' statistics round-trip."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from helpers.old_formats import as_version

from pipelines.bench.small import small_configs, small_overrides
from pipelines.config import AugmentConfig, FeatureConfig, LoaderConfig
from pipelines.feature_stack import STATS_FILE
from pipelines.loader import build_loader
from pipelines.shard_checks import ShardError
from pipelines.stats import compute_stats, write_stats
from pipelines.stats import main as stats_main
from shards.base.config import load_sections
from shards.format import BadShard


@pytest.fixture
def shards(synth_shards, tmp_path):
    """A private copy we may damage."""
    src = synth_shards(tracks=8, seconds=2.5, sample_rate=8000, shard_size_mb=0.1)
    return shutil.copytree(src, tmp_path / "shards")


def edit_first_sample(shards, edit):
    """Rewrite the first sample line of train/000000.idx as ``edit(fields) -> fields``."""
    idx = shards / "train" / "000000.idx"
    lines = idx.read_text().splitlines()
    lines[1] = " ".join(edit(lines[1].split()))
    idx.write_text("\n".join(lines) + "\n")


def load(path, mode="eval", **loader):
    fc, aug, lc = small_configs(**loader)
    return build_loader(path, "train", mode=mode, features=fc, augment=aug, loader=lc)


def test_missing_shard(shards):
    (shards / "train" / "000001.tar").unlink()
    with pytest.raises(ShardError, match=r"train/000001\.tar.*missing"):
        load(shards)


def test_truncated_shard(shards):
    tar = shards / "train" / "000000.tar"
    tar.write_bytes(tar.read_bytes()[:-1024])
    with pytest.raises(ShardError, match=r"000000\.tar: .*truncated or corrupt"):
        load(shards)


def test_index_not_matching_its_tar(shards):
    # the first member's offset now points at the wrong header
    edit_first_sample(shards, lambda f: [f[0], str(int(f[1]) + 512), *f[2:]])
    with pytest.raises(
        ShardError, match=r"000000\.idx: .*does not match 000000\.tar|000000\.idx: .*does not fit"
    ):
        load(shards)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_truncated_ids_file_is_named_before_any_batch(shards, mode):
    """The training catalog takes its labels from the ids files: one cut short is one line
    before DALI (in training, before the plan is made from it)."""
    ids = shards / "train" / "000000.ids"
    data = ids.read_bytes()
    ids.write_bytes(data[:-8])
    with pytest.raises(ShardError) as e:
        load(shards, mode=mode)
    assert str(e.value) == (
        f"{ids}: {len(data) - 8} bytes, the manifest says {len(data)} (truncated or corrupt ids file)"
    )


def test_a_changed_ids_file_stops_training_before_its_shard_is_read(shards):
    """Same size, other bytes: loader.verify="first_open" checks the ids file with its shard,
    before any chunk of that shard (labelled from it) is trained."""
    ids = shards / "train" / "000000.ids"
    data = ids.read_bytes()
    ids.write_bytes(data[:8] + bytes([data[8] ^ 1]) + data[9:])
    with pytest.raises(BadShard) as e:
        list(load(shards, mode="train", verify="first_open"))
    text = str(e.value)
    assert text.startswith(str(shards / "train" / "000000.tar")) and "ids file 000000.ids sha256" in text, (
        text
    )
    assert "\n" not in text


def test_index_with_wrong_sample_count(shards):
    idx = shards / "train" / "000000.idx"
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join([f"v1.2 {len(lines) - 2}", *lines[1:-1]]) + "\n")
    with pytest.raises(ShardError, match=r"000000\.idx: \d+ samples, the manifest says"):
        load(shards)


def test_other_manifest_version(shards):
    path = shards / "manifest.json"
    data = json.loads(path.read_text())
    data["version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ShardError, match=r"manifest\.json: manifest format version 99"):
        load(shards)


def test_chunk_longer_than_every_track(shards):
    with pytest.raises(
        ShardError, match=r"manifest\.json: loader\.chunk_seconds=3\.0 is longer than every track"
    ):
        load(shards, chunk_seconds=3.0)


def test_split_too_small_for_a_training_batch(shards):
    with pytest.raises(ShardError, match=r"fewer than one training batch"):
        load(shards, mode="train", batch_size=40, chunks_per_track=2)


def test_fewer_tracks_than_ranks(shards):
    from shards.format.manifest import read_manifest

    n = read_manifest(shards).split("train").num_samples
    fc, aug, lc = small_configs()
    with pytest.raises(
        ShardError, match=rf"manifest\.json: split 'train' has {n} tracks, fewer than {n + 1} ranks"
    ):
        build_loader(
            shards, "train", mode="eval", features=fc, augment=aug, loader=lc, rank=0, world_size=n + 1
        )


def test_index_sample_without_its_ids(shards):
    edit_first_sample(shards, lambda f: f[: f.index("ids")] + f[f.index("ids") + 4 :])
    with pytest.raises(ShardError, match=r"000000\.idx: sample 0 has no \.ids component"):
        load(shards)


def test_ids_member_of_the_wrong_size_names_the_tar_and_the_key(shards):
    """Version 3: [tid, label, 5 segment fields] = 56 bytes; one entry short is refused before DALI."""
    key = (shards / "train" / "000000.idx").read_text().splitlines()[1].split()[3].split(".")[0]
    edit_first_sample(shards, lambda f: [*f[: f.index("ids") + 2], "48", *f[f.index("ids") + 3 :]])
    with pytest.raises(ShardError) as e:
        load(shards)
    assert str(e.value).startswith(str(shards / "train" / "000000.tar") + ": .ids of sample 0 ")
    assert f"(key {key}) has 48 bytes, expected 56 (manifest version 3" in str(e.value)
    assert "\n" not in str(e.value)


def test_version_2_sample_without_its_labels(shards, tmp_path):
    v2 = as_version(shards, tmp_path / "v2", 2)
    edit_first_sample(v2, lambda f: f[: f.index("lbl")] + f[f.index("lbl") + 4 :])
    with pytest.raises(ShardError, match=r"000000\.idx: sample 0 has no \.lbl component"):
        load(v2)


def test_index_sample_with_empty_audio(shards):
    edit_first_sample(shards, lambda f: [*f[: f.index("pcm") + 2], "0", *f[f.index("pcm") + 3 :]])
    with pytest.raises(ShardError, match=r"000000\.idx: \.pcm of sample 0 is empty"):
        load(shards)


def test_unknown_split_and_bad_mode(shards):
    fc, aug, lc = small_configs()
    with pytest.raises(ShardError, match="no split 'nope'"):
        build_loader(shards, "nope", mode="eval", features=fc, augment=aug, loader=lc)
    with pytest.raises(ValueError, match="mode"):
        build_loader(shards, "train", mode="test", features=fc, augment=aug, loader=lc)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: FeatureConfig(n_mfcc=0), "features.n_mfcc"),
        (lambda: FeatureConfig(n_fft=1023), "features.n_fft"),
        (lambda: FeatureConfig(channels=["mel", "spectral"]), "features.channels"),  # type: ignore[list-item]
        (lambda: FeatureConfig(f_max=20000.0), "features.f_max"),
        (lambda: AugmentConfig(time_width=-1), "augment.time_width"),
        (lambda: LoaderConfig(batch_size=6, chunks_per_track=4), "loader.batch_size"),
        (lambda: LoaderConfig(chunk_seconds=0.0), "loader.chunk_seconds"),
    ],
)
def test_config_fields_are_validated(make, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        make()


def test_toml_sections(tmp_path):
    cfg = tmp_path / "x.toml"
    cfg.write_text('[features]\nn_mels = 128\nchannels = ["mel", "cqt"]\n[loader]\nbatch_size = 32\n')
    out = load_sections(
        {"features": FeatureConfig, "augment": AugmentConfig, "loader": LoaderConfig},
        cfg,
        ["--augment.freq_masks=1"],
    )
    assert out["features"].n_mels == 128 and out["features"].channels == ["mel", "cqt"]
    assert out["loader"].batch_size == 32 and out["augment"].freq_masks == 1
    cfg.write_text("[features]\nn_mel = 128\n")
    with pytest.raises(ValueError, match=r"\[features\]: unknown key\(s\) \['n_mel'\]"):
        load_sections({"features": FeatureConfig}, cfg)


def test_meanstd_statistics(shards):
    fc, aug, lc = small_configs()
    ms = dataclasses.replace(fc, normalize="meanstd", channels=["pseudo_cqt", "mel"])
    with pytest.raises(FileNotFoundError, match=STATS_FILE):
        build_loader(shards, "train", mode="eval", features=ms, augment=aug, loader=lc)
    assert stats_main([str(shards), *small_overrides()]) == 0
    stats = json.loads((shards / STATS_FILE).read_text())
    assert stats["chunks"] == 4 * 3  # 8 tracks: 4 in train (2 validation, 2 test), 3 chunks each
    x = torch.cat(
        [b["x"] for b in build_loader(shards, "train", mode="eval", features=ms, augment=aug, loader=lc)]
    )
    assert x.shape[0] == stats["chunks"]
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-3)
    assert torch.allclose(x.std(dim=(0, 2, 3), correction=0), torch.ones(2), atol=1e-3)
    other = dataclasses.replace(fc, n_mels=16)
    write_stats(shards, compute_stats(shards, features=other, loader=lc, progress=False))
    with pytest.raises(ValueError, match="computed for other features"):
        build_loader(shards, "train", mode="eval", features=ms, augment=aug, loader=lc)
