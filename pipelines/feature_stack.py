"""The torch half of the features: the requested channels, channel stack, normalisation, masks.

Each channel is computed by its entry in the channel registry (``pipelines.channels``):
DALI 2.4 has no chroma, CQT or matrix-multiply operator, so DALI hands over the power
spectrogram and the filter banks are applied in torch, on the tensor DALI produced (on the
GPU in production, zero-copy). The same code assembles the reference and the baseline
features, so parity tests compare only what DALI computes (STFT, mel, dB, MFCC).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from pipelines.channels import ChannelInputs, full_fp32_matmuls, get_channel
from pipelines.config import AugmentConfig, FeatureConfig
from shards.base.config import to_dict
from shards.format import storage

STATS_FILE = "feature_stats.json"
CQT_DEFINITION = "librosa"
"""Marks a stats file whose ``cqt`` is the true CQT (``pipelines.cqt``); files written before it
hold the filter bank's numbers (now ``pseudo_cqt``) under ``cqt``."""
_EPS = 1e-8


def nearest_rows(rows: int, out: int) -> np.ndarray:
    """Source row of each of ``out`` rows under nearest-row resizing (``F.interpolate(mode="nearest")``)."""
    scale = np.float32(rows) / np.float32(out)
    return np.minimum(np.floor(np.arange(out, dtype=np.float32) * scale).astype(np.int64), rows - 1)


