"""The image loader a user would otherwise write: webdataset + PIL + torchvision in a DataLoader.

Decode with PIL (``convert("L")`` or ``"RGB"``), resize with torchvision (bilinear,
antialiased) to ``(F, T)``, random time crops and SpecAugment masks in training, the
shared ``FeatureAssembler`` for the channel stack and normalisation. It is both the
reference the DALI image branch is checked against (``reference_image``) and the
baseline ``python -m pipelines.bench`` measures it against on image shards.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

from pipelines.bench.baseline import BaselineLoader, _Featurize
from pipelines.bench.reference import spec_augment_mask
from pipelines.image_graph import image_frames, to_unit


def decode_image(data: bytes, color: str) -> torch.Tensor:
    """Image bytes -> uint8 ``(planes, H, W)`` with PIL (gray: ITU-R 601 luma, PIL's ``"L"``)."""
    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im.convert("RGB" if color == "rgb" else "L"))
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def reference_image(
    data: bytes, size: tuple[int, int], color: str, window: tuple[float, float] = (0.0, 1.0)
) -> torch.Tensor:
    """float32 ``(planes, F, T)`` in 0..255: the part ``window`` (relative start, end) of the
    image's width, resized with torchvision's antialiased bilinear filter to ``size``."""
    img = decode_image(data, color)
    w = img.shape[-1]
    left = int(round(window[0] * w))
    width = max(1, int(round((window[1] - window[0]) * w)))
    out = tvf.resized_crop(
        img.float(), 0, left, img.shape[-2], width, list(size), InterpolationMode.BILINEAR, antialias=True
    )
    return out


class _ImageFeaturize(_Featurize):
    """Per-worker stage: one image sample -> ``{x (K, C, F, T), lbl, track}``."""

    @property
    def size(self) -> tuple[int, int]:
        return self.features.n_mels, image_frames(self.features, self.loader_cfg)

    def _member(self, sample: dict[str, Any], channel: str) -> bytes:
        for ext in self.manifest.images[channel].exts:
            if ext in sample:
                return sample[ext]
        raise KeyError(f"{sample.get('__url__')}: sample {sample.get('__key__')} has no {channel} image")

    def __call__(self, sample: dict[str, Any]) -> dict[str, torch.Tensor]:
        if self._asm is None:
            self._init()
        assert self._rng is not None and self._asm is not None
        train = self.mode == "train"
        k = self.loader_cfg.chunks_per_track if train else 1
        crop = self.augment.time_crop if train else 1.0
        starts = self._rng.random(k) * (1.0 - crop) if train else np.zeros(1)
        planes: list[torch.Tensor] = []
        for ch in self.features.channels:
            data = self._member(sample, ch)
            crops = torch.stack(
                [reference_image(data, self.size, self.features.image_color, (s, s + crop)) for s in starts]
            )
            planes += [crops[:, j] for j in range(crops.shape[1])]  # (K, F, T) each
        mask = None
        if train and self.augment.active:
            a = self.augment
            mask = spec_augment_mask(
                k,
                *self.size,
                freq_masks=a.freq_masks,
                freq_width=a.freq_width,
                time_masks=a.time_masks,
                time_width=a.time_width,
                rng=self._rng,
            )
        x = self._asm.stack(to_unit(planes, self.features), mask)
        lbl, tid = self.ids(sample)
        return {"x": x, "lbl": lbl.expand(k, -1), "track": torch.full((k,), tid, dtype=torch.int64)}


class ImageBaselineLoader(BaselineLoader):
    """``BaselineLoader`` (webdataset + DataLoader workers) with the PIL + torchvision image stage."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        old = self.featurize
        self.featurize = _ImageFeaturize(
            self.manifest, old.features, old.augment, old.loader_cfg, old.mode, old.seed
        )  # type: ignore[assignment]
