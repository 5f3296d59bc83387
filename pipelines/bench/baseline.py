"""The loader a user would otherwise write: ``webdataset`` + torchaudio in a ``DataLoader``.

Same shards, same chunking rules, same features (``ReferenceFeatures`` + the shared
``FeatureAssembler``), same output dict, all computed on CPU workers. It is what
``python -m pipelines.bench`` measures DALI against.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soundfile as sf
import torch
import torchaudio
import webdataset as wds

from pipelines.bench.reference import (
    ReferenceFeatures,
    eval_chunks,
    preemphasize,
    random_chunks,
    spec_augment_mask,
)
from pipelines.config import AugmentConfig, FeatureConfig, LoaderConfig, framing
from pipelines.feature_stack import FeatureAssembler, stats_path
from pipelines.music_loader import labels_to_y
from pipelines.shard_checks import load_manifest, validate_split
from shards.base.distributed import resolve_rank
from shards.format import Manifest, member_layout


class _Featurize:
    """Per-worker feature stage (built lazily in each worker process)."""

    def __init__(
        self,
        manifest: Manifest,
        features: FeatureConfig,
        augment: AugmentConfig,
        loader: LoaderConfig,
        mode: str,
        seed: int,
    ) -> None:
        self.manifest, self.features, self.augment, self.loader_cfg, self.mode, self.seed = (
            manifest,
            features,
            augment,
            loader,
            mode,
            seed,
        )
        self.framing = framing(features, loader)
        self._ref: ReferenceFeatures | None = None
        self._asm: FeatureAssembler | None = None
        self._rng: np.random.Generator | None = None

    def _init(self) -> None:
        info = torch.utils.data.get_worker_info()
        wid = info.id if info is not None else 0
        self._rng = np.random.default_rng([self.seed, wid])
        self._ref = ReferenceFeatures(self.features)
        self._asm = FeatureAssembler(self.features, "cpu", stats_path(self.features, self.manifest.root))

    def __call__(self, sample: dict[str, Any]) -> dict[str, torch.Tensor]:
        if self._ref is None:
            self._init()
        assert self._ref is not None and self._asm is not None and self._rng is not None
        signal = preemphasize(self.decode(sample[self.manifest.audio_ext]), self.features.preemphasis)
        if self.mode == "train":
            chunks = random_chunks(signal, self.framing.chunk, self.loader_cfg.chunks_per_track, self._rng)
        else:
            chunks = eval_chunks(signal, self.framing.chunk)
        mask = None
        if self.mode == "train" and self.augment.active:
            a = self.augment
            mask = spec_augment_mask(
                chunks.shape[0],
                self.features.n_mels,
                self.framing.frames,
                freq_masks=a.freq_masks,
                freq_width=a.freq_width,
                time_masks=a.time_masks,
                time_width=a.time_width,
                rng=self._rng,
            )
        with torch.no_grad():
            mel_db, mfcc, power = self._ref(chunks)
            x = self._asm(mel_db, mfcc, power, mask, wave=chunks)
        lbl, tid = self.ids(sample)
        n = x.shape[0]
        return {"x": x, "lbl": lbl.expand(n, -1), "track": torch.full((n,), tid, dtype=torch.int64)}

    def ids(self, sample: dict[str, Any]) -> tuple[torch.Tensor, int]:
        """The sample's labels ``(label_width,)`` and track id, whichever members hold them
        (``shards.format.members``: ``ids`` from version 3, ``lbl`` + ``tid`` before)."""
        where = f"{sample.get('__url__')}: sample {sample.get('__key__')}"
        fields = member_layout(self.manifest).unpack(sample, where)
        return torch.from_numpy(fields["lbl"]), int(fields["tid"][0])

    def decode(self, data: bytes) -> torch.Tensor:
        """Audio bytes -> mono float32 at the feature rate."""
        if self.manifest.codec == "pcm16":
            x = torch.from_numpy(np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0)
            rate = self.manifest.sample_rate
        else:
            arr, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
            x = torch.from_numpy(arr.mean(axis=1))
        if rate != self.features.sample_rate:
            x = torchaudio.functional.resample(x, rate, self.features.sample_rate)
        return x


def _collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([s[k] for s in samples]) for k in ("x", "lbl", "track")}


class BaselineLoader:
    """Iterable of ``{x (B, C, F, T), y, track}`` like ``MusicLoader``; CPU workers compute everything.

    Sharding is by tar file (``urls[rank::world_size]``, then by worker), as users of
    webdataset usually do; it does not promise equal batch counts across ranks.
    """

    def __init__(
        self,
        shards: str | Path | Manifest,
        split: str,
        *,
        mode: Literal["train", "eval"],
        features: FeatureConfig,
        augment: AugmentConfig,
        loader: LoaderConfig,
        workers: int = 2,
        rank: int | None = None,
        world_size: int | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        r, w = resolve_rank(rank, world_size)
        self.manifest = load_manifest(shards)
        validate_split(self.manifest, split, features=features, loader=loader, world_size=1, train=False)
        tars, _ = self.manifest.paths(split)
        self.urls = [str(t) for t in tars][r::w]
        if not self.urls:
            raise ValueError(
                f"{self.manifest.root}: split {split!r} has {len(tars)} tars, fewer than {w} ranks"
            )
        self.mode, self.loader_cfg, self.workers = mode, loader, workers
        self.device = torch.device(device)
        self.featurize = _Featurize(self.manifest, features, augment, loader, mode, loader.seed * 1000 + r)
        self._dl: torch.utils.data.DataLoader | None = None

    def _dataset(self) -> wds.WebDataset:
        train = self.mode == "train"
        ds = wds.WebDataset(
            self.urls,
            shardshuffle=len(self.urls) if train else False,
            nodesplitter=None,
            workersplitter=wds.split_by_worker,
            seed=self.loader_cfg.seed,
            empty_check=False,
        )
        if train and self.loader_cfg.shuffle:
            ds = ds.shuffle(self.loader_cfg.initial_fill, seed=self.loader_cfg.seed)
        return ds.map(self.featurize)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        train = self.mode == "train"
        per = self.loader_cfg.tracks_per_batch if train else self.loader_cfg.eval_tracks_per_batch
        if self._dl is None:  # persistent workers: epochs do not pay for process start-up
            self._dl = torch.utils.data.DataLoader(
                self._dataset(),
                batch_size=None,
                num_workers=self.workers,
                persistent_workers=self.workers > 0,
                prefetch_factor=max(2, -(-per // self.workers)) if self.workers else None,
            )
        tracks: list[dict[str, torch.Tensor]] = []
        for sample in self._dl:  # batch in the main process: workers each hold only some tars
            tracks.append(sample)
            if len(tracks) == per:
                yield self._batch(tracks)
                tracks = []
        if tracks and not train:
            yield self._batch(tracks)

    def _batch(self, tracks: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        batch = _collate(tracks)
        return {
            "x": batch["x"].to(self.device, non_blocking=True),
            "y": labels_to_y(batch["lbl"], self.manifest.task).to(self.device),
            "track": batch["track"].to(self.device),
        }
