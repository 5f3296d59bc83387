"""A true constant-Q transform on the training device: ``librosa.cqt``'s definition, in torch.

Why: a constant-Q bin at C1 is 1.9 Hz wide, an FFT bin of a 2048-point STFT at 22.05 kHz is
10.8 Hz, so a filter bank on the STFT (``pseudo_cqt``) smears the lowest octaves (bass, kick,
chord roots) together. librosa's CQT (the features seed 001 trained on) is computed octave by
octave, from the top, and so is this one:

1. The top octave's bins are Hann-windowed complex exponentials of ``Q sr / f`` samples
   (``Q = filter_scale / alpha``, alpha the relative bandwidth of ``bins_per_octave`` bins),
   L1-normalised, centred in ``n_fft`` (the next power of two above the longest), FFT'd once.
2. Each frame's spectrum (``torch.stft``, window of ones, centred frames: frame t at sample
   ``t hop``, zero padding) times that basis (a complex matmul) is the octave's response.
3. The signal is low-passed and halved (:func:`halfband`), the hop halved, and the octave
   below uses the same-length filters at half the rate; responses are divided by
   ``sqrt(filter length)`` (librosa's ``scale=True``).

librosa halves with soxr; here a Kaiser-windowed sinc: both are flat far above the bins an octave
reads. Parity with ``librosa.cqt``: docs/pipeline.md ("The CQT"), tests/test_cqt.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from pipelines.channels import ChannelFn, ChannelInputs
    from pipelines.config import FeatureConfig

HANN_BANDWIDTH = 1.50018310546875  # librosa.filters.window_bandwidth("hann")
HALFBAND_TAPS = 11  # taps either side of the half-band low-pass (odd: the outermost is non-zero)
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
    the padded and halved signals, one octave's frames and spectrum, every octave's response."""
    frames = 1 + samples // p.hop
    n_fft = int(2.0 ** np.ceil(np.log2(p.lengths(p.sample_rate)[-p.bins_per_octave :].max())))
    if p.hop % 2 ** (p.octaves - 1):  # librosa's rule: no halving at an odd hop, longer filters below
        n_fft = int(2.0 ** np.ceil(np.log2(p.lengths(p.sample_rate).max())))
    octave = frames * (n_fft * 4 + (n_fft // 2 + 1) * 8)
    return 4 * samples * 4 + octave + 3 * p.bins * frames * 8


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

    Bases and the half-band filter's spectrum are built once per config, on ``device``."""

    def __init__(self, p: CqtParams, device: torch.device) -> None:
        check_params(p)
        self.p = p
        # per octave from the top: (basis, n_fft, hop, halve the signal first); as librosa, the
        # signal is halved below an octave only while the hop is even (else longer filters)
        self.bases: list[tuple[torch.Tensor, int, int, bool]] = []
        hop, halvings = p.hop, 0
        for octave in range(p.octaves):
            halve = octave > 0 and hop % 2 == 0
            if halve:
                hop, halvings = hop // 2, halvings + 1
            basis, n_fft = octave_basis(p, octave, halvings)
            self.bases.append((torch.from_numpy(basis).to(device), n_fft, hop, halve))
        # the half-band's centre and odd taps (the even ones are zero), times sqrt(2)
        self.taps = [float(v) * math.sqrt(2.0) for v in halfband()[HALFBAND_TAPS:]]
        self.inv_len = torch.from_numpy((1.0 / p.lengths(p.sample_rate)).astype(np.float32)).to(device)
        self.inv_len = self.inv_len.view(-1, 1)

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        lead, n = wave.shape[:-1], wave.shape[-1]
        y = wave.reshape(-1, n).float()
        frames = 1 + n // self.p.hop
        out = []
        for basis, n_fft, hop, halve in self.bases:
            if halve:
                y = self._halve(y)
            spec = torch.stft(
                y, n_fft, hop_length=hop, window=torch.ones(n_fft, device=y.device), center=True,
                pad_mode="constant", return_complex=True,
            )  # fmt: skip
            z = torch.matmul(basis, spec[..., :frames])  # (N, bins_in_octave, T) complex
            out.append(torch.view_as_real(z).square().sum(-1))
        power = torch.cat(out[::-1], dim=-2).mul_(self.inv_len)
        return power.reshape(*lead, self.p.bins, frames)

    def _halve(self, y: torch.Tensor) -> torch.Tensor:
        """``(N, n)`` -> ``(N, ceil(n / 2))``: low-passed by the half-band FIR, every other sample,
        times sqrt(2) (librosa's energy-preserving ``scale=True``); output sample m sits at input
        sample 2m, zeros beyond the ends. A half-band's even taps are zero but the centre, so
        the FIR is a few strided sums (no convolution kernel: 5x faster on the CPU)."""
        h, taps, m = self.taps, HALFBAND_TAPS, (y.shape[-1] + 1) // 2
        yp = torch.nn.functional.pad(y, (taps, taps))
        out = yp[:, taps : taps + 2 * m : 2] * h[0]
        for k in range(1, taps + 1, 2):
            pair = yp[:, taps - k : taps - k + 2 * m : 2] + yp[:, taps + k : taps + k + 2 * m : 2]
            out.add_(pair, alpha=h[k])
        return out


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
