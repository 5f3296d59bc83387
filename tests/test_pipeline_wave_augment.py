"""Waveform augmentation in the DALI graph (issue 33): speed perturbation (``augment.speed``) and
gain (``augment.gain_db``): what they do to a known signal, their range, determinism, and that
evaluation and the neutral settings are exactly unperturbed."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from nvidia.dali import fn, pipeline_def, types

from pipelines.bench.small import small_configs
from pipelines.config import AugmentConfig, FeatureConfig
from pipelines.graph import gain_draws, speed_draws
from pipelines.loader import build_loader
from pipelines.memory import memory_bound
from pipelines.signal import (
    RESAMPLE_LOBES,
    apply_gain,
    cut_windows,
    row_width,
    source,
    speed_windowing,
    train_lengths,
)

SR, SECONDS, TRACKS = 8000, 2.5, 13
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]  # DALI's cpu graph, and its gpu graph


def _spec(src: int, rate: int, preemphasis: float, k: int, **augment: object) -> SimpleNamespace:
    """The fields of a GraphSpec that the signal helpers read (DALI cpu, 1-s chunks)."""
    fc = FeatureConfig(
        sample_rate=rate, n_fft=256, hop_length=128, n_mels=32, n_mfcc=13, preemphasis=preemphasis
    )
    return SimpleNamespace(codec="pcm16", shards_rate=src, features=fc, framing=SimpleNamespace(chunk=rate),
                           device="cpu", loader=SimpleNamespace(chunks_per_track=k),
                           augment=AugmentConfig(**augment))  # type: ignore[arg-type]  # fmt: skip


def _run(pipe_fn, iterations: int = 1) -> list[list[np.ndarray]]:  # type: ignore[no-untyped-def]
    """The outputs of ``iterations`` runs of a one-sample DALI cpu pipeline (seeded)."""
    p = pipeline_def(batch_size=1, num_threads=1, device_id=None, exec_dynamic=True, seed=7)(pipe_fn)()
    p.build()
    return [[np.asarray(o.as_tensor())[0] for o in p.run()] for _ in range(iterations)]


def _speed_chunks(spec: SimpleNamespace, signal: np.ndarray, starts: list[int], width: int) -> np.ndarray:
    """The graph's training chunks ``(K, L)`` of ``signal`` at ``starts`` in rows of ``width``."""

    def pipe():  # type: ignore[no-untyped-def]
        audio = fn.external_source(source=lambda: [signal], batch=True, dtype=types.INT16)
        stored = source(spec, audio)
        w = fn.external_source(source=lambda: [np.array([float(width)])], batch=True, dtype=types.FLOAT64)
        vector = types.Constant(np.array(starts, np.int32), dtype=types.INT32, device="cpu")
        return cut_windows(spec, stored, *train_lengths(spec, stored), vector, w)

    return _run(pipe)[0][0]


