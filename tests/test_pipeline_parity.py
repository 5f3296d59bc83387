"""DALI features vs the torchaudio reference and the webdataset baseline; codecs and resampling.

Tolerances (float32 throughout; DALI's FFT and filter-bank summation order differ from
torch's): mel, CQT and pseudo-CQT within 0.5 dB anywhere and 0.01 dB on average, MFCC within
0.25 (values span about +-1600), chroma within 1e-4 (range 0..1), min-max normalised
channels within 5e-3.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import defaultdict

import numpy as np
import pytest
import torch
from helpers.features import normalize_reference
from helpers.tars import mel_centres, read_tracks

from pipelines.bench.baseline import BaselineLoader
from pipelines.bench.reference import ReferenceFeatures, eval_chunks
from pipelines.bench.small import small_configs
from pipelines.config import AugmentConfig, FeatureConfig, LoaderConfig, framing
from pipelines.feature_stack import FeatureAssembler
from pipelines.loader import build_loader
from shards.bench.synth import GENRE_BANDS

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
TOL = {
    "mel": (0.5, 0.01),
    "mfcc": (0.25, 0.01),
    "chroma": (1e-4, 1e-6),
    "cqt": (0.5, 0.01),
    "pseudo_cqt": (0.5, 0.01),
}


def by_track(batches) -> dict[int, dict[str, torch.Tensor]]:
    """Concatenate each track's chunks (in order) across eval batches."""
    parts: dict[int, list] = defaultdict(list)
    labels = {}
    for b in batches:
        for t in b["track"].unique().tolist():
            sel = (b["track"] == t).cpu()
            parts[t].append(b["x"].cpu()[sel])
            labels[t] = b["y"].cpu()[sel]
    return {t: {"x": torch.cat(v), "y": labels[t]} for t, v in parts.items()}


