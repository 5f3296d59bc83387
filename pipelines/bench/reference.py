"""CPU reference of the DALI features with torchaudio: the parity yardstick and the
baseline's feature extractor.

Per chunk: centred, zero-padded STFT with a periodic Hann window (power 2), Slaney (or HTK) mel
filter bank with Slaney normalisation (or none: ``mel_norm``), pre-emphasis when set, dB with an absolute reference of 1.0 and a floor,
orthonormal DCT-II MFCC of the dB mel. Chroma/CQT/normalisation/masks are the shared
``FeatureAssembler``, so the reference differs from DALI only where DALI computes.
"""

from __future__ import annotations

import numpy as np
import torch
import torchaudio

from pipelines.config import FeatureConfig


class ReferenceFeatures(torch.nn.Module):
    """``chunks (N, L)`` float32 -> ``mel_db (N, n_mels, T)``, ``mfcc (N, n_mfcc, T)``, ``power (N, n_fft/2+1, T)``."""

    dct: torch.Tensor  # registered buffer (n_mfcc, n_mels)

    def __init__(self, features: FeatureConfig) -> None:
        super().__init__()
        self.floor = 10.0 ** (features.db_floor / 10.0)
        self.spec = torchaudio.transforms.Spectrogram(
            n_fft=features.n_fft,
            hop_length=features.hop_length,
            win_length=features.window,
            window_fn=torch.hann_window,
            power=2.0,
            center=True,
            pad_mode="constant",
        )
        self.mel = torchaudio.transforms.MelScale(
            n_mels=features.n_mels,
            sample_rate=features.sample_rate,
            f_min=features.f_min,
            f_max=features.mel_fmax,
            n_stft=features.n_freqs,
            norm="slaney" if features.mel_norm else None,
            mel_scale=features.mel_formula,
        )
        self.register_buffer(
            "dct", torchaudio.functional.create_dct(features.n_mfcc, features.n_mels, "ortho")
        )

    def forward(self, chunks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        power = self.spec(chunks)
        mel_db = 10.0 * torch.log10(self.mel(power).clamp_min(self.floor))
        mfcc = torch.matmul(mel_db.transpose(1, 2), self.dct).transpose(1, 2)
        return mel_db, mfcc, power


def preemphasize(signal: torch.Tensor, coeff: float) -> torch.Tensor:
    """``y[t] = x[t] - coeff x[t-1]``, ``y[0] = (1 - coeff) x[0]`` (DALI's border "clamp"); 0 = unchanged."""
    if not coeff:
        return signal
    out = signal.clone()
    out[1:] -= coeff * signal[:-1]
    out[:1] -= coeff * signal[:1]
    return out


def eval_chunks(signal: torch.Tensor, chunk: int) -> torch.Tensor:
    """Consecutive chunks covering ``signal (S,)``, the last zero-padded: ``(ceil(S/L), L)``."""
    n = max(1, -(-signal.numel() // chunk))
    out = torch.zeros(n * chunk, dtype=torch.float32)
    out[: signal.numel()] = signal
    return out.view(n, chunk)


def random_chunks(signal: torch.Tensor, chunk: int, k: int, rng: np.random.Generator) -> torch.Tensor:
    """``k`` random chunks ``(k, L)``; a track shorter than a chunk is zero-padded."""
    room = max(signal.numel() - chunk, 0)
    out = torch.zeros(k, chunk, dtype=torch.float32)
    for i, start in enumerate(rng.integers(0, room + 1, size=k)):
        piece = signal[start : start + chunk]
        out[i, : piece.numel()] = piece
    return out


def spec_augment_mask(
    k: int,
    f: int,
    t: int,
    *,
    freq_masks: int,
    freq_width: int,
    time_masks: int,
    time_width: int,
    rng: np.random.Generator,
) -> torch.Tensor:
    """``(k, f, t)`` uint8 keep-mask with the DALI graph's distribution of bands."""
    mask = torch.ones(k, f, t, dtype=torch.uint8)
    for i in range(k):
        for _ in range(freq_masks):
            w = int(rng.integers(0, min(freq_width, f) + 1))
            s = int(rng.integers(0, f - w + 1))
            mask[i, s : s + w, :] = 0
        for _ in range(time_masks):
            w = int(rng.integers(0, min(time_width, t) + 1))
            s = int(rng.integers(0, t - w + 1))
            mask[i, :, s : s + w] = 0
    return mask
