"""Synthesised music in the format FMA ships (MP3, 44.1 kHz stereo), decoded as a shard build does.

There is no real music on the machines this project is tested on and nothing may be downloaded,
so the CQT's parity with ``librosa.cqt`` (tests/test_cqt.py, docs/pipeline.md) and the README's
feature picture use these clips: a bass line (E1-E2, the octaves a pseudo-CQT smears), chords,
a melody with vibrato and drums (kick, snare, hi-hat) at a random tempo and key per seed, written
as MP3 by libsndfile and decoded back through ``shards.builder.audio`` (soundfile, mono, soxr).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from shards.builder.audio import decode, to_mono

RATE = 44100
PROGRESSIONS = ([0, 7, 9, 5], [0, 5, 7, 5], [9, 5, 0, 7], [0, 3, 5, 7])  # semitones above the key
MAJOR = np.array([0, 2, 4, 5, 7, 9, 11])


def midi_hz(note: np.ndarray | float) -> np.ndarray:
    return 440.0 * 2.0 ** ((np.asarray(note, dtype=np.float64) - 69) / 12)


def _tone(f: float, n: int, harmonics: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """A note of ``n`` samples: ``harmonics`` partials at 1/k, exponential decay (per second)."""
    t = np.arange(n) / RATE
    phase = rng.uniform(0, 2 * np.pi)
    x = sum(np.sin(2 * np.pi * f * k * t + phase * k) / k for k in range(1, harmonics + 1))
    attack = np.minimum(t / 0.01, 1.0)
    return np.asarray(x * attack * np.exp(-decay * t))


def _drums(n: int, beat: int, rng: np.random.Generator) -> np.ndarray:
    """Kick on beats 1 and 3, snare on 2 and 4, hi-hat on every eighth."""
    out = np.zeros(n)
    t = np.arange(int(0.4 * RATE)) / RATE
    kick = np.sin(2 * np.pi * (45 * t + 75 / 30 * (1 - np.exp(-30 * t)))) * np.exp(-9 * t)
    snare = (rng.standard_normal(t.size) * 0.5 + np.sin(2 * np.pi * 185 * t)) * np.exp(-18 * t)
    hat = np.diff(rng.standard_normal(t.size + 1)) * np.exp(-60 * t) * 0.15
    for i, start in enumerate(range(0, n, beat // 2)):
        for sound, on in ((kick, i % 8 in (0, 4)), (snare, i % 8 in (2, 6)), (hat, True)):
            if on:
                end = min(start + sound.size, n)
                out[start:end] += sound[: end - start]
    return out


def render(seconds: float, seed: int) -> np.ndarray:
    """``(n, 2)`` float32 stereo at 44.1 kHz: bass, chords, melody and drums, peak 0.9."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    beat = int(RATE * 60 / rng.uniform(80, 140))
    key = 36 + int(rng.integers(0, 12))  # C2..B2: the bass plays an octave lower (E1 and up)
    prog = PROGRESSIONS[seed % len(PROGRESSIONS)]
    bass, chords, melody = np.zeros(n), np.zeros(n), np.zeros(n)
    for bar, start in enumerate(range(0, n, 4 * beat)):
        root = key + prog[bar % 4]
        for b in range(8):  # eighth-note bass line: root, octave, fifth
            s = start + b * beat // 2
            if s < n:
                note = root - 12 + (0, 12, 7, 12)[b % 4]
                x = _tone(float(midi_hz(note)), min(beat // 2, n - s), 6, 4.0, rng)
                bass[s : s + x.size] += x
        third = 3 if prog[bar % 4] == 9 else 4
        for iv in (0, third, 7):
            x = _tone(float(midi_hz(root + 12 + iv)), min(4 * beat, n - start), 4, 0.8, rng)
            chords[start : start + x.size] += x
    s = 0
    while s < n:  # melody: scale notes of random length, with vibrato
        length = min(beat * int(rng.choice([1, 1, 2])) // 2, n - s)
        note = key + 24 + MAJOR[rng.integers(0, 7)] + 12 * int(rng.integers(0, 2))
        t = np.arange(length) / RATE
        f = midi_hz(note) * (1 + 0.004 * np.sin(2 * np.pi * 5.5 * t))
        melody[s : s + length] += (
            np.sin(2 * np.pi * np.cumsum(f) / RATE) * np.minimum(t / 0.02, 1) * np.exp(-2 * t)
        )
        s += length
    drums = _drums(n, beat, rng)
    left = 0.5 * bass + 0.18 * chords + 0.2 * melody + 0.45 * drums
    right = 0.5 * bass + 0.12 * chords + 0.3 * melody + 0.45 * drums
    x = np.stack([left, right], axis=1)
    return (0.9 * x / np.abs(x).max()).astype(np.float32)


def write_mp3(path: str | Path, seconds: float = 30.0, seed: int = 0) -> Path:
    """One clip as an MP3 file (libsndfile's LAME encoder, as FMA's files are MP3)."""
    path = Path(path)
    sf.write(path, render(seconds, seed), RATE, format="MP3", subtype="MPEG_LAYER_III")
    return path


def decoded(path: str | Path, sample_rate: int) -> np.ndarray:
    """The clip as a shard build stores it: decoded, mono, soxr-resampled to ``sample_rate``."""
    x, sr = decode(Path(path))
    return to_mono(x, sr, sample_rate)