@pytest.mark.parametrize(
    ("src", "rate", "preemphasis"),
    [(8000, 8000, 0.0), (16000, 22050, 0.0), (8000, 8000, 0.97), (16000, 22050, 0.97)],
)
@pytest.mark.parametrize("factor", [0.8, 1.0, 1.25])
def test_speed_factor_moves_a_sines_pitch_by_the_factor(
    src: int, rate: int, preemphasis: float, factor: float
):
    """A 440 Hz sine's chunks come out as a (440 x factor) Hz sine: their spectral peak moves by the
    factor, and every sample is the sine at the stored position the window geometry names."""
    f0, seconds = 440.0, 3
    t = np.arange(seconds * src)
    signal = np.round(np.sin(2 * np.pi * f0 * t / src) * 16000).astype(np.int16)
    spec = _spec(src, rate, preemphasis, k=3, speed=[0.8, 1.25])
    n_out = -(-signal.size * rate // src)
    sw = speed_windowing(spec)
    width = round(factor * sw.out_width * src / rate)
    factor = width * rate / (sw.out_width * src)  # in effect (within 1 / width of the asked one)
    starts = [0, 4321, n_out - int(np.ceil(rate * factor))]  # the last start the graph may draw
    got = _speed_chunks(spec, signal, starts, width)
    assert got.shape == (3, rate)
    window = np.hanning(rate)
    for row, start in zip(got, starts):
        spectrum = np.abs(np.fft.rfft(row * window))
        assert abs(np.argmax(spectrum) * rate / row.size - f0 * factor) <= 1.5  # 1-s chunks: 1 Hz bins
        first, _, offset, per_out = sw.window(start, signal.size, width)
        # the sine at each output sample's stored position (and the one before, for pre-emphasis)
        sine = (
            np.sin(2 * np.pi * f0 * (first + (offset + np.arange(-1, rate)) * per_out) / src) * 16000 / 32768
        )
        want = sine[1:] - preemphasis * (sine[:-1] if offset else np.r_[sine[1], sine[1:-1]])  # kaldi's clamp
        # at the sample's ends the resampler sees zeros where the sine would go on
        inner = slice(RESAMPLE_LOBES if start == 0 else 0, -RESAMPLE_LOBES if start == starts[-1] else None)
        # 4.5e-4 measured (16 -> 22.05 kHz: DALI's float32 positions); a chunk one output sample off: ~0.2
        assert float(np.abs(row - want)[inner].max()) <= 2e-3


def test_speed_windows_stay_inside_their_rows():
    spec = _spec(16000, 22050, 0.97, k=2, speed=[0.9, 1.5])
    sw = speed_windowing(spec)
    n_in = 10 * 16000
    for draw in (0.0, 0.5, 1 - 1e-9):
        width = sw.row_width(draw)
        assert width <= sw.max_window()
        extent = int(np.ceil(width / sw.out_width * sw.constants()["per_width"]))
        for start in (0, 5, 22050, 9 * 22050 - extent):
            first, stored, offset, per_out = sw.window(start, n_in, width)
            assert offset + 22050 <= sw.out_width and stored + sw.margin <= width
            # the chunk's support lies in the window (or the window reaches the sample's ends)
            assert first == 0 or first + offset * per_out - RESAMPLE_LOBES >= first
            end = first + (offset + 22050) * per_out + RESAMPLE_LOBES
            assert first + stored == n_in or end <= first + stored


def test_speed_draws_map_into_the_range_and_gain_scales_each_chunk_by_its_db():
    spec = _spec(8000, 8000, 0.0, k=5, speed=[0.7, 1.3], gain_db=6.0)
    sw = speed_windowing(spec)
    rows = np.random.default_rng(0).standard_normal((5, 400)).astype(np.float32)

    def pipe():  # type: ignore[no-untyped-def]
        x = fn.external_source(source=lambda: [rows], batch=True)
        g, s = gain_draws(spec), speed_draws(spec)
        return s, row_width(spec, s), g, apply_gain(spec, x, g)

    factors, draws = [], []
    for s, width, g, out in _run(pipe, 8):
        assert s.shape == (1,) and width[0] == sw.row_width(float(s[0]))  # the graph and its twin
        factors.append(float(width[0]) / sw.out_width)  # src = rate
        draws.append(g)
        rms_db = 20 * np.log10(np.sqrt((out**2).mean(axis=1)) / np.sqrt((rows**2).mean(axis=1)))
        np.testing.assert_allclose(rms_db, 6.0 * (2 * g - 1), atol=1e-4)
        assert g.shape == (5,) and np.all(np.abs(rms_db) <= 6.0)
    assert all(0.7 - 1e-3 <= f <= 1.3 + 1e-3 for f in factors) and np.ptp(factors) > 0.1
    assert np.ptp(np.concatenate(draws)) > 0.5  # chunks get different gains


@pytest.fixture
def shards(synth_shards):
    return synth_shards(tracks=TRACKS, seconds=SECONDS, sample_rate=SR, shard_size_mb=0.1)


def _epoch(
    shards, mode: str, *, seed: int = 0, features=None, device: str = "cpu", **augment: object
) -> list[dict]:  # type: ignore[no-untyped-def]
    fc, aug, lc = small_configs(seed=seed)
    loader = build_loader(
        shards, "train", mode=mode, features=features or fc, augment=dataclasses.replace(aug, **augment),
        loader=lc, device=device,
    )  # fmt: skip
    return [{k: v.cpu() for k, v in b.items()} for b in loader]


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b)
    )


