"""The torch half of the features (``FeatureAssembler``): its fused stack equals the plain
resize -> stack -> normalise -> mask recipe, and its DCT equals torchaudio's."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import torchaudio
from helpers.features import normalize_reference

from pipelines.channels import dct_matrix
from pipelines.config import FeatureConfig
from pipelines.feature_stack import FeatureAssembler, nearest_rows, stats_key


@pytest.mark.parametrize(
    "rows,out", [(12, 256), (40, 256), (84, 256), (13, 32), (12, 32), (7, 7), (5, 10), (300, 256)]
)
def test_nearest_rows_match_interpolate(rows, out):
    src = torch.arange(rows, dtype=torch.float32).view(1, 1, rows, 1)
    want = F.interpolate(src, size=(out, 1), mode="nearest").view(-1).to(torch.int64)
    assert torch.equal(torch.from_numpy(nearest_rows(rows, out)), want)


@pytest.mark.parametrize("n_mfcc,n_mels", [(40, 256), (13, 32)])
def test_dct_matrix_is_torchaudios_orthonormal_dct(n_mfcc, n_mels):
    want = torchaudio.functional.create_dct(n_mfcc, n_mels, "ortho").T
    assert torch.allclose(torch.from_numpy(dct_matrix(n_mfcc, n_mels)), want, atol=1e-6)


def _plain(asm: FeatureAssembler, chans, mask):
    """The straightforward recipe the fused ``stack`` must reproduce exactly."""
    f, t = asm.cfg.n_mels, chans[0].shape[-1]
    x = torch.stack(
        [
            c if c.shape[-2] == f else F.interpolate(c.unsqueeze(1), size=(f, t), mode="nearest")[:, 0]
            for c in chans
        ],
        dim=1,
    )
    x = normalize_reference(asm, x)
    return x if mask is None else x * mask.unsqueeze(1).to(x.dtype)


@pytest.mark.parametrize("normalize", ["minmax", "meanstd", "none"])
@pytest.mark.parametrize("masked", [False, True])
def test_stack_equals_resize_stack_normalize_mask(tmp_path, normalize, masked):
    fc = FeatureConfig(channels=["pseudo_cqt", "mel", "mfcc", "chroma"], normalize="none")
    stats = tmp_path / "feature_stats.json"
    stats.write_text(
        json.dumps(
            {
                "features": stats_key(fc),
                "mean": {"mel": -40.0, "mfcc": 3.0, "chroma": 0.4, "pseudo_cqt": -50.0},
                "std": {"mel": 20.0, "mfcc": 90.0, "chroma": 0.3, "pseudo_cqt": 15.0},
            }
        )
    )
    fc.normalize = normalize
    asm = FeatureAssembler(fc, stats=stats)
    g = torch.Generator().manual_seed(0)
    n, t = 6, 37
    mel = torch.randn(n, t, 256, generator=g).mul(20).sub(40).transpose(1, 2)  # strided, like DALI's
    power = torch.rand(n, t, fc.n_freqs, generator=g).transpose(1, 2)
    mask = (torch.rand(n, 256, t, generator=g) > 0.3).to(torch.uint8) if masked else None
    chans = list(asm.raw_channels(mel, None, power).values())
    assert torch.equal(asm.stack(chans, mask), _plain(asm, chans, mask))
    # the MFCC computed here is the DCT of the dB mel
    mfcc = asm.raw_channels(mel, None, power)["mfcc"]
    assert torch.allclose(
        mfcc,
        torch.matmul(mel.transpose(1, 2), torch.from_numpy(dct_matrix(fc.n_mfcc, fc.n_mels)).T).transpose(
            1, 2
        ),
        atol=1e-3,
    )


def _stats_file(tmp_path, features: FeatureConfig, **extra) -> str:
    chans = ["mel", "cqt"]
    data = {
        "features": stats_key(features),
        "mean": dict.fromkeys(chans, 0.5),
        "std": dict.fromkeys(chans, 2.0),
    }
    path = tmp_path / "feature_stats.json"
    path.write_text(json.dumps(data | extra))
    return str(path)


def test_audio_cqt_statistics_from_before_the_true_cqt_are_refused(tmp_path):
    """A stats file written before ``cqt`` became the true CQT holds the filter bank's numbers
    under ``cqt``: normalising the true CQT with them would be silently wrong."""
    features = FeatureConfig(channels=["mel", "cqt"], normalize="meanstd")
    with pytest.raises(ValueError, match="before cqt became the true constant-Q .* pipelines.stats"):
        FeatureAssembler(features, "cpu", _stats_file(tmp_path, features))
    asm = FeatureAssembler(features, "cpu", _stats_file(tmp_path, features, cqt="librosa"))
    assert asm.mean is not None and asm.mean.flatten().tolist() == [0.5, 0.5]


def test_image_cqt_statistics_need_no_mark(tmp_path):
    """An image build's cqt is the dataset's own picture: its statistics never changed meaning."""
    features = FeatureConfig(channels=["mel", "cqt"], normalize="meanstd", image_frames=64, sample_rate=8000)
    asm = FeatureAssembler(features, "cpu", _stats_file(tmp_path, features), computed=False)
    assert asm.std is not None and asm.std.flatten().tolist() == [2.0, 2.0]
    assert asm.channels == {}  # nothing computed: no CQT kernels (84 bins pass 8 kHz's Nyquist)
