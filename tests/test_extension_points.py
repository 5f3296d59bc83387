"""A new feature channel, dataset importer and metric, added from outside the existing modules:
each is one definition plus one registration call."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.predictions import batches, identity

from eval.metrics import METRICS, register_metric
from eval.runner import evaluate_model
from pipelines.bench.small import small_configs
from pipelines.channels import CHANNELS, Channel, ChannelFn, ChannelInputs, register_channel
from pipelines.config import FeatureConfig
from pipelines.loader import build_loader
from shards.base.tasks import TaskSpec
from shards.bench.synth import make_synth
from shards.builder.config import BuildConfig, load_build_config
from shards.cli import main
from shards.format.manifest import read_manifest
from shards.importers import IMPORTERS, Importer, ImporterOptions, register_importer
from shards.importers.mtat import MTATOptions
from shards.importers.records import Dataset, Record, hash_split, read_table, single_task


def _double_mel(fc: FeatureConfig, device: torch.device) -> ChannelFn:
    return lambda inp: inp.mel_db * 2.0


def _centroid(fc: FeatureConfig, device: torch.device) -> ChannelFn:
    """Spectral centroid as a fraction of Nyquist, one row per frame (needs the power spectrum)."""
    bins = torch.linspace(0.0, 1.0, fc.n_freqs, device=device)

    def centroid(inp: ChannelInputs) -> torch.Tensor:
        p = inp.need_power("centroid")
        return (torch.einsum("f,...ft->...t", bins, p) / p.sum(-2).clamp_min(1e-12)).unsqueeze(-2)

    return centroid


@pytest.fixture
def new_channels() -> Iterator[None]:
    register_channel(Channel(name="double_mel", needs="mel", build=_double_mel))
    register_channel(Channel(name="centroid", needs="power", build=_centroid))
    yield
    CHANNELS.unregister("double_mel")
    CHANNELS.unregister("centroid")


def test_unknown_channel_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"features.channels: \['mel', 'nope'\] must be distinct names from"):
        FeatureConfig(channels=["mel", "nope"])


def test_a_registered_channel_flows_through_the_dali_loader(new_channels: None, synth_shards) -> None:
    shards = synth_shards(task="single", tracks=12, seconds=3.0, sample_rate=8000)
    fc, aug, lc = small_configs()
    fc = dataclasses.replace(fc, channels=["mel", "double_mel"], normalize="none")
    assert not fc.needs_power  # neither channel needs DALI's power spectrogram
    loader = build_loader(shards, "validation", mode="eval", features=fc, augment=aug, loader=lc)
    assert "power" not in loader.spec.output_names
    x = next(iter(loader))["x"]
    assert x.shape[1:] == (2, fc.n_mels, loader.feature_shape[2])
    assert torch.allclose(x[:, 1], 2.0 * x[:, 0])

    fc = dataclasses.replace(fc, channels=["mel", "centroid"])
    assert fc.needs_power  # the registry says so: DALI now hands the power spectrum over
    loader = build_loader(shards, "validation", mode="eval", features=fc, augment=aug, loader=lc)
    assert "power" in loader.spec.output_names
    c = next(iter(loader))["x"][:, 1]
    assert torch.equal(c, c[:, :1].expand_as(c))  # one row, repeated to n_mels rows
    assert float(c.min()) >= 0.0 and float(c.max()) <= 1.0 and float(c.std()) > 0.0


# ---------------------------------------------------------------- a new importer


@dataclass(kw_only=True)
class TsvOptions(ImporterOptions):
    """Options only the test importer declares."""

    delimiter: str = "\t"
    """Column separator of the label file."""
    genre_column: str = "label"
    """Column holding the class name."""


def _load_tsv(cfg: BuildConfig) -> Dataset:
    opts = cfg.importer_options(TsvOptions)
    path = cfg.root / "labels.tsv"
    df = read_table(path, sep=opts.delimiter, dtype=str, keep_default_na=False)
    labels = [str(v) for v in df[opts.genre_column]]
    records = [
        Record(
            key=rel.rsplit(".", 1)[0],
            audio=cfg.root / rel,
            labels=lab,
            split=hash_split(rel, cfg.seed),
            path=rel,
        )
        for rel, lab in zip(df["path"], labels)
    ]
    return Dataset(source="tsv", task=single_task("genre", labels), records=records)


@pytest.fixture
def tsv_importer() -> Iterator[None]:
    register_importer(Importer(name="tsv", load=_load_tsv, options=TsvOptions, tasks=("single",)))
    yield
    IMPORTERS.unregister("tsv")


def test_a_registered_importer_builds_with_its_own_options(
    tsv_importer: None, tmp_path: Path, capsys
) -> None:
    raw = tmp_path / "raw"
    csv = make_synth(raw, tracks=10, seconds=1.5, seed=3, formats=["wav"])
    table = pd.read_csv(csv)
    table[["path", "label"]].rename(columns={"label": "style"}).to_csv(
        raw / "labels.tsv", sep=";", index=False
    )
    out = tmp_path / "shards"
    argv = ["build", "tsv", "--root", str(raw), "--out", str(out), "--workers", "1", "--quiet"]
    assert main([*argv, "--delimiter", ";", "--genre-column", "style"]) == 0  # generated flags
    m = read_manifest(out)
    assert m.totals["written"] == 10 and m.task.classes == sorted(set(table["label"]))
    assert m.build["options"] == {"delimiter": ";", "genre_column": "style"}
    # an option of another importer is refused, naming the importer and the key
    assert main([*argv, "--force", "--top-n", "3"]) == 2
    err = capsys.readouterr().err
    assert "command line (tsv options): unknown key(s) ['top_n']" in err


def test_an_importer_option_in_a_toml_file_belongs_to_its_importer(tmp_path: Path) -> None:
    cfg = tmp_path / "b.toml"
    cfg.write_text(
        f'[shards]\nsource = "mtat"\nroot = "{tmp_path}"\nout = "{tmp_path / "o"}"\ntop_n = 7\nclean = true\n'
    )
    b = load_build_config(cfg, {})
    assert b.importer_options(MTATOptions).top_n == 7 and b.importer_options(MTATOptions).clean
    cfg.write_text(f'[shards]\nsource = "fma"\nroot = "{tmp_path}"\nout = "{tmp_path / "o"}"\ntop_n = 7\n')
    with pytest.raises(ValueError, match=r"b\.toml \[shards\] \(fma options\): unknown key\(s\) \['top_n'\]"):
        load_build_config(cfg, {})


# ---------------------------------------------------------------- a new metric


def _brier(task, probs: torch.Tensor, target: torch.Tensor) -> dict[str, float]:  # noqa: ANN001
    onehot = torch.nn.functional.one_hot(target, probs.shape[1]).float()
    return {"brier": float(((probs - onehot) ** 2).sum(1).mean())}


def test_a_registered_metric_reaches_every_evaluation() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1]])
    target = torch.tensor([0, 1, 0, 0])
    task = TaskSpec(kind="single", classes=["a", "b", "c"])
    register_metric("single", "brier", _brier)
    try:
        result = evaluate_model(identity, batches(probs, target, torch.arange(4), size=2), task)
    finally:
        METRICS["single"].unregister("brier")
    want = float(
        np.mean([(0.3**2 + 0.04 + 0.01), (0.01 + 0.04 + 0.01), (0.49 + 0.09 + 0.16), (0.16 + 0.09 + 0.01)])
    )
    assert (
        abs(result.metrics["track/brier"] - want) < 1e-6 and abs(result.metrics["chunk/brier"] - want) < 1e-6
    )
    assert result.metrics["track/accuracy"] == 0.75  # the built-in metrics are untouched