@pytest.mark.parametrize("device", DEVICES)
def test_gain_shifts_each_chunks_mel_by_one_db_value_within_the_range(shards, device):
    """normalize 'none', dB mel: a chunk's gain of g dB moves its mel by g (above the floor)."""
    fc, _, _ = small_configs()
    features = dataclasses.replace(fc, normalize="none", channels=["mel"])
    off = _epoch(shards, "train", features=features, device=device, enabled=False)
    on = _epoch(shards, "train", features=features, device=device, enabled=False, gain_db=6.0)
    shifts = []
    for a, b in zip(off, on):
        assert torch.equal(a["start"], b["start"]) and b["x"].shape == a["x"].shape
        for mel_a, mel_b in zip(a["x"][:, 0], b["x"][:, 0]):
            loud = (mel_a > features.db_floor + 30) & (mel_b > features.db_floor + 30)
            d = (mel_b - mel_a)[loud]
            assert float(d.max() - d.min()) < 1e-2  # one gain per chunk
            shifts.append(float(d.mean()))
    assert all(abs(s) <= 6.0 + 1e-3 for s in shifts) and np.ptp(shifts) > 3.0


@pytest.mark.parametrize("device", DEVICES)
def test_speed_and_gain_are_deterministic_under_a_seed_and_change_training_batches(shards, device):
    kw = dict(speed=[0.8, 1.25], gain_db=6.0, device=device)
    first, again = _epoch(shards, "train", **kw), _epoch(shards, "train", **kw)
    assert _same(first, again)
    assert not _same(first, _epoch(shards, "train", seed=1, **kw))
    assert not _same(first, _epoch(shards, "train", device=device))
    assert first[0]["x"].shape == _epoch(shards, "train", device=device)[0]["x"].shape


def test_the_memory_bound_grows_with_the_highest_speed(shards):
    fc, aug, lc = small_configs()
    spec = build_loader(shards, "train", mode="train", features=fc, augment=aug, loader=lc).spec
    sizes = [memory_bound(dataclasses.replace(spec, augment=AugmentConfig(speed=s))).dali
             for s in ([1, 1], [0.9, 1.1], [0.9, 1.5], [0.5, 1.5])]  # fmt: skip
    assert sizes[0] < sizes[1] < sizes[2] < sizes[3]
    assert memory_bound(dataclasses.replace(spec, augment=AugmentConfig(gain_db=3.0))).dali > sizes[0]


@pytest.mark.parametrize("device", DEVICES)
def test_evaluation_is_never_perturbed(shards, device):
    plain = _epoch(shards, "eval", device=device)
    assert _same(plain, _epoch(shards, "eval", device=device, speed=[0.8, 1.25], gain_db=6.0))


def test_neutral_settings_are_exactly_off(shards):
    """speed [1, 1] and gain 0: the same graph (no extra operator) and bit-identical batches."""
    from pipelines.bench.graph_ops import graph_ops

    fc, aug, lc = small_configs()

    def ops(**augment: object) -> int:
        loader = build_loader(
            shards, "train", mode="train", features=fc, augment=dataclasses.replace(aug, **augment), loader=lc
        )
        return sum(graph_ops(loader.spec, loader.graph).values())  # fmt: skip

    neutral = ops(speed=[1, 1], gain_db=0.0)
    assert neutral == ops() < ops(speed=[1.0, 1.1]) and neutral < ops(gain_db=1.0)
    assert _same(_epoch(shards, "train"), _epoch(shards, "train", speed=[1.0, 1.0], gain_db=0.0))


