"""A synthetic *image* dataset: ``shards synth`` audio rendered to mel/CQT/chroma spectrogram JPEGs.

What a user with precomputed spectrograms (the seeds' route, ccmusic's ``eval`` config) has:
one image per channel and track, a ``labels.csv`` in the folder importer's image layout
(``path`` = the mel image, ``cqt``, ``chroma`` columns). The labels stay learnable: the
genre is the frequency band holding the most energy (``shards.bench.synth``), visible in every
channel. Images are rendered with the CPU reference features (low frequencies at the
bottom, as librosa's ``specshow`` draws them), scaled per image to 0..255.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from pipelines.bench.reference import ReferenceFeatures
from pipelines.config import FeatureConfig
from pipelines.feature_stack import FeatureAssembler
from shards.base.atomic import atomic_path, atomic_write_text
from shards.bench.synth import make_synth
from shards.builder.audio import decode, to_mono

# small, fast render settings (the images are the dataset: the pipeline resizes them anyway)
RENDER = FeatureConfig(n_fft=1024, hop_length=256, n_mels=64, n_mfcc=20, channels=["mel", "cqt", "chroma"])


def render(signal: np.ndarray, features: FeatureConfig = RENDER) -> dict[str, np.ndarray]:
    """Mono float32 at ``features.sample_rate`` -> one uint8 image ``(rows, frames)`` per channel."""
    ref, asm = ReferenceFeatures(features), FeatureAssembler(features, "cpu")
    with torch.no_grad():
        wave = torch.from_numpy(signal)[None]
        mel_db, mfcc, power = ref(wave)
        raw = asm.raw_channels(mel_db, mfcc, power, wave)
    out = {}
    for name, c in raw.items():
        a = c[0].numpy()
        a = (a - a.min()) / max(float(a.max() - a.min()), 1e-8)
        out[name] = np.flipud(np.rint(a * 255).astype(np.uint8))  # low frequencies at the bottom
    return out


def make_synth_images(out: str | Path, *, tracks: int = 24, seconds: float = 4.0, seed: int = 0) -> Path:
    """Write ``out/images/NNNN_{mel,cqt,chroma}.jpg`` and ``out/labels.csv``; returns the CSV path."""
    out = Path(out)
    audio = Path(tempfile.mkdtemp(prefix="musicstream-synth-audio-"))
    try:
        labels = pd.read_csv(make_synth(audio, tracks=tracks, seconds=seconds, seed=seed, formats=["wav"]))
        rows = []
        for i, r in labels.iterrows():
            x, sr = decode(audio / str(r["path"]))
            images = render(to_mono(x, sr, RENDER.sample_rate))
            cells = {}
            for name, img in images.items():
                rel = f"images/{i:04d}_{name}.jpg"
                with atomic_path(out / rel) as tmp:
                    Image.fromarray(img).save(tmp, format="JPEG", quality=90)
                cells[name] = rel
            row = {k: r[k] for k in ("label", "tags", "level1", "level2", "level3", "split")}
            rows.append({"path": cells["mel"], "cqt": cells["cqt"], "chroma": cells["chroma"], **row})
    finally:
        shutil.rmtree(audio, ignore_errors=True)
    csv = out / "labels.csv"
    atomic_write_text(csv, pd.DataFrame(rows).fillna("").to_csv(index=False))
    return csv


def build_synth_image_shards(
    out: str | Path,
    *,
    raw: str | Path,
    task: str = "single",
    tracks: int = 24,
    seconds: float = 4.0,
    seed: int = 0,
    workers: int = 1,
    progress: bool = False,
) -> Path:
    """Render a synthetic image dataset into ``raw`` and build its image shards into ``out``."""
    from shards.builder.config import BuildConfig
    from shards.builder.driver import build

    make_synth_images(raw, tracks=tracks, seconds=seconds, seed=seed)
    cfg = BuildConfig(source="folder", root=Path(raw), out=Path(out), task=task, seed=seed, workers=workers)  # type: ignore[arg-type]
    build(cfg, progress=progress)
    return Path(out)
