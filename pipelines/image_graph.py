"""The DALI branch for image shards: read -> decode (nvJPEG) -> resize -> crop/masks.

Image samples carry a dataset's own spectrogram images (ccmusic's mel/cqt/chroma JPEGs,
a folder of PNGs), one member per channel. Each is decoded with ``fn.decoders.image``
(``device="mixed"``, i.e. nvJPEG, when the pipeline runs on the GPU; "cpu" otherwise) as
gray or RGB (``features.image_color``) and resized once (linear, antialiased) to
``(F, T) = (features.n_mels, features.image_frames)`` in evaluation. Training resizes each
image once to ``(F, T / augment.time_crop)`` and takes K = ``loader.chunks_per_track`` random
crops of T columns from it (``augment.time_crop`` of the width; the same windows for every
channel of a sample), plus SpecAugment mask draws from the audio graph's ``mask_draws``; evaluation
takes each image once, whole. ``ImageLoader`` then stacks the planes into
the loader contract's ``(B, C, F, T)`` (C = channels x 1 or 3), normalised by the shared
``FeatureAssembler``, so every model family and the evaluator are unaware of the kind.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from nvidia.dali import fn, types
from nvidia.dali import math as dmath

from pipelines.config import FeatureConfig, LoaderConfig, framing
from pipelines.graph import GraphSpec, mask_draws, webdataset_reader
from pipelines.handoff import to_device
from pipelines.loader import MusicLoader, labels_to_y
from pipelines.shard_checks import ShardError
from pipelines.signal import speed_range
from shards.format import Manifest


def image_frames(features: FeatureConfig, loader: LoaderConfig) -> int:
    """T of an image sample: ``features.image_frames``, else an audio chunk's frame count."""
    return features.image_frames or framing(features, loader).frames


def planes(features: FeatureConfig) -> int:
    """Planes per image channel: 1 for gray, 3 for RGB."""
    return 3 if features.image_color == "rgb" else 1


def output_names(spec: GraphSpec) -> list[str]:
    names: list[str] = ["image"]
    if spec.mode == "train" and spec.augment.active:
        names.append("mask")
    return [*names, "lbl", "tid"]


def crop_width(spec: GraphSpec) -> int:
    """Width each channel image is resized to in training, so that a crop of T columns keeps
    ``augment.time_crop`` of the image (evaluation: T, the whole image)."""
    t = image_frames(spec.features, spec.loader)
    return max(t, round(t / spec.augment.time_crop)) if spec.mode == "train" else t


def _crop_starts(spec: GraphSpec, k: int, width: int, t: int) -> list[Any]:
    """K random column offsets (INT32 CPU nodes) of a T-wide crop in a ``width``-wide image."""
    room = float(width - t + 1)
    return [
        fn.cast(
            dmath.min(dmath.floor(fn.random.uniform(range=[0.0, 1.0], shape=[1]) * room), room - 1.0),
            dtype=types.DALIDataType.INT32,
        )  # fmt: skip
        for _ in range(k)
    ]


def _image_graph(spec: GraphSpec):  # type: ignore[no-untyped-def]
    """One resize per channel image (to ``(F, width)``), the channels' planes concatenated, then
    (training) K crops of T columns as slices of that one image: C resizes per sample instead
    of K x C. DALI resizes each sample of a batch to its own ROI and size, but a sample's channel
    images are separate tensors (their sizes may differ), so the C resizes remain."""
    train = spec.mode == "train"
    if train and (speed_range(spec) or spec.augment.gain_db > 0):
        warnings.warn(
            "augment.speed / augment.gain_db have no effect on image shards (they act on the waveform)",
            stacklevel=2,
        )
    *images, lbl, tid = webdataset_reader(
        spec, spec.image_exts, [types.DALIDataType.UINT8] * len(spec.image_exts)
    )
    f, t, k = spec.features.n_mels, image_frames(spec.features, spec.loader), spec.loader.chunks_per_track
    width = crop_width(spec)
    color = types.DALIImageType.RGB if spec.features.image_color == "rgb" else types.DALIImageType.GRAY
    decoder_device = "mixed" if spec.device == "gpu" else "cpu"
    planes_: list[Any] = [
        fn.resize(
            fn.decoders.image(data, device=decoder_device, output_type=color),
            resize_y=float(f),
            resize_x=float(width),
            dtype=types.DALIDataType.FLOAT,
        )  # fmt: skip
        for data in images
    ]
    image = fn.cat(*planes_, axis=2) if len(planes_) > 1 else planes_[0]  # (F, width, C x planes)
    outs: list[Any] = []
    if train:  # (K, F, T, C x planes): the same windows for every channel of the sample
        starts = _crop_starts(spec, k, width, t)
        outs.append(fn.stack(*[fn.slice(image, start=s, shape=[t], axes=[1]) for s in starts]))
        if spec.augment.active:
            outs.append(mask_draws(spec.augment, k))
    else:  # (F, T, C x planes): the whole image once
        outs.append(image)
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
        # kept samples' rows, copied once to DALI's device (None: all kept)
        idx = None if bool(keep.all()) else to_device(keep.nonzero().squeeze(1), out["image"].device)
        per = self.spec.loader.chunks_per_track if self.mode == "train" else 1
        a = out["image"]  # train (B, K, F, T, C x p), eval (B, F, T, C x p)
        if idx is not None:
            a = a.index_select(0, idx)
        a = a.reshape(-1, *a.shape[-3:])  # (N, F, T, C x p)
        chans = [a[..., j] for j in range(a.shape[-1])]
        mask = self._masks(out["mask"][keep].flatten(0, 1), out["image"].device) if "mask" in out else None
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


def image_member_exts(manifest: Manifest, features: FeatureConfig) -> list[str]:
    """The reader's ext per requested channel; refuses channels the build does not have."""
    where = manifest.where
    missing = [c for c in features.channels if c not in manifest.images]
    if missing:
        raise ShardError(
            f"{where}: image build has no {missing} image: set features.channels = {list(manifest.images)} "
            "(or some of them), or leave it unset to use the build's"
        )
    if features.normalize == "meanstd" and features.image_color == "rgb":
        raise ShardError(
            f"{where}: features.normalize='meanstd' needs image_color='gray' (stats are per channel)"
        )
    return [";".join(manifest.images[c].exts) for c in features.channels]