@pytest.mark.gpu
def test_neutral_settings_are_exactly_off_on_the_gpu(shards):
    cuda = {"device": "cuda"}
    assert _same(
        _epoch(shards, "train", **cuda), _epoch(shards, "train", **cuda, speed=[1.0, 1.0], gain_db=0.0)
    )


def test_the_augmented_graph_does_not_grow_with_chunks_per_track(shards):
    from pipelines.bench.graph_ops import graph_ops

    counts = []
    for k in (2, 4):
        fc, aug, lc = small_configs(chunks_per_track=k, batch_size=2 * k)
        augment = dataclasses.replace(aug, speed=[0.9, 1.1], gain_db=3.0)
        loader = build_loader(shards, "train", mode="train", features=fc, augment=augment, loader=lc)
        counts.append(graph_ops(loader.spec, loader.graph))
    assert counts[0] == counts[1]


@pytest.mark.parametrize(
    ("kw", "message"),
    [({"speed": [1.2, 1.1]}, "augment.speed"), ({"speed": [0.0, 1.0]}, "augment.speed"),
     ({"speed": [1.0]}, "augment.speed"), ({"gain_db": -1.0}, "augment.gain_db")],
)  # fmt: skip
def test_bad_settings_are_refused(kw: dict, message: str):
    with pytest.raises(ValueError, match=message):
        AugmentConfig(**kw)  # type: ignore[arg-type]


def test_image_shards_warn_that_speed_and_gain_have_no_effect(synth_image_shards):
    images = synth_image_shards(tracks=24, seconds=3.0)
    features = FeatureConfig(n_mels=32, n_mfcc=8, image_frames=48, channels=["mel", "cqt", "chroma"])
    _, aug, lc = small_configs()
    for augment in (dataclasses.replace(aug, speed=[0.9, 1.1]), dataclasses.replace(aug, gain_db=3.0)):
        loader = build_loader(images, "train", mode="train", features=features, augment=augment, loader=lc)
        with pytest.warns(
            UserWarning, match=r"augment.speed / augment.gain_db have no effect on image shards"
        ):
            next(iter(loader))


def _train_losses(shards, out, extra: list[str]) -> tuple[list[float], object]:  # type: ignore[no-untyped-def]
    """A tiny customcnn run through ``Trainer`` (tests/test_train_e2e.py's settings): its losses."""
    from test_train_e2e import _train

    from train.logger import read_metrics

    trainer = _train(shards, out, ["train.epochs=2", "data.val_split=''", "optim.min_lr_ratio=1.0", *extra])
    return [r["train/loss"] for r in read_metrics(out) if "train/loss" in r], trainer


@pytest.mark.slow
def test_speed_and_gain_change_a_training_runs_losses_and_resume_exactly(synth_shards, tmp_path):
    import os
    import signal

    from test_train_e2e import _train

    single = synth_shards(task="single", tracks=24, seconds=3.0, sample_rate=8000)
    on = ["augment.speed=[0.8,1.25]", "augment.gain_db=6", "features.normalize=none"]
    off_losses, _ = _train_losses(single, tmp_path / "off", ["features.normalize=none"])
    on_losses, full = _train_losses(single, tmp_path / "on", on)
    assert len(on_losses) == len(off_losses) > 0 and on_losses != off_losses

    def preempt(trainer) -> None:  # type: ignore[no-untyped-def]
        if trainer.step == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    extra = ["train.epochs=2", "data.val_split=''", "optim.min_lr_ratio=1.0", *on]
    assert _train(single, tmp_path / "cut", extra, hooks=[preempt]).step == 1
    resumed = _train(single, tmp_path / "cut", extra)
    assert resumed.step == full.step  # type: ignore[attr-defined]
    for k, v in full.model.state_dict().items():  # type: ignore[attr-defined]
        assert torch.allclose(v.float(), resumed.model.state_dict()[k].float(), atol=1e-5), k