@pytest.mark.parametrize("device", DEVICES)
def test_dali_matches_reference_per_channel(synth_shards, device):
    """Seed feature sizes (22050 Hz, n_fft 2048, hop 512, 256 mels, 40 MFCC), every channel."""
    path = synth_shards(tracks=6, seconds=3.0, sample_rate=22050)
    fc = FeatureConfig(channels=["mel", "mfcc", "chroma", "cqt", "pseudo_cqt"], normalize="none")
    lc = LoaderConfig(
        chunk_seconds=2.0, eval_tracks_per_batch=2, num_threads=1, batch_size=4, chunks_per_track=2
    )
    dali = by_track(
        build_loader(
            path, "validation", mode="eval", features=fc, augment=AugmentConfig(), loader=lc, device=device
        )
    )
    tracks = read_tracks(path, "validation")
    assert sorted(dali) == sorted(tracks)
    ref, asm, fr = ReferenceFeatures(fc), FeatureAssembler(fc), framing(fc, lc)
    minmax = FeatureAssembler(dataclasses.replace(fc, normalize="minmax"))
    for tid, tr in tracks.items():
        with torch.no_grad():
            chunks = eval_chunks(torch.from_numpy(tr.signal), fr.chunk)
            want = asm(*ref(chunks), wave=chunks)  # the CQT from the chunks' samples, DALI's "wave"
        got = dali[tid]["x"]
        assert got.shape == want.shape == (2, 5, 256, 1 + fr.chunk // 512)
        for c, name in enumerate(fc.channels):
            err = (got[:, c] - want[:, c]).abs()
            assert float(err.max()) <= TOL[name][0], f"{name}: max error {float(err.max())}"
            assert float(err.mean()) <= TOL[name][1], f"{name}: mean error {float(err.mean())}"
        err = (
            (normalize_reference(minmax, got.clone()) - normalize_reference(minmax, want.clone())).abs().max()
        )
        assert float(err) <= 5e-3


def test_baseline_produces_the_same_tensors(synth_shards):
    path = synth_shards(tracks=13, seconds=2.5, sample_rate=8000, shard_size_mb=0.1)
    fc, aug, lc = small_configs()
    kw = dict(mode="eval", features=fc, augment=aug, loader=lc)
    dali = by_track(build_loader(path, "train", **kw))
    base = by_track(BaselineLoader(path, "train", workers=1, **kw))
    assert sorted(dali) == sorted(base) == list(range(9))
    for t in dali:
        assert torch.equal(dali[t]["y"], base[t]["y"])
        assert dali[t]["x"].shape == base[t]["x"].shape == (3, 3, 32, 63)
        assert float((dali[t]["x"] - base[t]["x"]).abs().max()) <= 5e-3
    train = next(
        iter(BaselineLoader(path, "train", workers=1, mode="train", features=fc, augment=aug, loader=lc))
    )
    assert train["x"].shape == (8, 3, 32, 63) and train["track"].shape == (8,)


def _peak_class(x: torch.Tensor, fc: FeatureConfig) -> list[int]:
    centres = mel_centres(fc)
    band = [int(np.argmin([abs(c - (lo + hi) / 2) for lo, hi in GENRE_BANDS])) for c in centres]
    return [band[r] for r in (10.0 ** (x[:, 0] / 10.0)).mean(dim=2).argmax(dim=1).tolist()]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("codec", ["flac", "ogg"])
def test_compressed_codecs_decode_in_dali(synth_shards, codec, device):
    """flac is lossless: same features as pcm16; ogg: right class visible in every chunk."""
    fc, aug, lc = small_configs()
    fc = dataclasses.replace(fc, normalize="none")
    kw = dict(mode="eval", features=fc, augment=aug, loader=lc, device=device)
    pcm = by_track(build_loader(synth_shards(tracks=8, seconds=2.5, sample_rate=8000), "train", **kw))
    other = by_track(
        build_loader(synth_shards(codec=codec, tracks=8, seconds=2.5, sample_rate=8000), "train", **kw)
    )
    assert sorted(pcm) == sorted(other)
    for t in pcm:
        assert other[t]["x"].shape == pcm[t]["x"].shape
        assert torch.equal(other[t]["y"], pcm[t]["y"])
        assert _peak_class(other[t]["x"], fc) == other[t]["y"].tolist()
        if codec == "flac":
            loud = pcm[t]["x"][:, 0] > -40  # where there is signal: int16 rounding shows near the floor
            assert float((other[t]["x"][:, 0] - pcm[t]["x"][:, 0])[loud].abs().max()) < 0.05


@pytest.mark.parametrize("device", DEVICES)
def test_resampling_when_shards_have_another_rate(synth_shards, device):
    """16 kHz shards, 8 kHz features: DALI resamples on the device. Its resampler does not
    low-pass when downsampling (DALI 2.4), so noise above 4 kHz aliases and only the tonal
    rows are compared with torchaudio's resampler; the loader warns about it."""
    import torchaudio

    path = synth_shards(tracks=8, seconds=2.5, sample_rate=16000)
    fc, aug, lc = small_configs()
    fc = dataclasses.replace(fc, normalize="none")
    with pytest.warns(UserWarning, match="does not low-pass"):
        loader = build_loader(path, "train", mode="eval", features=fc, augment=aug, loader=lc, device=device)
    got = by_track(loader)
    tracks = read_tracks(path, "train")
    ref, asm = ReferenceFeatures(fc), FeatureAssembler(fc)
    for t, tr in tracks.items():
        x = got[t]["x"]
        assert x.shape == (3, 3, 32, 63)  # 8 kHz framing although the shards are 16 kHz
        assert _peak_class(x, fc) == got[t]["y"].tolist()
        sig = torchaudio.functional.resample(torch.from_numpy(tr.signal), 16000, 8000)
        with torch.no_grad():
            want = asm(*ref(eval_chunks(sig, 8000)))
        level = lambda m: 10.0 * torch.log10((10.0 ** (m[:2, 0] / 10.0)).mean(dim=2))  # noqa: E731
        peak = level(want).argmax(dim=1)
        diff = level(x).gather(1, peak[:, None]) - level(want).gather(1, peak[:, None])
        assert float(diff.abs().max()) < 1.0  # the genre tone's row, full chunks only


def _run_outputs(spec, batches: int) -> list[dict[str, list[np.ndarray]]]:
    """``batches`` runs of the DALI pipeline of ``spec``: per output name, one array per sample."""
    from pipelines.graph import build_pipeline

    pipe = build_pipeline(spec)
    runs = []
    for _ in range(batches):
        outs = pipe.run()
        runs.append(
            {
                name: [np.array(t) for t in (tl.as_cpu() if hasattr(tl, "as_cpu") else tl)]
                for name, tl in zip(spec.output_names, outs)
            }
        )
    return runs


@pytest.mark.gpu
@pytest.mark.parametrize(("mode", "rate"), [("eval", 8000), ("train", 8000), ("train", 16000)])
def test_dali_gpu_matches_dali_cpu_on_every_output(synth_shards, mode, rate):
    """The one graph built for both backends, run side by side: every pipeline output, sample by
    sample (eval: mel dB, power, labels, track ids, chunk counts; train: also the chunk starts and
    SpecAugment masks), then the loader's batches {x, y, track} (eval). The reader and every
    random draw run on CPU nodes in both, so track order, labels, chunk starts and kept counts
    are identical (same seeds, same draws) and the drawn chunks' features match; 16-kHz shards
    exercise the training windows resampled on the device."""
    path = synth_shards(tracks=13, seconds=2.5, sample_rate=rate, shard_size_mb=0.1)
    fc, aug, lc = small_configs()
    kw = dict(mode=mode, features=fc, augment=aug, loader=lc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 16 kHz -> 8 kHz: the downsampling warning
        gpu = build_loader(path, "train", device="cuda", **kw)
    cpu_spec = dataclasses.replace(gpu.spec, device="cpu", device_id=None)
    n = len(gpu)
    got, want = _run_outputs(gpu.spec, n), _run_outputs(cpu_spec, n)
    assert "power" in gpu.spec.output_names and ("mask" in gpu.spec.output_names) == (mode == "train")
    exact = ("lbl", "tid", "nchunks", "start", "mask") if mode == "train" else ("lbl", "tid", "nchunks")
    for g, w in zip(got, want):
        for name in exact:
            assert all(np.array_equal(a, b) for a, b in zip(g[name], w[name])), name
        for a, b in zip(g["mel"], w["mel"]):
            assert a.shape == b.shape and a.dtype == b.dtype == np.float32
            # resampled: the two backends' resamplers round differently (~1e-3 of full scale),
            # which shows in dB only far below the sample's peak
            loud = b > b.max() - (60.0 if rate != fc.sample_rate else 1e9)
            assert (
                float(np.abs(a - b)[loud].max()) <= TOL["mel"][0]
                and float(np.abs(a - b).mean()) <= TOL["mel"][1]
            )
        for a, b in zip(g["power"], w["power"]):
            assert a.shape == b.shape
            assert float(np.abs(a - b).max()) <= (1e-4 if rate == fc.sample_rate else 5e-3) * float(b.max())
    if mode == "eval":
        on_gpu = by_track(gpu)
        on_cpu = by_track(build_loader(path, "train", device="cpu", **kw))
        assert sorted(on_gpu) == sorted(on_cpu) == list(range(9))
        for t in on_cpu:
            assert torch.equal(on_gpu[t]["y"], on_cpu[t]["y"])
            assert on_gpu[t]["x"].shape == on_cpu[t]["x"].shape
            assert float((on_gpu[t]["x"] - on_cpu[t]["x"]).abs().max()) <= 5e-3  # min-max normalised
