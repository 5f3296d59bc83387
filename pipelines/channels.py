"""The channel registry: each feature channel's name, which DALI output it is computed
from, and how (a builder that makes its filter banks once per feature config).

``features.channels`` may name any registered channel; a new channel is one
``register_channel(Channel(...))`` call in its own module (no branch to edit), and the
pipeline hands over DALI's power spectrogram (or the chunks' samples) only when some
requested channel needs it. Built in: mel (DALI's dB mel), mfcc (DCT-II of it), chroma and
pseudo_cqt (filter banks on the power spectrum, applied in torch: DALI 2.4 has neither
operator), and cqt (librosa's constant-Q transform of the samples: ``pipelines.cqt``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from pipelines.cqt import build_cqt
from shards.base.registry import Registry

if TYPE_CHECKING:
    from pipelines.config import FeatureConfig

DaliOutput = Literal["mel", "power", "wave"]
_EPS = 1e-8


@dataclass(frozen=True)
class ChannelInputs:
    """What DALI (or the reference) hands over for N chunks (or whole tracks) of T frames:
    ``mel_db (..., n_mels, T)``, ``power (..., n_fft//2+1, T)`` (None unless a requested
    channel needs it), ``mfcc (..., n_mfcc, T)`` when the producer computed it (the
    reference), else None. Any of them may be a strided view. ``wave (..., L)``: the chunks'
    samples at the feature rate (None unless a channel needs them); frame t of a chunk is
    centred on its sample ``t * hop``, so a channel computed from them is ``(..., rows, T)``
    per chunk (the others are frame-major over a sample's whole layout: the loader cuts those)."""

    mel_db: torch.Tensor
    power: torch.Tensor | None = None
    mfcc: torch.Tensor | None = None
    wave: torch.Tensor | None = None

    def need_power(self, channel: str) -> torch.Tensor:
        if self.power is None:
            raise ValueError(f"channel {channel!r} needs the power spectrogram, which was not handed over")
        return self.power

    def need_wave(self, channel: str) -> torch.Tensor:
        if self.wave is None:
            raise ValueError(f"channel {channel!r} needs the chunks' samples, which were not handed over")
        return self.wave


ChannelFn = Callable[[ChannelInputs], torch.Tensor]
"""inputs -> the channel at its own height ``(..., rows, T)`` (before resizing/normalising)."""


@dataclass(frozen=True)
class Channel:
    """One feature channel: ``build(features, device)`` returns its ``ChannelFn``."""

    name: str
    needs: DaliOutput
    """The DALI output it is computed from: ``mel`` (dB mel), ``power`` (power spectrogram) or
    ``wave`` (the chunks' samples)."""
    build: Callable[[FeatureConfig, torch.device], ChannelFn]


CHANNELS: Registry[Channel] = Registry(
    "feature channel",
    unknown=lambda name, known: f"features.channels: unknown channel {name!r}; registered: {known}",
)
get_channel = CHANNELS.get


def register_channel(channel: Channel) -> Channel:
    """Make ``channel.name`` valid in ``features.channels``."""
    return CHANNELS.register(channel.name, channel)


# The float32 matmul settings that can lower the filter banks' precision, read and written through
# PyTorch's per-backend API (torch >= 2.9). Its getters never raise; the legacy getter
# (``torch.get_float32_matmul_precision``) raises once the per-backend API has set what the legacy
# one cannot express, e.g. after ``torch.backends.fp32_precision = "tf32"``.
_MATMUL_BACKENDS = ("cuda", "mkldnn")
_REDUCED = frozenset({"tf32", "bf16"})


@contextlib.contextmanager
def full_fp32_matmuls() -> Iterator[None]:
    """Matmuls in full float32 inside, whatever precision the user set globally.

    TF32 (``torch.backends.fp32_precision = "tf32"``, ``torch.backends.cuda.matmul.fp32_precision``,
    or the legacy ``allow_tf32 = True`` / ``set_float32_matmul_precision("high")``, common for
    training speed) would turn the filter banks' matmuls into TF32 on the GPU: its 10-bit mantissa
    moves the MFCC (values span +-1600) by more than the parity tolerance. Each backend's matmul
    setting is saved, set to "ieee" and restored to the same value (so the legacy getters read what
    they read before); the setting is read when a kernel is launched, so it is restored right after."""
    saved = {b: getattr(torch.backends, b).matmul.fp32_precision for b in _MATMUL_BACKENDS}
    reduced = {b: v for b, v in saved.items() if v in _REDUCED}
    if not reduced:
        yield
        return
    for backend in reduced:
        getattr(torch.backends, backend).matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        for backend, value in reduced.items():
            getattr(torch.backends, backend).matmul.fp32_precision = value


def channel_names() -> tuple[str, ...]:
    """Every registered channel, built-ins first, in registration order."""
    return tuple(CHANNELS.names())


def chroma_filterbank(sample_rate: int, n_fft: int, n_chroma: int = 12) -> np.ndarray:
    """``(n_chroma, n_fft//2+1)`` weights mapping FFT bins to pitch classes (C = 0).

    Like librosa's: a Gaussian of one chroma bin width around each bin's pitch class,
    columns L2-normalised, DC bin ignored.
    """
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)[1:]
    pitch = n_chroma * np.log2(freqs / 440.0) + 9.0 * n_chroma / 12.0  # A4 is class 9 of 12
    classes = np.arange(n_chroma)[:, None]
    d = np.remainder(pitch[None, :] - classes + n_chroma / 2, n_chroma) - n_chroma / 2
    w = np.exp(-0.5 * (2.0 * d) ** 2)
    w /= np.linalg.norm(w, axis=0, keepdims=True) + _EPS
    return np.concatenate([np.zeros((n_chroma, 1)), w], axis=1).astype(np.float32)


