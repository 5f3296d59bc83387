"""A true constant-Q transform on the training device: ``librosa.cqt``'s definition, in torch.

Why: a constant-Q bin at C1 is 1.9 Hz wide, an FFT bin of a 2048-point STFT at 22.05 kHz is
10.8 Hz, so a filter bank on the STFT (``pseudo_cqt``) smears the lowest octaves (bass, kick,
chord roots) together. librosa's CQT (the features seed 001 trained on) is computed octave by
octave, from the top, and so is this one:

1. The top octave's bins are Hann-windowed complex exponentials of ``Q sr / f`` samples
   (``Q = filter_scale / alpha``, alpha the relative bandwidth of ``bins_per_octave`` bins),
   L1-normalised, centred in ``n_fft`` (the next power of two above the longest), FFT'd once.
2. Each frame's spectrum (window of ones, centred frames: frame t at sample ``t hop``, zero
   padding) times that basis is the octave's response; here the basis is turned into time-domain
   kernels once (:func:`time_kernels`, the same sums) and applied as a strided convolution.
3. The signal is low-passed and halved (:func:`halfband`), the hop halved, and the octave
   below uses the same-length filters at half the rate; responses are divided by
   ``sqrt(filter length)`` (librosa's ``scale=True``).

librosa halves with soxr; here a Kaiser-windowed half-band, applied in the frequency domain for
all octaves from one FFT (few, large kernels: the same code on the GPU and the CPU). Both
low-passes are flat far above the bins an octave reads. Parity with ``librosa.cqt``:
docs/pipeline.md ("The CQT"), tests/test_cqt.py.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from pipelines.channels import ChannelFn, ChannelInputs
    from pipelines.config import FeatureConfig

HANN_BANDWIDTH = 1.50018310546875  # librosa.filters.window_bandwidth("hann")
HALFBAND_TAPS = 11  # taps either side of the half-band low-pass
HALFBAND_BETA = 7.0  # its Kaiser window


@dataclass(frozen=True)
class CqtParams:
    """The transform's settings (from ``[features]``): bins, bins per octave, fmin, filter scale, hop, rate."""

    sample_rate: int
    hop: int
    bins: int
    bins_per_octave: int
    fmin: float
    filter_scale: float = 1.0

    @staticmethod
    def of(features: FeatureConfig) -> CqtParams:
        return CqtParams(
            sample_rate=features.sample_rate,
            hop=features.hop_length,
            bins=features.cqt_bins,
            bins_per_octave=features.cqt_bins_per_octave,
            fmin=features.cqt_fmin,
            filter_scale=features.cqt_filter_scale,
        )

    @property
    def freqs(self) -> np.ndarray:
        """Centre frequency of every bin, ascending (Hz)."""
        return self.fmin * 2.0 ** (np.arange(self.bins) / self.bins_per_octave)

    @property
    def octaves(self) -> int:
        return math.ceil(self.bins / self.bins_per_octave)

    def lengths(self, sr: float) -> np.ndarray:
        """Filter length of every bin in samples at rate ``sr`` (librosa's ``wavelet_lengths``)."""
        return self.q() * sr / self.freqs

    def q(self) -> np.ndarray:
        """Quality factor of every bin: ``filter_scale / alpha`` (librosa's relative bandwidth)."""
        logf = np.log2(self.freqs)
        if logf.size < 2:  # one bin: the equal-temperament bandwidth
            bpo = np.full(1, float(self.bins_per_octave))
        else:
            bpo = np.empty_like(logf)
            bpo[0] = 1 / (logf[1] - logf[0])
            bpo[-1] = 1 / (logf[-1] - logf[-2])
            bpo[1:-1] = 2 / (logf[2:] - logf[:-2])
        alpha = (2.0 ** (2 / bpo) - 1) / (2.0 ** (2 / bpo) + 1)
        return self.filter_scale / alpha

    def top_cutoff(self) -> float:
        """The highest frequency the top filter passes (Hz); must stay below Nyquist."""
        return float(np.max(self.freqs * (1 + 0.5 * HANN_BANDWIDTH / self.q())))


def workspace_bytes(p: CqtParams, samples: int) -> int:
    """torch's peak temporaries for the CQT of one chunk of ``samples`` (the device memory bound):
    the signal's spectrum and every level, one padded level, every octave's response."""
    frames = 1 + samples // p.hop
    return 5 * samples * 4 + p.octaves * frames * 3 * p.bins_per_octave * 4 + 2 * p.bins * frames * 4


