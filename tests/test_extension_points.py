"""A new feature channel and a new dataset importer, added from outside the existing modules:
each is one definition plus one registration call."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pipelines.channels import Channel, ChannelFn, ChannelInputs, register_channel, unregister_channel
from pipelines.config import FeatureConfig
from pipelines.loader import build_loader
from pipelines.testing import small_configs


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
    unregister_channel("double_mel")
    unregister_channel("centroid")


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
