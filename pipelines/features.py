"""The torch half of the features: chroma/CQT filter banks, channel stack, normalisation, masks.

DALI 2.4 has no chroma, CQT or matrix-multiply operator, so DALI hands over the power
spectrogram and these filter banks are applied here, on the tensor DALI produced (on the
GPU in production, zero-copy). The same code assembles the reference and the baseline
features, so parity tests compare only what DALI computes (STFT, mel, dB, MFCC).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from pipelines.config import FeatureConfig
from shards.configtools import to_dict

STATS_FILE = "feature_stats.json"
_EPS = 1e-8


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


def nearest_rows(rows: int, out: int) -> np.ndarray:
    """Source row of each of ``out`` rows under nearest-row resizing (``F.interpolate(mode="nearest")``)."""
    scale = np.float32(rows) / np.float32(out)
    return np.minimum(np.floor(np.arange(out, dtype=np.float32) * scale).astype(np.int64), rows - 1)


def cqt_filterbank(sample_rate: int, n_fft: int, bins: int, fmin: float) -> np.ndarray:
    """``(bins, n_fft//2+1)`` pseudo-CQT: triangles 12 per octave from fmin on the power spectrum.

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


def load_stats(path: Path, features: FeatureConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean/std ``(C,)`` for 'meanstd'; refuses stats made for other features."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no feature statistics (run `python -m pipelines.stats SHARDS`)")
    data = json.loads(path.read_text())
    want = stats_key(features)
    if data.get("features") != want:
        raise ValueError(
            f"{path}: statistics were computed for other features {data.get('features')}, need {want}"
        )
    mean = torch.tensor([data["mean"][c] for c in features.channels], dtype=torch.float32)
    std = torch.tensor([data["std"][c] for c in features.channels], dtype=torch.float32)
    return mean, std


def stats_key(features: FeatureConfig) -> dict:
    """The feature settings statistics depend on (not the channel order or normalisation)."""
    d = to_dict(features)
    for k in ("channels", "normalize", "stats_file", "preset", "norm_mean", "norm_std"):
        d.pop(k, None)
    for k, default in (
        ("win_length", None),
        ("mel_formula", "slaney"),
        ("mel_norm", True),
        ("preemphasis", 0.0),
    ):
        if d.get(k) == default:  # keys added later: statistics written before them stay valid
            d.pop(k, None)
    return d


class FeatureAssembler:
    """Turn DALI's (or the reference's) per-chunk outputs into the model input ``(N, C, F, T)``.

    Inputs, N chunks of T frames: ``mel_db (N, n_mels, T)``, ``mfcc (N, n_mfcc, T)`` (None:
    computed here from the dB mel), ``power (N, n_fft//2+1, T)`` (only when chroma/cqt are
    requested), ``mask (N, F, T)`` (1 keep / 0 masked, training only). Any of them may be a
    strided view (the loader passes DALI's frame-major outputs transposed). Masks are applied
    after normalisation so a masked cell is 0 whatever the channel's scale.
    """

    def __init__(
        self, features: FeatureConfig, device: torch.device | str = "cpu", stats: Path | None = None
    ):
        self.cfg = features
        self.device = torch.device(device)
        fc, ff = features, features.n_fft
        self.chroma_fb = torch.from_numpy(chroma_filterbank(fc.sample_rate, ff, fc.n_chroma)).to(self.device)
        self.cqt_fb = torch.from_numpy(cqt_filterbank(fc.sample_rate, ff, fc.cqt_bins, fc.cqt_fmin)).to(
            self.device
        )
        self.dct = torch.from_numpy(dct_matrix(fc.n_mfcc, fc.n_mels)).to(self.device)
        self._rows: dict[tuple[int, torch.device], torch.Tensor] = {}
        self.mean = self.std = None
        if features.normalize == "meanstd" and features.norm_mean is not None:
            assert features.norm_std is not None  # FeatureConfig checks they come together
            self.mean = torch.tensor(features.norm_mean, device=self.device).view(1, -1, 1, 1)
            self.std = torch.tensor(features.norm_std, device=self.device).view(1, -1, 1, 1)
        elif features.normalize == "meanstd":
            if stats is None:
                raise ValueError("features.normalize='meanstd' needs a stats file (features.stats_file)")
            mean, std = load_stats(stats, features)
            self.mean = mean.to(self.device).view(1, -1, 1, 1)
            self.std = std.clamp_min(_EPS).to(self.device).view(1, -1, 1, 1)
        self.floor = 10.0 ** (features.db_floor / 10.0)

    def raw_channels(
        self, mel_db: torch.Tensor, mfcc: torch.Tensor | None, power: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """Each requested channel at its own height ``(..., rows, T)``, before resizing and
        normalisation. ``mfcc=None``: the orthonormal DCT-II of ``mel_db`` is computed here."""
        out: dict[str, torch.Tensor] = {}
        for name in self.cfg.channels:
            if name == "mel":
                out[name] = mel_db
            elif name == "mfcc":
                out[name] = mfcc if mfcc is not None else torch.matmul(self.dct, mel_db)
            elif name == "chroma":
                assert power is not None
                chroma = torch.matmul(self.chroma_fb, power)
                out[name] = chroma.div_(chroma.amax(dim=-2, keepdim=True).clamp_min(_EPS))
            else:
                assert power is not None
                cqt = torch.matmul(self.cqt_fb, power)
                out[name] = cqt.clamp_min_(self.floor).log10_().mul_(10.0)
        return out

    def __call__(
        self,
        mel_db: torch.Tensor,
        mfcc: torch.Tensor | None = None,
        power: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-chunk inputs ``(N, rows, T)`` -> ``x (N, C, F, T)``."""
        return self.stack(list(self.raw_channels(mel_db, mfcc, power).values()), mask)

    def stack(self, chans: list[torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
        """Channels ``(*lead, rows_c, T)`` -> resized to F rows, stacked, normalised, masked ``(N, C, F, T)``.

        Everything before this step is frame-local, so the loader computes raw channels on a
        whole track's frames and passes (possibly strided) chunk views ``(B, K, rows, T)``.
        Normalisation is per chunk and channel and nearest-row resizing only repeats rows, so
        each channel is normalised at its own height and written once into the output
        (resized by a row gather): the same values as resizing, stacking and then calling
        :meth:`normalize`, in fewer passes over the big tensor. ``mask`` is ``(N, F, T)``."""
        *lead, _, t = chans[0].shape
        f, n_ch = self.cfg.n_mels, len(chans)
        x = torch.empty((*lead, n_ch, f, t), dtype=torch.float32, device=chans[0].device)
        for i, c in enumerate(chans):
            c = self._normalize_channel(c, i)
            dst = x[..., i, :, :]
            if c.shape[-2] == f:
                dst.copy_(c)
            else:  # brought to the mel's height as the seeds' images were: nearest-row repetition
                dst.copy_(c.index_select(-2, self._nearest(c.shape[-2], c.device)))
        x = x.view(-1, n_ch, f, t)
        if mask is not None:
            x.mul_(mask.unsqueeze(1))
        return x

    def _nearest(self, rows: int, device: torch.device) -> torch.Tensor:
        key = (rows, device)
        if key not in self._rows:
            self._rows[key] = torch.from_numpy(nearest_rows(rows, self.cfg.n_mels)).to(device)
        return self._rows[key]

    def _normalize_channel(self, c: torch.Tensor, i: int) -> torch.Tensor:
        """Channel ``i`` ``(*lead, rows, T)`` normalised as :meth:`normalize` would (a new tensor)."""
        if self.cfg.normalize == "minmax":
            lo = c.amin(dim=(-2, -1), keepdim=True)
            hi = c.amax(dim=(-2, -1), keepdim=True)
            return (c - lo).div_((hi - lo).clamp_min(_EPS))
        if self.cfg.normalize == "meanstd":
            assert self.mean is not None and self.std is not None
            return (c - self.mean[0, i]).div_(self.std[0, i])
        return c

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """In place: per-chunk, per-channel min-max to [0, 1], dataset mean/std, or nothing."""
        if self.cfg.normalize == "minmax":
            lo = x.amin(dim=(2, 3), keepdim=True)
            hi = x.amax(dim=(2, 3), keepdim=True)
            x.sub_(lo).div_((hi - lo).clamp_min(_EPS))
        elif self.cfg.normalize == "meanstd":
            assert self.mean is not None and self.std is not None  # set by __init__ for meanstd
            x.sub_(self.mean).div_(self.std)
        return x


def stats_path(features: FeatureConfig, shards_root: Path | None) -> Path | None:
    """Where 'meanstd' statistics are read from: the config's file or beside the manifest."""
    if features.stats_file is not None:
        return Path(features.stats_file)
    return shards_root / STATS_FILE if shards_root is not None else None
