"""A small synthetic music dataset in the ``folder`` layout, for the demo, tests and benchmarks.

Why synthetic: no dataset can be downloaded in CI, yet every stage (shards, DALI
features, training, eval) needs audio whose labels are *learnable* from a 6-second
chunk and *checkable* from the signal. Each track is a sum of stationary elements:

- genre (4 classes, ``GENRES``): a steady "lead" tone whose fundamental lies in a
  class-specific band (``GENRE_BANDS``) and is the strongest spectral peak of all the
  bands. ``class_of_signal`` recovers it: the band holding the largest FFT magnitude.
  Margins: other elements never put a steady tone inside a band; the strongest stray
  component in another band (a harmonic of the lead) is <= 0.5x the lead; bands lie
  below 3 kHz so they survive resampling to 16 kHz, MP3/OGG coding and int16.
- level3 variant (``VARIANTS``): ``plain`` = pure lead tone, ``rich`` = lead with 2nd
  and 3rd harmonics (a timbre difference visible in mel/MFCC).
- hierarchy (2 -> 4 -> 8): ``level1`` = ``MOODS[genre // 2]``, ``level2`` = genre,
  ``level3`` = ``f"{genre}_{variant}"``. Every vocabulary sorts alphabetically in class
  order, so the folder importer's sorted vocabularies give the same indices.
- tags (multi-label, ``TAGS``), each present with probability 1/2, each an audible
  element outside the genre bands: ``bass`` (55-110 Hz notes), ``chords`` (a soft triad
  at 290-400 Hz), ``drums`` (kick pulses 45-110 Hz), ``hats`` (high-passed noise
  bursts), ``melody`` (3.2-4.8 kHz notes), ``noise`` (a broadband noise bed).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import pandas as pd

from shards.base.atomic import atomic_path, atomic_write_text
from shards.base.progress import progress as progress_bar
from shards.builder.audio import write_blocks

if TYPE_CHECKING:
    from shards.base.tasks import TaskKind
    from shards.format.manifest import Codec

GENRES = ["ambient", "blues", "classical", "disco"]
GENRE_BANDS: list[tuple[float, float]] = [(180.0, 260.0), (420.0, 600.0), (950.0, 1350.0), (2100.0, 2900.0)]
MOODS = ["calm", "loud"]  # level1 parent of genre g is MOODS[g // 2]
VARIANTS = ["plain", "rich"]
TAGS = ["bass", "chords", "drums", "hats", "melody", "noise"]
FORMATS = ("mp3", "flac", "ogg", "wav")
SAMPLE_RATES = (16000, 22050, 44100)
CSV_NAME = "labels.csv"
_SF = {
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "wav": ("WAV", "PCM_16"),
}
LEAD_AMP = 0.35


def class_of_signal(x: np.ndarray, sr: int) -> int:
    """The genre index of a synthetic track or chunk: the band of ``GENRE_BANDS`` holding the
    largest FFT magnitude. ``x`` is (n,) or (n, channels), float or int16; ``sr`` its rate."""
    a = np.asarray(x)
    a = a.astype(np.float32) / 32768.0 if a.dtype == np.int16 else a.astype(np.float32)
    if a.ndim == 2:
        a = a.mean(axis=1)
    if a.ndim != 1 or a.size < 64:
        raise ValueError(f"class_of_signal: need a 1-D signal of >= 64 samples, got shape {np.shape(x)}")
    mag = np.abs(np.fft.rfft(a * np.hanning(a.size)))
    freqs = np.fft.rfftfreq(a.size, 1.0 / sr)
    peaks = [mag[(freqs >= lo) & (freqs <= hi)].max(initial=0.0) for lo, hi in GENRE_BANDS]
    return int(np.argmax(peaks))


def _tone(t: np.ndarray, f: float, phase: float = 0.0) -> np.ndarray:
    return np.sin(2 * np.pi * f * t + phase)


def _notes(t: np.ndarray, starts: np.ndarray, freqs: np.ndarray, length: float, sr: int) -> np.ndarray:
    """Sum of enveloped sine notes (vectorised: each sample belongs to at most one note)."""
    idx = np.searchsorted(starts, t, side="right") - 1
    ok = idx >= 0
    local = np.where(ok, t - starts[np.clip(idx, 0, None)], 0.0)
    env = np.where(ok & (local < length), np.sin(np.pi * np.clip(local / length, 0, 1)), 0.0)
    f = freqs[np.clip(idx, 0, None)]
    return env * np.sin(2 * np.pi * f * local)


def synth_track(
    genre: int, variant: int, tags: Sequence[str], seconds: float, sr: int, rng: np.random.Generator
) -> np.ndarray:
    """One mono track (n,) float32 peak-normalised to 0.9; see the module docstring for the rule."""
    n = int(round(seconds * sr))
    t = np.arange(n, dtype=np.float64) / sr
    lo, hi = GENRE_BANDS[genre]
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    f0 = rng.uniform(mid - 0.6 * half, mid + 0.6 * half)
    y = LEAD_AMP * _tone(t, f0, rng.uniform(0, 2 * np.pi))
    if variant == 1:
        for k, a in ((2, 0.5), (3, 0.3)):
            if k * f0 < 0.45 * sr:
                y += a * LEAD_AMP * _tone(t, k * f0, rng.uniform(0, 2 * np.pi))
    beat = 60.0 / rng.uniform(90, 150)
    beats = np.arange(0.0, seconds, beat)
    if "drums" in tags:
        local = (
            (t - beats[np.clip(np.searchsorted(beats, t, side="right") - 1, 0, None)]) if beats.size else t
        )
        sweep = 45 + 65 * np.exp(-local / 0.04)
        y += 0.5 * np.exp(-local / 0.12) * np.sin(2 * np.pi * np.cumsum(sweep) / sr)
    if "bass" in tags:
        y += 0.2 * _notes(t, beats, rng.uniform(55, 110, beats.size), beat * 0.9, sr)
    if "melody" in tags:
        starts = np.arange(0.0, seconds, beat / 2)
        y += 0.12 * _notes(t, starts, rng.uniform(3200, 4800, starts.size), beat / 2 * 0.8, sr)
    if "chords" in tags:
        base = rng.uniform(290, 310)
        y += 0.05 * sum(_tone(t, base * r, rng.uniform(0, 2 * np.pi)) for r in (1.0, 1.12, 1.26))
    if "hats" in tags:
        off = beats + beat / 2
        local = t - off[np.clip(np.searchsorted(off, t, side="right") - 1, 0, None)]
        hp = np.diff(np.diff(rng.standard_normal(n + 2)))
        y += 0.15 * np.where(local >= 0, np.exp(-local / 0.03), 0.0) * hp / 2.0
    if "noise" in tags:
        y += 0.05 * rng.standard_normal(n)
    y *= 0.9 / max(np.abs(y).max(), 1e-9)
    return y.astype(np.float32)


def _split_names(n: int) -> list[str]:
    """train/validation/test for n tracks: ~15% each for validation and test, at least 2 each."""
    if n < 6:
        raise ValueError(f"tracks: need at least 6 tracks (2 per split), got {n}")
    k = max(2, round(0.15 * n))
    return ["train"] * (n - 2 * k) + ["validation"] * k + ["test"] * k


def make_synth(
    out: str | Path,
    *,
    tracks: int = 48,
    seconds: float = 10.0,
    seed: int = 0,
    formats: Sequence[str] = FORMATS,
    sample_rates: Sequence[int] = SAMPLE_RATES,
    stereo: bool | None = None,
    progress: bool = False,
) -> Path:
    """Write a synthetic dataset: ``out/audio/NNNN.EXT`` plus ``out/labels.csv`` with columns
    ``path,label,tags,level1,level2,level3,split`` (the folder importer's layout).

    Track i has genre ``i % 4`` and variant ``(i // 4) % 2`` (balanced classes in every split);
    format and sample rate cycle over ``formats`` / ``sample_rates`` (independently of
    the genre), channels alternate mono/stereo in pairs (flipped every 8 tracks) (``stereo`` forces one). Returns the CSV path."""
    if seconds <= 0:
        raise ValueError(f"seconds: must be > 0, got {seconds}")
    bad = [f for f in formats if f not in _SF]
    if bad or not formats:
        raise ValueError(f"formats: {bad or formats} not in {list(_SF)}")
    out = Path(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits = _split_names(tracks)
    rows = []
    for i in progress_bar(range(tracks), desc="synth", unit="track", enabled=progress):
        genre, variant = i % len(GENRES), (i // len(GENRES)) % len(VARIANTS)
        tags = [tg for tg in TAGS if rng.random() < 0.5]
        fmt = formats[(i + i // len(GENRES)) % len(formats)]  # not tied to the genre
        sr = int(sample_rates[i % len(sample_rates)])
        two = ((i // 2 + i // 8) % 2 == 1) if stereo is None else stereo
        y = synth_track(genre, variant, tags, seconds, sr, rng)
        data = np.stack([y, 0.8 * y], axis=1) if two else y
        rel = f"audio/{i:04d}.{fmt}"
        major, sub = _SF[fmt]
        with atomic_path(out / rel) as tmp:
            write_blocks(tmp, data, sr, major, sub)  # one long OGG write segfaults libvorbis
        g = GENRES[genre]
        rows.append(
            dict(
                path=rel,
                label=g,
                tags=";".join(tags),
                level1=MOODS[genre // 2],
                level2=g,
                level3=f"{g}_{VARIANTS[variant]}",
                split=splits[i],
            )
        )
    csv = out / CSV_NAME
    atomic_write_text(csv, pd.DataFrame(rows).to_csv(index=False))
    return csv


def build_synth_shards(
    out: str | Path,
    *,
    task: str = "single",
    codec: str = "pcm16",
    tracks: int = 24,
    seconds: float = 8.0,
    sample_rate: int = 22050,
    seed: int = 0,
    shard_size_mb: float = 2.0,
    workers: int = 1,
    raw: str | Path | None = None,
    progress: bool = False,
) -> Path:
    """Synthesise a dataset and build its shards into ``out`` (the build folder, returned).

    The raw files go to ``raw`` when given (kept), else to a temporary folder (removed)."""
    from shards.builder.config import BuildConfig
    from shards.builder.driver import build

    tmp: Path | None = None
    if raw is not None:
        root = Path(raw)
    else:
        root = tmp = Path(tempfile.mkdtemp(prefix="musicstream-synth-"))
    try:
        make_synth(root, tracks=tracks, seconds=seconds, seed=seed, progress=progress)
        cfg = BuildConfig(
            source="folder",
            root=root,
            out=Path(out),
            task=cast("TaskKind", task),  # validated by BuildConfig
            codec=cast("Codec", codec),  # validated by BuildConfig
            sample_rate=sample_rate,
            seed=seed,
            shard_size_mb=shard_size_mb,
            workers=workers,
        )
        build(cfg, progress=progress)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return Path(out)