def check_params(p: CqtParams) -> None:
    """``ValueError`` naming the field when the top bins would pass Nyquist."""
    if p.top_cutoff() > p.sample_rate / 2:
        raise ValueError(
            f"features.cqt_bins: {p.bins} bins from {p.fmin} Hz at {p.bins_per_octave} per octave reach "
            f"{p.top_cutoff():.0f} Hz, over the Nyquist frequency {p.sample_rate / 2:.0f} Hz"
        )


def octave_basis(p: CqtParams, octave: int, halvings: int) -> tuple[np.ndarray, int]:
    """``(bins_in_octave, n_fft//2+1)`` complex64 FFT basis of ``octave`` (0 = the top) at the
    rate the signal has after ``halvings``, and its n_fft."""
    top = p.bins - octave * p.bins_per_octave
    sel = slice(max(top - p.bins_per_octave, 0), top)
    sr = p.sample_rate / 2**halvings
    freqs, lengths = p.freqs[sel], p.lengths(sr)[sel]
    n_fft = int(2.0 ** np.ceil(np.log2(lengths.max())))
    basis = np.zeros((freqs.size, n_fft), dtype=np.complex128)
    for i, (n, f) in enumerate(zip(lengths, freqs)):
        t = np.arange(-n // 2, n // 2, dtype=np.float64)
        sig = np.exp(2j * np.pi * f / sr * t)
        w = np.floor(n)  # librosa's float window: a periodic Hann of floor(n), zero after
        k = np.arange(t.size)
        sig *= np.where(k < w, 0.5 - 0.5 * np.cos(2 * np.pi * k / w), 0.0)
        sig /= np.abs(sig).sum()
        left = (n_fft - t.size) // 2
        basis[i, left : left + t.size] = sig * n / n_fft
    fft = np.fft.fft(basis, axis=1)[:, : n_fft // 2 + 1]
    return (fft * np.sqrt(2.0**halvings)).astype(np.complex64), n_fft


def time_kernels(basis: np.ndarray, n_fft: int) -> np.ndarray:
    """An octave's FFT basis ``(bins, n_fft//2+1)`` as real convolution kernels ``(2 bins, 1, n_fft)``
    (real parts, then imaginary): ``sum_j B[j] FFT(frame)[j]`` over the kept bins is ``sum_n
    w[n] frame[n]`` with ``w[n] = sum_j B[j] exp(-2 pi i j n / n_fft)``, exactly. A strided
    convolution then reads each centred frame in place: no frames are materialised and no
    per-frame FFT runs (less CPU than frames + FFT + matmul, and one kernel per octave)."""
    j = np.arange(basis.shape[1])[:, None]
    n = np.arange(n_fft)[None, :]
    w = basis.astype(np.complex128) @ np.exp(-2j * np.pi * j * n / n_fft)
    return np.concatenate([w.real, w.imag])[:, None, :].astype(np.float32)


def halfband(taps: int = HALFBAND_TAPS, beta: float = HALFBAND_BETA) -> np.ndarray:
    """``(2 taps + 1,)`` low-pass for halving the rate: a Kaiser-windowed sinc cut at a quarter of
    the input rate (a half-band: every even tap but the centre is zero), unit gain at DC. It only
    has to keep what the octaves below read (< 0.1 of its input rate) and stop what would alias
    onto it (> 0.4): a short filter does."""
    n = np.arange(-taps, taps + 1, dtype=np.float64)
    h = 0.5 * np.sinc(0.5 * n) * np.kaiser(2 * taps + 1, beta)
    h[(n % 2 == 0) & (n != 0)] = 0.0
    return (h / h.sum()).astype(np.float32)


class ConstantQ:
    """``wave (..., L)`` float32 -> CQT power ``(..., bins, 1 + L // hop)`` (librosa's magnitude, squared).

    Kernels are built once per config, on ``device``; the low-pass responses once per signal length."""

    def __init__(self, p: CqtParams, device: torch.device) -> None:
        check_params(p)
        self.p = p
        # per octave from the top: (kernels, hop, halvings); as librosa, the signal is halved
        # below an octave only while the hop is even (else the octaves below get longer filters)
        self.octaves: list[tuple[torch.Tensor, int, int]] = []
        hop, halvings = p.hop, 0
        for octave in range(p.octaves):
            if octave > 0 and hop % 2 == 0:
                hop, halvings = hop // 2, halvings + 1
            self.octaves.append(
                (torch.from_numpy(time_kernels(*octave_basis(p, octave, halvings))).to(device), hop, halvings)
            )
        self.halvings = halvings
        self.inv_len = torch.from_numpy((1.0 / p.lengths(p.sample_rate)).astype(np.float32)).to(device)
        self.inv_len = self.inv_len.view(-1, 1)
        self._lowpass: dict[tuple[int, int], torch.Tensor] = {}

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        lead, n = wave.shape[:-1], wave.shape[-1]
        frames = 1 + n // self.p.hop
        levels = self._levels(wave.reshape(-1, n).float())
        blocks = []
        with ieee_convolutions(wave.device):
            for kernels, hop, level in reversed(self.octaves):  # lowest octave first
                n_fft, bins = kernels.shape[-1], kernels.shape[0] // 2
                # centred frames: zero padding of half a frame either side (librosa's center=True)
                x = levels[level].unsqueeze(1)
                z = torch.nn.functional.conv1d(x, kernels, stride=hop, padding=n_fft // 2)[..., :frames]
                blocks.append(z[:, :bins].square() + z[:, bins:].square())  # (N, bins, T)
        power = torch.cat(blocks, dim=-2).mul_(self.inv_len)
        return power.reshape(*lead, self.p.bins, frames)

    def _levels(self, y: torch.Tensor) -> list[torch.Tensor]:
        """``(N, n)`` -> the signal at each halving ``k`` (``ceil(n / 2^k)`` samples): one FFT,
        then per level the low-pass's response (the half-band FIR applied k times, as librosa
        filters and halves k times) and an inverse FFT at the lower rate, times ``2^(k/2)``
        (librosa's energy-preserving ``scale=True``). The zero padding exceeds the filters'
        support, so this is the FIR's linear convolution: sample m of level k sits at input
        sample ``m 2^k``, zeros beyond the ends."""
        levels, n, k_max = [y], y.shape[-1], self.halvings
        if k_max == 0:
            return levels
        step = 2**k_max
        m = step * fast_len(-(-(n + 2 * HALFBAND_TAPS * step) // step))
        spectrum = torch.fft.rfft(y, m)
        for k in range(1, k_max + 1):
            low = torch.fft.irfft(spectrum[:, : (m >> k) // 2 + 1] * self._response(k, m, y.device), m >> k)
            levels.append(low[:, : -(-n // 2**k)])
        return levels

    def _response(self, k: int, m: int, device: torch.device) -> torch.Tensor:
        """The k-fold half-band response at the ``(m >> k) // 2 + 1`` bins kept, with the scale
        (kept for the last few signal lengths: the loader's chunks have one, whole files many)."""
        if (k, m) not in self._lowpass:
            if len(self._lowpass) >= 4 * self.halvings:
                self._lowpass.clear()
            f = np.arange((m >> k) // 2 + 1) / m  # cycles per input sample
            taps = np.arange(-HALFBAND_TAPS, HALFBAND_TAPS + 1)
            h, response = halfband().astype(np.float64), np.ones(f.size)
            for i in range(k):  # the FIR's real, zero-phase response at the rate after i halvings
                response *= np.cos(2 * np.pi * np.outer(f * 2**i, taps)) @ h
            gain = 2 ** (k / 2) / 2**k  # scale=True, and the inverse FFT's 1/(m >> k)
            self._lowpass[k, m] = torch.from_numpy((response * gain).astype(np.float32)).to(device)
        return self._lowpass[k, m]


@contextlib.contextmanager
def ieee_convolutions(device: torch.device) -> Iterator[None]:
    """cuDNN convolutions in full float32 inside: its default (``torch.backends.cudnn.conv.
    fp32_precision == "tf32"``) rounds the inputs to 10 mantissa bits, which lifts the quiet bins
    beside a loud one by tens of dB. Set and restored through the current API (PyTorch >= 2.9),
    which also reads a setting made through the legacy ``allow_tf32``."""
    if device.type != "cuda":
        yield
        return
    conv = torch.backends.cudnn.conv  # type: ignore[attr-defined]  # set up at run time, not in the stubs
    previous = conv.fp32_precision
    conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision = previous


def fast_len(n: int) -> int:
    """The smallest ``2^a 3^b 5^c >= n``: a length the FFT handles at full speed."""
    best, p5 = 2 * n, 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p2 = p35
            while p2 < n:
                p2 *= 2
            best = min(best, p2)
            p35 *= 3
        p5 *= 5
    return best


def cqt_db(features: FeatureConfig, power: torch.Tensor) -> torch.Tensor:
    """CQT power -> dB, floored at ``features.db_floor`` (as the mel is); in place."""
    floor = 10.0 ** (features.db_floor / 10.0)
    return power.clamp_min_(floor).log10_().mul_(10.0)


def build_cqt(features: FeatureConfig, device: torch.device) -> ChannelFn:
    """The ``cqt`` channel: ``wave (..., L)`` -> dB ``(..., cqt_bins, 1 + L // hop)``."""
    transform = ConstantQ(CqtParams.of(features), device)

    def cqt(inp: ChannelInputs) -> torch.Tensor:
        return cqt_db(features, transform(inp.need_wave("cqt")))

    return cqt
