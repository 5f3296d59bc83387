"""The ``cqt`` channel is librosa's constant-Q transform (``pipelines/cqt.py``).

Parity: dB of the channel against ``librosa.cqt`` at the seed parameters (84 bins, 12 per
octave, fmin C1, hop 512, 22.05 kHz), both clipped at their peak - 80 dB, on synthesised music
written as MP3 and decoded as a shard build does (``pipelines.bench.music``): correlation >= 0.98
(median over clips). The pseudo-CQT (the ``cqt`` channel before, now ``pseudo_cqt``) scores
about 0.89 there, 0.72 on the lowest three octaves. Resolution: two sines a semitone apart near
40 Hz are two peaks. The DALI path (the chunks' samples handed over as ``wave``) is compared with
the same channel on the reference chunks in tests/test_pipeline_parity.py.
"""

from __future__ import annotations

import librosa  # the dev extra: the reference the cqt channel must match
import numpy as np
import pytest
import torch

from pipelines.bench.music import decoded, write_mp3
from pipelines.bench.reference import ReferenceFeatures
from pipelines.config import FeatureConfig
from pipelines.cqt import ConstantQ, CqtParams
from pipelines.feature_stack import FeatureAssembler

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
SR, HOP, C1 = 22050, 512, 32.70319566257483
SEED = FeatureConfig(channels=["cqt", "pseudo_cqt"], normalize="none", cqt_fmin=C1)


def channels(y: np.ndarray, device: str, fc: FeatureConfig = SEED) -> dict[str, np.ndarray]:
    """The registered channels of one whole clip (frames centred on ``t * hop``), in dB."""
    asm = FeatureAssembler(fc, device)
    wave = torch.from_numpy(y)[None]
    with torch.no_grad():
        mel, mfcc, power = ReferenceFeatures(fc)(wave)
        raw = asm.raw_channels(mel.to(device), mfcc.to(device), power.to(device), wave.to(device))
    return {k: v[0].cpu().numpy() for k, v in raw.items()}


def top80(db: np.ndarray) -> np.ndarray:
    return np.maximum(db - db.max(), -80.0)


def correlations(clip: np.ndarray, device: str) -> dict[str, float]:
    want = librosa.amplitude_to_db(
        np.abs(librosa.cqt(clip, sr=SR, hop_length=HOP, fmin=C1, n_bins=84, bins_per_octave=12)),
        ref=np.max,
        top_db=80.0,
    )
    got = channels(clip, device)
    out = {}
    for name in ("cqt", "pseudo_cqt"):
        assert got[name].shape == want.shape
        mine = top80(got[name])
        out[name] = float(np.corrcoef(mine.ravel(), want.ravel())[0, 1])
        out[f"{name}_low"] = float(np.corrcoef(mine[:36].ravel(), want[:36].ravel())[0, 1])
    return out


@pytest.fixture(scope="module")
def music(tmp_path_factory: pytest.TempPathFactory):
    """Clips by (count, seconds): MP3s written once per module, decoded at 22.05 kHz."""
    made: dict[tuple[int, float], list[np.ndarray]] = {}

    def get(count: int, seconds: float) -> list[np.ndarray]:
        if (count, seconds) not in made:
            d = tmp_path_factory.mktemp("music")
            made[count, seconds] = [decoded(write_mp3(d / f"{i}.mp3", seconds, i), SR) for i in range(count)]
        return made[count, seconds]

    return get


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("count,seconds", [(3, 8.0), pytest.param(12, 30.0, marks=pytest.mark.slow)])
def test_cqt_matches_librosa_on_music(music, device, count, seconds, record_property):
    scores = [correlations(clip, device) for clip in music(count, seconds)]
    median = {k: float(np.median([s[k] for s in scores])) for k in scores[0]}
    record_property("median_correlations", median)
    print(f"median correlation with librosa.cqt over {count} clips of {seconds:.0f} s: {median}")
    assert median["cqt"] >= 0.98, median
    assert median["cqt_low"] >= 0.97, median  # the lowest three octaves, the point of a CQT
    assert median["pseudo_cqt_low"] < 0.9  # the filter bank on the STFT really cannot (the old cqt)


@pytest.mark.parametrize("device", DEVICES)
def test_two_tones_a_semitone_apart_near_40_hz_are_two_peaks(device):
    """E1 (41.2 Hz) and F1 (43.7 Hz) are 2.45 Hz apart, a quarter of an FFT bin at n_fft 2048."""
    t = np.arange(6 * SR) / SR
    e1, f1 = C1 * 2 ** (4 / 12), C1 * 2 ** (5 / 12)
    y = (0.4 * np.sin(2 * np.pi * e1 * t) + 0.4 * np.sin(2 * np.pi * f1 * t)).astype(np.float32)
    got = channels(y, device)

    def profile(name: str) -> np.ndarray:  # mean power per bin of the first octave, in dB, edges left out
        return 10 * np.log10((10 ** (got[name][:12, 40:-40] / 10)).mean(axis=1))

    p = profile("cqt")
    assert sorted(np.argsort(p)[-2:]) == [4, 5]  # the two tones' own bins, and no other
    assert abs(p[4] - p[5]) < 1.0
    assert min(p[4], p[5]) - np.delete(p, [4, 5]).max() >= 6.0, p.round(1)
    pseudo = profile("pseudo_cqt")  # 10.8 Hz FFT bins: rows 3..6 read the same bins (no peaks)
    assert min(pseudo[4], pseudo[5]) - np.delete(pseudo, [4, 5]).max() < 1.0, pseudo.round(1)