def load_stats(
    path: storage.Location, features: FeatureConfig, *, computed: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean/std ``(C,)`` for 'meanstd'; refuses stats made for other features.
    ``computed``: the channels are computed from audio (an image build's are its pictures)."""
    if not storage.exists(path):
        raise FileNotFoundError(f"{path}: no feature statistics (run `python -m pipelines.stats SHARDS`)")
    data = json.loads(storage.read_text(path))
    want = stats_key(features)
    if data.get("features") != want:
        raise ValueError(
            f"{path}: statistics were computed for other features {data.get('features')}, need {want}"
        )
    missing = [c for c in features.channels if c not in data["mean"]]
    if missing:  # e.g. pseudo_cqt, in a file written before it was registered
        raise ValueError(
            f"{path}: no statistics for channel(s) {missing}: rerun `python -m pipelines.stats SHARDS`"
        )
    if "cqt" in features.channels and computed and data.get("cqt") != CQT_DEFINITION:
        raise ValueError(  # an audio build's cqt is computed: its numbers must be the true CQT's
            f"{path}: the cqt statistics were computed before cqt became the true constant-Q "
            "transform (they describe pseudo_cqt): rerun `python -m pipelines.stats SHARDS`"
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
        ("cqt_bins_per_octave", 12),
        ("cqt_filter_scale", 1.0),
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
        self,
        features: FeatureConfig,
        device: torch.device | str = "cpu",
        stats: storage.Location | None = None,
        *,
        channels_last: bool = False,
        computed: bool = True,
    ):
        """``computed``: the channels are computed from DALI's audio outputs (False: an image
        build's pictures, only stacked; no filter bank or CQT kernel is built)."""
        self.cfg = features
        self.device = torch.device(device)
        # x is allocated in the layout the model consumes (no conversion copy per step)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # each requested channel's compute function, filter banks built once (pipelines.channels)
        names = features.channels if computed else []
        self.channels = {c: get_channel(c).build(features, self.device) for c in names}
        # channels computed from the chunks' samples (the CQT): their output is per chunk already
        self.per_chunk = frozenset(c for c in names if get_channel(c).needs == "wave")
        self._rows: dict[tuple[int, torch.device], torch.Tensor] = {}
        self.mean = self.std = None
        if features.normalize == "meanstd" and features.norm_mean is not None:
            assert features.norm_std is not None  # FeatureConfig checks they come together
            self.mean = torch.tensor(features.norm_mean, device=self.device).view(1, -1, 1, 1)
            self.std = torch.tensor(features.norm_std, device=self.device).view(1, -1, 1, 1)
        elif features.normalize == "meanstd":
            if stats is None:
                raise ValueError("features.normalize='meanstd' needs a stats file (features.stats_file)")
            mean, std = load_stats(stats, features, computed=computed)
            self.mean = mean.to(self.device).view(1, -1, 1, 1)
            self.std = std.clamp_min(_EPS).to(self.device).view(1, -1, 1, 1)

    def raw_channels(
        self,
        mel_db: torch.Tensor,
        mfcc: torch.Tensor | None,
        power: torch.Tensor | None,
        wave: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Each requested channel at its own height ``(..., rows, T)``, before resizing and
        normalisation. ``mfcc=None``: the orthonormal DCT-II of ``mel_db`` is computed here.
        ``wave (..., L)``: the chunks' samples, for channels computed from them (the CQT).
        The filter banks' matmuls run in full float32 even where TF32 is enabled globally."""
        inputs = ChannelInputs(mel_db=mel_db, power=power, mfcc=mfcc, wave=wave)
        with full_fp32_matmuls():
            return {name: fn(inputs) for name, fn in self.channels.items()}

    def __call__(
        self,
        mel_db: torch.Tensor,
        mfcc: torch.Tensor | None = None,
        power: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        wave: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-chunk inputs ``(N, rows, T)`` (``wave (N, L)``) -> ``x (N, C, F, T)``."""
        return self.stack(list(self.raw_channels(mel_db, mfcc, power, wave).values()), mask)

    def stack(self, chans: list[torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
        """Channels ``(*lead, rows_c, T)`` -> resized to F rows, stacked, normalised, masked ``(N, C, F, T)``.

        Everything before this step is frame-local, so the loader computes raw channels on a
        whole track's frames and passes (possibly strided) chunk views ``(B, K, rows, T)``.
        Normalisation is per chunk and channel and nearest-row resizing only repeats rows, so
        each channel is normalised at its own height and written once into the output
        (resized by a row gather): the same values as resizing, stacking and then normalising, in
        fewer passes over the big tensor. ``mask`` is ``(N, F, T)``. ``x`` is allocated in
        ``self.memory_format`` (channels-last for a channels-last model)."""
        *lead, _, t = chans[0].shape
        f, n_ch = self.cfg.n_mels, len(chans)
        n = 1
        for d in lead:
            n *= d
        x = torch.empty((n, n_ch, f, t), dtype=torch.float32, device=chans[0].device,
                        memory_format=self.memory_format)  # fmt: skip
        for i, c in enumerate(chans):
            c = self._normalize_channel(c, i)
            dst = x[:, i].view(*lead, f, t)  # a strided view in either layout
            if c.shape[-2] == f:
                dst.copy_(c)
            else:  # brought to the mel's height as the seeds' images were: nearest-row repetition
                dst.copy_(c.index_select(-2, self._nearest(c.shape[-2], c.device)))
        if mask is not None:
            x.mul_(mask.unsqueeze(1))
        return x

    def _nearest(self, rows: int, device: torch.device) -> torch.Tensor:
        key = (rows, device)
        if key not in self._rows:
            self._rows[key] = torch.from_numpy(nearest_rows(rows, self.cfg.n_mels)).to(device)
        return self._rows[key]

    def _normalize_channel(self, c: torch.Tensor, i: int) -> torch.Tensor:
        """Channel ``i`` ``(*lead, rows, T)`` normalised as the per-chunk recipe would (a new tensor)."""
        if self.cfg.normalize == "minmax":
            lo = c.amin(dim=(-2, -1), keepdim=True)
            hi = c.amax(dim=(-2, -1), keepdim=True)
            return (c - lo).div_((hi - lo).clamp_min(_EPS))
        if self.cfg.normalize == "meanstd":
            assert self.mean is not None and self.std is not None
            return (c - self.mean[0, i]).div_(self.std[0, i])
        return c


def masks_from_draws(draws: torch.Tensor, augment: AugmentConfig, f: int, t: int) -> torch.Tensor:
    """SpecAugment keep-masks ``(N, F, T)`` uint8 (1 keep, 0 masked) from the graph's draws
    ``(N, R, 2)`` (``pipelines.graph.mask_draws``): for each frequency band, then each time
    band, a width ``floor(u0 (width + 1))`` (at most the extent) and a start
    ``floor(u1 (extent - width + 1))``, in float32 as DALI drew them. A few whole-batch
    operations on the draws' device, where DALI spent some 30 operators per sample."""
    keep = []
    bands = ((augment.freq_masks, augment.freq_width, f), (augment.time_masks, augment.time_width, t))
    col = 0
    for count, width, extent in bands:
        d = draws[:, col : col + count].to(torch.float32)
        col += count
        width = min(width, extent)
        if count == 0 or width == 0:
            keep.append(torch.ones((draws.shape[0], extent), dtype=torch.bool, device=draws.device))
            continue
        w = torch.floor(d[..., 0] * (width + 1.0)).clamp_(max=float(width))
        start = torch.floor(d[..., 1] * (extent - w + 1.0))
        pos = torch.arange(extent, device=draws.device, dtype=torch.float32)
        hit = (pos >= start[..., None]) & (pos < (start + w)[..., None])  # (N, count, extent)
        keep.append(~hit.any(dim=1))
    return (keep[0][:, :, None] & keep[1][:, None, :]).to(torch.uint8)


def stats_path(features: FeatureConfig, shards_root: storage.Location | None) -> storage.Location | None:
    """Where 'meanstd' statistics are read from: the config's file or beside the manifest (a
    local folder or an object-store prefix)."""
    if features.stats_file is not None:
        return features.stats_file if storage.is_remote(features.stats_file) else Path(features.stats_file)
    return storage.join(shards_root, STATS_FILE) if shards_root is not None else None
