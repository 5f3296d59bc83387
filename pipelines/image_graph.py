"""The DALI branch for image shards: read -> decode (nvJPEG) -> resize to (F, T) -> crop/masks.

Image samples carry a dataset's own spectrogram images (ccmusic's mel/cqt/chroma JPEGs,
a folder of PNGs), one member per channel. Each is decoded with ``fn.decoders.image``
(``device="mixed"``, i.e. nvJPEG, when the pipeline runs on the GPU; "cpu" otherwise) as
gray or RGB (``features.image_color``) and resized (linear, antialiased) to
``(F, T) = (features.n_mels, features.image_frames)``. Training takes K =
``loader.chunks_per_track`` random time crops per image (``augment.time_crop`` of the width,
the same window for every channel of a sample) and SpecAugment masks from the audio graph's
``masks``; evaluation takes each image once, whole. ``ImageLoader`` then stacks the planes into
the loader contract's ``(B, C, F, T)`` (C = channels x 1 or 3), normalised by the shared
``FeatureAssembler``, so every model family and the evaluator are unaware of the kind.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from nvidia.dali import fn, types

from pipelines.config import FeatureConfig, LoaderConfig, framing
from pipelines.graph import GraphSpec, masks, webdataset_reader
from pipelines.loader import MusicLoader, chunks_mask, labels_to_y, to_device
from pipelines.shard_checks import ShardError
from shards.manifest import Manifest


def image_frames(features: FeatureConfig, loader: LoaderConfig) -> int:
    """T of an image sample: ``features.image_frames``, else an audio chunk's frame count."""
    return features.image_frames or framing(features, loader).frames


def planes(features: FeatureConfig) -> int:
    """Planes per image channel: 1 for gray, 3 for RGB."""
    return 3 if features.image_color == "rgb" else 1


def output_names(spec: GraphSpec) -> list[str]:
    names: list[str] = list(spec.features.channels)
    if spec.mode == "train" and spec.augment.active:
        names.append("mask")
    return [*names, "lbl", "tid"]


def _crop_windows(spec: GraphSpec, k: int) -> list[tuple[Any, Any]]:
    """K relative ROIs ``([0, start], [1, start + crop])`` (y, x): a random time window per crop."""
    crop = spec.augment.time_crop
    zero = types.Constant(np.zeros(1, dtype=np.float32), device="cpu")
    one = types.Constant(np.ones(1, dtype=np.float32), device="cpu")
    out = []
    for _ in range(k):
        start = fn.random.uniform(range=[0.0, 1.0], shape=[1]) * (1.0 - crop)
        out.append((fn.cat(zero, start), fn.cat(one, start + crop)))
    return out


def _image_graph(spec: GraphSpec):  # type: ignore[no-untyped-def]
    train = spec.mode == "train"
    *images, lbl, tid = webdataset_reader(
        spec, spec.image_exts, [types.DALIDataType.UINT8] * len(spec.image_exts)
    )
    f, t, k = spec.features.n_mels, image_frames(spec.features, spec.loader), spec.loader.chunks_per_track
    color = types.DALIImageType.RGB if spec.features.image_color == "rgb" else types.DALIImageType.GRAY
    decoder_device = "mixed" if spec.device == "gpu" else "cpu"
    fy, fx, dtype = float(f), float(t), types.DALIDataType.FLOAT
    windows = _crop_windows(spec, k) if train else []
    outs: list[Any] = []
    for data in images:
        img = fn.decoders.image(data, device=decoder_device, output_type=color)
        if train:  # (K, F, T, planes): the same windows for every channel of the sample
            crops: list[Any] = [
                fn.resize(
                    img, resize_y=fy, resize_x=fx, dtype=dtype, roi_start=a, roi_end=b, roi_relative=True
                )
                for a, b in windows
            ]
            outs.append(fn.stack(*crops))
        else:  # (F, T, planes): the whole image once
            outs.append(fn.resize(img, resize_y=fy, resize_x=fx, dtype=dtype))
    if train and spec.augment.active:
        outs.append(masks(spec.augment, k, f, t, spec.device))
    return (*outs, lbl, tid)


class ImageLoader(MusicLoader):
    """``MusicLoader`` over image shards: the same iteration, length, state and output contract."""

    graph = staticmethod(_image_graph)

    @property
    def output_names(self) -> list[str]:
        return output_names(self.spec)

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """``(C, F, T)`` of one sample: C = channels x planes."""
        f = self.spec.features
        return len(f.channels) * planes(f), f.n_mels, image_frames(f, self.spec.loader)

    def _convert(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """One DALI batch -> ``{x (N, C, F, T), y, track}``; host-side bookkeeping as in MusicLoader."""
        tid = out["tid"][:, 0].to(torch.int64).cpu()
        keep = self._keep(tid)
        if not keep.any():
            return None
        names = self.spec.features.channels
        # kept samples' rows, copied once to DALI's device for every channel (None: all kept)
        idx = None if bool(keep.all()) else to_device(keep.nonzero().squeeze(1), out[names[0]].device)
        per = self.spec.loader.chunks_per_track if self.mode == "train" else 1
        chans = []
        for name in names:
            a = out[name]  # train (B, K, F, T, p), eval (B, F, T, p)
            if idx is not None:
                a = a.index_select(0, idx)
            a = a.reshape(-1, *a.shape[-3:])  # (N, F, T, p)
            chans += [a[..., j] for j in range(a.shape[-1])]
        mask = chunks_mask(out["mask"], keep) if "mask" in out else None
        x = self.assembler.stack(to_unit(chans, self.spec.features), mask)
        y = labels_to_y(out["lbl"].to(torch.int64).cpu()[keep], self.task).repeat_interleave(per, dim=0)
        track = tid[keep].repeat_interleave(per)
        return {
            "x": x.to(self.device, non_blocking=True),
            "y": to_device(y, self.device),
            "track": to_device(track, self.device),
        }


def to_unit(planes: list[torch.Tensor], features: FeatureConfig) -> list[torch.Tensor]:
    """Pixel values 0..255 -> [0, 1] before normalisation ('none', and the 'meanstd' statistics
    are in these units); skipped for 'minmax', which does not depend on the scale."""
    if features.normalize == "minmax":
        return planes
    return [p * (1.0 / 255.0) for p in planes]


def image_member_exts(m: Manifest, features: FeatureConfig) -> list[str]:
    """The reader's ext per requested channel; refuses channels the build does not have."""
    where = m.where
    missing = [c for c in features.channels if c not in m.images]
    if missing:
        raise ShardError(
            f"{where}: image build has channels {list(m.images)}, not {missing} (features.channels)"
        )
    if features.normalize == "meanstd" and features.image_color == "rgb":
        raise ShardError(
            f"{where}: features.normalize='meanstd' needs image_color='gray' (stats are per channel)"
        )
    return [";".join(m.images[c].exts) for c in features.channels]