def test_settings_are_checked_and_scale_with_length():
    """84 bins from C1 reach 4.1 kHz: refused at 8 kHz, naming the field; the number of frames
    follows the centred framing (1 + L // hop) for any length, as the STFT's do."""
    with pytest.raises(ValueError, match="features.cqt_bins: 84 bins"):
        FeatureConfig(sample_rate=8000, channels=["cqt"])
    p = CqtParams.of(SEED)
    cqt = ConstantQ(p, torch.device("cpu"))
    for n in (HOP, 10_000, 3 * SR + 7):
        assert cqt(torch.zeros(2, n)).shape == (2, 84, 1 + n // HOP)


@pytest.mark.parametrize(
    "hop,bins,per_octave",
    [(160, 80, 12), (512, 96, 24)],  # hop 160 stops halving after 5 (librosa's rule); 8-bin last octave
)
def test_other_settings_follow_librosa(hop, bins, per_octave, tmp_path):
    clip = decoded(write_mp3(tmp_path / "a.mp3", 6.0, seed=5), 16000)
    p = CqtParams(sample_rate=16000, hop=hop, bins=bins, bins_per_octave=per_octave, fmin=C1)
    got = ConstantQ(p, torch.device("cpu"))(torch.from_numpy(clip)).sqrt().numpy()
    want = np.abs(
        librosa.cqt(clip, sr=16000, hop_length=hop, fmin=C1, n_bins=bins, bins_per_octave=per_octave)
    )
    assert got.shape == want.shape
    to_db = lambda a: librosa.amplitude_to_db(a, ref=np.max, top_db=80.0)  # noqa: E731
    assert np.corrcoef(to_db(got).ravel(), to_db(want).ravel())[0, 1] >= 0.98


@pytest.mark.parametrize("mode", ["train", "eval"])  # eval: 3 samples per batch, padded batches
def test_loader_batches_carry_the_cqt_of_their_chunks(synth_shards, mode):
    """The DALI graph hands the chunks' samples over (``wave``); each chunk's cqt rows in ``x``
    are the channel of that chunk, cut from the track at the batch's ``start`` (in evaluation the
    last batch's padding repeats are dropped: the chunks are gathered before the CQT)."""
    from helpers.tars import read_tracks

    from pipelines.bench.reference import eval_chunks
    from pipelines.config import AugmentConfig, LoaderConfig, framing
    from pipelines.loader import build_loader

    path = synth_shards(tracks=8, seconds=3.0, sample_rate=SR)
    fc = FeatureConfig(channels=["mel", "cqt"], normalize="none")
    lc = LoaderConfig(
        chunk_seconds=1.0, batch_size=4, chunks_per_track=2, num_threads=1, eval_tracks_per_batch=3
    )
    loader = build_loader(
        path, "train", mode=mode, features=fc, augment=AugmentConfig(enabled=False), loader=lc
    )
    tracks, fr, asm = read_tracks(path, "train"), framing(fc, lc), FeatureAssembler(fc)
    ref, seen = ReferenceFeatures(fc), 0
    for batch in loader:
        for x, t, s in zip(batch["x"], batch["track"].tolist(), batch["start"].tolist()):
            chunk = eval_chunks(torch.from_numpy(tracks[t].signal[s : s + fr.chunk]), fr.chunk)[:1]
            with torch.no_grad():
                want = asm(*ref(chunk), wave=chunk)[0]
            assert float((x[1] - want[1]).abs().max()) < 0.5  # dB, the parity tolerance
            seen += 1
    assert seen == (len(tracks) * 3 if mode == "eval" else len(loader) * lc.batch_size)


@pytest.mark.parametrize("legacy", [False, True])
def test_cudnn_convolutions_run_in_full_float32_and_the_setting_comes_back(legacy):
    """cuDNN's default lets float32 convolutions run in TF32; the CQT's are held to IEEE float32
    for their duration, whichever API set the user's choice (flags only: no CUDA needed)."""
    from pipelines.cqt import ieee_convolutions

    conv = torch.backends.cudnn.conv
    before = conv.fp32_precision
    try:
        if legacy:
            torch.backends.cudnn.allow_tf32 = True
        else:
            conv.fp32_precision = "tf32"
        with ieee_convolutions(torch.device("cuda")):
            assert conv.fp32_precision == "ieee"
        assert conv.fp32_precision == "tf32"
        if legacy:
            assert torch.backends.cudnn.allow_tf32  # still readable through the legacy API
        with ieee_convolutions(torch.device("cpu")):
            assert conv.fp32_precision == "tf32"  # the CPU's convolutions are float32 anyway
    finally:
        conv.fp32_precision = before
