"""Check and store spectrogram images (the ``image`` sample kind), in the builder's worker processes.

An image sample keeps each channel's file bytes unchanged (``KEY.mel.jpg``...), so the
pipeline decodes exactly what the dataset published (nvJPEG on the GPU). Every image is
decode-checked here first (PIL ``verify()`` then a full ``load()``: a truncated JPEG fails
the load), so a broken file becomes a reject line instead of a DALI error mid-epoch.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from shards.base.errors import first_line
from shards.importers import reasons

_EXT = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "TIFF": "tif", "WEBP": "webp"}


@dataclass(frozen=True)
class ImageSpec:
    """What the builder wants out of an image record: nothing but decodable images."""

    channels: tuple[str, ...]


@dataclass
class EncodedImages:
    """A checked image sample: members ``{"mel.jpg": bytes, ...}`` and each channel's (height, width)."""

    members: dict[str, bytes]
    sizes: dict[str, tuple[int, int]]


def inspect_image(data: bytes) -> tuple[str, int, int]:
    """-> (member extension, height, width) of a fully decodable image; raises on a broken one."""
    with Image.open(io.BytesIO(data)) as im:
        im.verify()
    with Image.open(io.BytesIO(data)) as im:  # verify() leaves the image unusable: reopen to decode
        im.load()
        fmt, (w, h) = im.format or "", im.size
    if fmt not in _EXT:
        raise ValueError(f"unsupported image format {fmt or 'unknown'}")
    return _EXT[fmt], h, w


def pack_images(images: dict[str, Path | bytes], spec: ImageSpec) -> EncodedImages | str:
    """Read and check every channel's image; ``EncodedImages`` or a one-line reject reason."""
    members: dict[str, bytes] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for ch in spec.channels:
        src = images.get(ch)
        if src is None:
            return f"no {ch} image"
        if isinstance(src, Path):
            fault = reasons.file_fault(src)
            if fault:
                return f"{fault}: {ch}"
            try:
                src = src.read_bytes()
            except OSError as e:
                return f"{reasons.unreadable(e)}: {ch}"
        if not src:
            return f"no {ch} image bytes"
        try:
            ext, h, w = inspect_image(src)
        except Exception as e:  # PIL raises many types (OSError, SyntaxError, ...) for broken files
            msg = first_line(e)
            return f"image decode failed: {ch}: {msg}"
        members[f"{ch}.{ext}"] = src
        sizes[ch] = (h, w)
    return EncodedImages(members=members, sizes=sizes)
