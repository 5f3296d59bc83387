"""A file's channels as one picture: time in seconds, frequency in Hz (note names for cqt/chroma).

For ``python -m pipelines.features``: users check what the model sees against the librosa
pictures they know, so each channel is drawn at its own height, before resizing and
normalisation, low frequencies at the bottom (matplotlib's Agg backend: no display needed).
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipelines.config import FeatureConfig  # noqa: E402
from shards.base.atomic import atomic_path  # noqa: E402

NOTES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
Axis = tuple[list[float], list[str], str]
"""Row ticks, their labels, the axis title."""


def note_name(hz: float) -> str:
    """``C1``, ``A4``...: the nearest equal-tempered note (A4 = 440 Hz)."""
    midi = int(round(69 + 12 * np.log2(hz / 440.0)))
    return f"{NOTES[midi % 12]}{midi // 12 - 1}"


def mel_hz(features: FeatureConfig) -> np.ndarray:
    """Centre frequency of each mel row (the filter bank's scale: slaney or htk)."""
    if features.mel_formula == "htk":
        to_mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
        to_hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    else:  # slaney: linear to 1 kHz (3 mels per 200 Hz), logarithmic above
        step, log_step = 200.0 / 3, np.log(6.4) / 27.0
        to_mel = lambda f: np.where(f < 1000, f / step, 15 + np.log(np.maximum(f, 1e-9) / 1000) / log_step)  # noqa: E731
        to_hz = lambda m: np.where(m < 15, m * step, 1000 * np.exp((m - 15) * log_step))  # noqa: E731
    lo, hi = to_mel(np.float64(features.f_min)), to_mel(np.float64(features.mel_fmax))
    return np.asarray(to_hz(np.linspace(lo, hi, features.n_mels + 2)[1:-1]))


def row_axis(name: str, features: FeatureConfig, rows: int) -> Axis:
    """How to label a channel's rows: Hz for the mel, note names for the CQTs (every C) and
    chroma, coefficient numbers for the MFCC, row numbers for any other registered channel."""
    if name in ("cqt", "pseudo_cqt"):
        per_octave = features.cqt_bins_per_octave if name == "cqt" else 12
        hz = features.cqt_fmin * 2.0 ** (np.arange(rows) / per_octave)
        ticks = [i for i in range(rows) if note_name(hz[i]).startswith("C") and "#" not in note_name(hz[i])]
        return [float(i) for i in ticks], [f"{note_name(hz[i])} {hz[i]:.0f} Hz" for i in ticks], "note"
    if name == "chroma" and rows == 12:
        return [float(i) for i in range(12)], list(NOTES), "pitch class"
    if name == "mel":
        hz = mel_hz(features)
        at = np.linspace(0, rows - 1, 6).round().astype(int)
        return [float(i) for i in at], [f"{hz[i]:.0f}" for i in at], "Hz"
    return [], [], "coefficient" if name == "mfcc" else "row"


def plot_channels(
    channels: dict[str, np.ndarray], features: FeatureConfig, path: Path, title: str, dpi: int = 72
) -> Path:
    """One panel per channel ``(rows, frames)``, stacked; written atomically as PNG."""
    seconds = max(next(iter(channels.values())).shape[1] - 1, 1) * features.hop_length / features.sample_rate
    fig, axes = plt.subplots(
        len(channels), 1, figsize=(9, 2.1 * len(channels)), squeeze=False, layout="constrained"
    )
    for ax, (name, c) in zip(axes[:, 0], channels.items()):
        lo, hi = np.percentile(c, [5, 99.5])  # robust colours: the MFCC's c0 would wash the rest out
        extent = (0, seconds, -0.5, c.shape[0] - 0.5)
        im = ax.imshow(c, origin="lower", aspect="auto", cmap="magma", extent=extent, vmin=lo, vmax=hi)
        ticks, labels, unit = row_axis(name, features, c.shape[0])
        if ticks:
            ax.set_yticks(ticks, labels, fontsize=7)
        ax.set_ylabel(unit, fontsize=8)
        ax.set_title(f"{name} ({c.shape[0]} rows)", fontsize=9, loc="left")
        fig.colorbar(im, ax=ax, pad=0.01).ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("time (s)")
    fig.suptitle(title, fontsize=10)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    data = buf.getvalue()
    with atomic_path(path, what=f"picture {path.name}", need=len(data)) as tmp:
        tmp.write_bytes(data)
    return path
