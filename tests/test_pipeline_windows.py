"""Training chunks cut on the CPU as windows before the device (``pipelines.signal``): the chunk
cut from a resampled, pre-emphasised window equals the chunk cut from the whole processed sample."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from nvidia.dali import fn, pipeline_def, types

from pipelines.config import FeatureConfig
from pipelines.signal import (
    RESAMPLE_LOBES,
    Windowing,
    cut_windows,
    length_of,
    on_device,
    source,
    train_lengths,
)


def _spec(src: int, rate: int, chunk: int, preemphasis: float, k: int = 1) -> SimpleNamespace:
    """The fields of a GraphSpec that the signal helpers read (DALI cpu)."""
    fc = FeatureConfig(
        sample_rate=rate, n_fft=256, hop_length=128, n_mels=32, n_mfcc=13, preemphasis=preemphasis
    )
    return SimpleNamespace(codec="pcm16", shards_rate=src, features=fc, framing=SimpleNamespace(chunk=chunk),
                           device="cpu", loader=SimpleNamespace(chunks_per_track=k))  # fmt: skip


def _chunks(spec: SimpleNamespace, signal: np.ndarray, starts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(windowed chunks (K, L), the same chunks cut from the whole processed sample (K, L))."""
    L = spec.framing.chunk

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, exec_dynamic=True)
    def pipe():  # type: ignore[no-untyped-def]
        audio = fn.external_source(source=lambda: [signal], batch=True, dtype=types.INT16)
        stored = source(spec, audio)
        nodes = [types.Constant(np.array([s], np.int32), device="cpu") for s in starts]
        whole = on_device(spec, stored)
        ref = [fn.slice(whole, start=n, shape=[L], axes=[0], out_of_bounds_policy="pad") for n in nodes]
        vector = types.Constant(np.array(starts, np.int32), dtype=types.INT32, device="cpu")
        windows = cut_windows(spec, stored, *train_lengths(spec, stored), vector)
        return windows, fn.stack(*ref), length_of(whole)

    p = pipe()
    p.build()
    got, want, n = (np.asarray(o.as_tensor())[0] for o in p.run())
    assert all(s <= max(int(n[0]) - L, 0) for s in starts)  # starts as the graph draws them
    return got, want


@pytest.mark.parametrize(
    ("src", "rate", "preemphasis", "atol"),
    [(8000, 8000, 0.0, 0.0), (8000, 8000, 0.97, 0.0), (16000, 8000, 0.97, 0.0), (16000, 22050, 0.0, 2e-3),
     (16000, 22050, 0.97, 2e-3)],
)  # fmt: skip
def test_windowed_chunks_equal_chunks_of_the_whole_sample(
    src: int, rate: int, preemphasis: float, atol: float
):
    """Starts at the sample's first sample, inside, and at the last position; the ratio 22050/16000
    is not an integer, so window starts must fall on the resampler's phase (period 320)."""
    rng = np.random.default_rng(0)
    signal = (rng.standard_normal(3 * src) * 6000).astype(np.int16)
    chunk = rate  # 1 s
    n_out = -(-signal.size * rate // src)
    starts = [0, 1, 4321 % (n_out - chunk), n_out - chunk - 1, n_out - chunk]
    got, want = _chunks(_spec(src, rate, chunk, preemphasis, len(starts)), signal, starts)
    assert got.shape == want.shape == (len(starts), chunk)
    # integer ratios: bitwise equal; 22050/16000: DALI's float32 phase accumulation differs per
    # block of 1024 outputs (7e-4 of full scale measured; misaligned windows would be off by ~0.5)
    scale = float(np.abs(want).max())
    if src == rate:
        assert float(np.abs(got - want).max()) <= atol * scale
    else:  # the sample's last output: the whole-sample resampler stops at the border, a window row
        # sums zeros past it (measured 4e-9 absolute, 16 -> 8 kHz; every other sample bitwise equal)
        assert float(np.abs(got - want)[:, :-1].max()) <= atol * scale
        assert float(np.abs(got - want)[-1, -1]) <= max(atol, 1e-7) * scale


def test_a_sample_shorter_than_a_chunk_is_zero_padded():
    rng = np.random.default_rng(1)
    signal = (rng.standard_normal(5000) * 6000).astype(np.int16)  # 0.31 s at 16 kHz, 1-s chunks
    got, want = _chunks(_spec(16000, 22050, 22050, 0.97), signal, [0])
    assert float(np.abs(got - want).max()) <= 2e-3 * float(np.abs(want).max())
    assert not got[0, -22050 // 2 :].any()  # past the sample's end: zeros


@pytest.mark.parametrize(("src", "rate"), [(16000, 22050), (44100, 22050), (22050, 22050), (48000, 16000)])
def test_window_geometry(src: int, rate: int):
    """The plain-int twin of the graph's arithmetic: windows start on the resampler's phase, cover
    the chunk plus the filter's support, stop at the sample's ends, and stay within max_window."""
    w = Windowing(src, rate, 6 * rate, preemphasis=True)
    n_in = 30 * src
    n_out = -(-n_in * rate // src)
    for start in [0, 1, 17, 12345, n_out // 2, n_out - 6 * rate]:
        a, length, offset = w.window(start, n_in)
        assert 0 <= a and a + length <= n_in and length <= w.max_window()
        assert a % w.period == 0 and a * rate % src == 0 and offset == start - a * rate // src
        lo, hi = start * src / rate, (start + 6 * rate) * src / rate  # the chunk, in stored samples
        need = RESAMPLE_LOBES if w.resampling else 0
        assert a == 0 or a <= lo - need - 1
        assert a + length == n_in or a + length >= hi + need
