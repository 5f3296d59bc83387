"""Ground truth for pipeline tests, read straight from the tars.

Ground truth is read straight from the tar members with ``tarfile`` (not via DALI or
webdataset), so the loader is checked against an independent path.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio

from pipelines.config import FeatureConfig
from shards.format.manifest import Manifest, read_manifest
from shards.format.members import member_layout


@dataclass
class Track:
    tid: int
    signal: np.ndarray  # float32 mono at the manifest's rate (pcm16 builds only)
    label: np.ndarray  # int64 (label_width,)


def read_members(shards: str | Path | Manifest, split: str) -> dict[int, dict[str, bytes]]:
    """Every sample's members ``{ext: bytes}`` of a split, read with ``tarfile``, by sample id
    (the first segment field; the track id where samples are whole tracks)."""
    return {sample: parts for sample, (parts, _) in _read_samples(shards, split).items()}


def read_ids(shards: str | Path | Manifest, split: str) -> dict[int, dict[str, np.ndarray]]:
    """Every sample's int64 fields ``{"tid", "lbl"(, "seg")}`` of a split, by sample id, whichever
    members hold them (``ids`` from version 3, ``lbl``/``tid``/``seg`` before)."""
    return {sample: ids for sample, (_, ids) in _read_samples(shards, split).items()}


def tar_samples(tar: str | Path) -> dict[str, dict[str, bytes]]:
    """A tar's samples ``key -> {ext: bytes}``, in the tar's order."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar) as tf:
        for info in tf.getmembers():
            key, ext = info.name.split(".", 1)
            f = tf.extractfile(info)
            assert f is not None
            samples.setdefault(key, {})[ext] = f.read()
    return samples


def _read_samples(
    shards: str | Path | Manifest, split: str
) -> dict[int, tuple[dict[str, bytes], dict[str, np.ndarray]]]:
    manifest = shards if isinstance(shards, Manifest) else read_manifest(shards)
    layout = member_layout(manifest)
    tars, _ = manifest.paths(split)
    out: dict[int, tuple[dict[str, bytes], dict[str, np.ndarray]]] = {}
    for tar in tars:
        for key, parts in tar_samples(tar).items():
            ids = layout.unpack(parts, f"{tar}: sample {key}")
            out[int(ids.get("seg", ids["tid"])[0])] = (parts, ids)
    return out


def read_tracks(shards: str | Path | Manifest, split: str) -> dict[int, Track]:
    """Every track of a pcm16 split by track id, read with ``tarfile``; the segments of a
    long track (version 2 on) are put back together in segment order."""
    pieces: dict[int, list[tuple[int, np.ndarray | None]]] = {}
    labels: dict[int, np.ndarray] = {}
    for parts, ids in _read_samples(shards, split).values():
        tid = int(ids["tid"][0])
        index = int(ids["seg"][1]) if "seg" in ids else 0
        sig = (
            np.frombuffer(parts["pcm"], dtype="<i2").astype(np.float32) / 32768.0 if "pcm" in parts else None
        )
        pieces.setdefault(tid, []).append((index, sig))
        labels[tid] = ids["lbl"]
    out: dict[int, Track] = {}
    for tid, segs in pieces.items():
        segs.sort(key=lambda p: p[0])
        assert [i for i, _ in segs] == list(range(len(segs))), f"track {tid}: segments {segs}"
        sigs = [s for _, s in segs]
        signal: np.ndarray | None = None if sigs[0] is None else np.concatenate(sigs)  # type: ignore[arg-type]
        out[tid] = Track(tid, signal, labels[tid])  # type: ignore[arg-type]
    return out


def mel_centres(features: FeatureConfig) -> np.ndarray:
    """Centre frequency (Hz) of each mel row."""
    fb = torchaudio.functional.melscale_fbanks(
        features.n_freqs,
        features.f_min,
        features.mel_fmax,
        features.n_mels,
        features.sample_rate,
        "slaney",
        "slaney",
    )
    freqs = torch.linspace(0, features.sample_rate / 2, features.n_freqs)
    return freqs[fb.argmax(dim=0)].numpy()