def dct_matrix(n_mfcc: int, n_mels: int) -> np.ndarray:
    """``(n_mfcc, n_mels)`` orthonormal DCT-II (what ``fn.mfcc(dct_type=2, normalize=True)`` and
    ``torchaudio.functional.create_dct(norm="ortho")`` apply): ``mfcc = D @ mel_db``."""
    n = np.arange(n_mels, dtype=np.float64)
    k = np.arange(n_mfcc, dtype=np.float64)[:, None]
    d = np.cos(np.pi / n_mels * (n + 0.5) * k) * np.sqrt(2.0 / n_mels)
    d[0] *= np.sqrt(0.5)
    return d.astype(np.float32)


def cqt_filterbank(sample_rate: int, n_fft: int, bins: int, fmin: float) -> np.ndarray:
    """``(bins, n_fft//2+1)`` pseudo-CQT: triangles 12 per octave from fmin on the power spectrum
    (the ``pseudo_cqt`` channel; below a few hundred Hz its rows share FFT bins: ``cqt`` is exact).

    Bins above Nyquist or narrower than one FFT bin fall back to the nearest FFT bin, so
    no row is empty.
    """
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    centres = fmin * 2.0 ** (np.arange(-1, bins + 1) / 12.0)
    w = np.zeros((bins, freqs.size), dtype=np.float64)
    for i in range(bins):
        lo, c, hi = centres[i], centres[i + 1], centres[i + 2]
        up = (freqs - lo) / (c - lo)
        down = (hi - freqs) / (hi - c)
        w[i] = np.maximum(0.0, np.minimum(up, down))
        if w[i].sum() == 0:
            w[i, min(int(round(min(c, freqs[-1]) * n_fft / sample_rate)), freqs.size - 1)] = 1.0
    w /= w.sum(axis=1, keepdims=True)
    return w.astype(np.float32)


def _mel(features: FeatureConfig, device: torch.device) -> ChannelFn:
    return lambda inp: inp.mel_db


def _mfcc(features: FeatureConfig, device: torch.device) -> ChannelFn:
    dct = torch.from_numpy(dct_matrix(features.n_mfcc, features.n_mels)).to(device)
    return lambda inp: inp.mfcc if inp.mfcc is not None else torch.matmul(dct, inp.mel_db)


def _chroma(features: FeatureConfig, device: torch.device) -> ChannelFn:
    fb = torch.from_numpy(chroma_filterbank(features.sample_rate, features.n_fft, features.n_chroma)).to(
        device
    )

    def chroma(inp: ChannelInputs) -> torch.Tensor:
        c = torch.matmul(fb, inp.need_power("chroma"))
        return c.div_(c.amax(dim=-2, keepdim=True).clamp_min(_EPS))

    return chroma


def _pseudo_cqt(features: FeatureConfig, device: torch.device) -> ChannelFn:
    fb = torch.from_numpy(
        cqt_filterbank(features.sample_rate, features.n_fft, features.cqt_bins, features.cqt_fmin)
    ).to(device)
    floor = 10.0 ** (features.db_floor / 10.0)
    return lambda inp: torch.matmul(fb, inp.need_power("pseudo_cqt")).clamp_min_(floor).log10_().mul_(10.0)


register_channel(Channel(name="mel", needs="mel", build=_mel))
register_channel(Channel(name="mfcc", needs="mel", build=_mfcc))
register_channel(Channel(name="chroma", needs="power", build=_chroma))
register_channel(Channel(name="cqt", needs="wave", build=build_cqt))
register_channel(Channel(name="pseudo_cqt", needs="power", build=_pseudo_cqt))
