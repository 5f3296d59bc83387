"""Defaults that come from the data: what a shard build's manifest says about ``[features]``.

An image build (ccmusic's spectrogram JPEGs, a folder of PNGs) already says which channels it
has and how large its images are, so a config that does not set ``features.channels``,
``n_mels`` (F) or ``image_frames`` (T) takes them from the manifest instead of the audio
defaults (``mel, mfcc, chroma``, 256 mel bins), which such a build cannot satisfy. Explicit
settings (file, ``--features.key=value``, a preset's) always win; the resolved values are what
checkpoints store, so ``eval`` rebuilds the same features. Every CLI that reads ``[features]``
for a build (``python -m train``, ``pipelines.bench``, ``pipelines.stats``) passes
``feature_defaults`` to the one config loader (``shards.base.config.load_sections``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.config import FeatureConfig
from pipelines.feature_presets import FEATURE_PRESETS
from shards.format import MANIFEST, Manifest, StorageError, read_manifest, storage

Defaults = dict[str, dict[str, Any]]


def image_features(manifest: Manifest) -> dict[str, Any]:
    """``[features]`` values of an image build: all its channels in order, F = the tallest and
    T = the widest image of any channel (no image is shrunk); {} for an audio build."""
    if manifest.kind != "image":
        return {}
    height = max(c.max_size[0] for c in manifest.images.values())
    width = max(c.max_size[1] for c in manifest.images.values())
    return {"channels": list(manifest.images), "n_mels": height, "image_frames": max(2, width)}


def feature_defaults(shards: str | Path | None) -> Callable[[dict[str, Any]], Defaults]:
    """``defaults(tree)`` for ``load_sections``: the build's ``[features]`` values under the
    config's. ``shards=None``: the tree's own ``data.shards`` (an experiment file; its first
    build when it lists several). No manifest
    there yet (a config printed before its build exists): no defaults; a preset's keys stay
    the preset's."""

    def defaults(tree: dict[str, Any]) -> Defaults:
        data = _table(tree, "data")
        where = shards if shards is not None else data.get("shards")
        if isinstance(where, list) and where:  # mixed builds: the first one's image settings apply
            where = where[0]
        if not isinstance(where, (str, Path)) or data.get("synthetic") is True or not _built(where):
            return {}
        values = image_features(read_manifest(where, check_files=False))
        if not values:
            return {}
        table = _table(tree, "features")
        preset = FEATURE_PRESETS.get(str(table.get("preset")), {})
        values = {k: v for k, v in values.items() if k not in preset}
        rows = table.get("n_mels", preset.get("n_mels", values.get("n_mels")))
        if isinstance(rows, int) and rows < FeatureConfig().n_mfcc:  # MFCCs are not computed from
            values["n_mfcc"] = max(1, rows)  # images: keep the unused n_mfcc <= n_mels check quiet
        return {"features": values}

    return defaults


def _table(tree: dict[str, Any], name: str) -> dict[str, Any]:
    """``tree[name]`` when it is a table ({} otherwise: the loader names a misplaced value)."""
    table = tree.get(name)
    return table if isinstance(table, dict) else {}


def _built(where: str | Path) -> bool:
    """A manifest is at ``where`` (a folder or an ``s3://``/``gs://`` prefix). A store that cannot
    be asked now gives no defaults: the loader reports the problem, with its own line, when it
    reads the build."""
    try:
        return storage.exists(storage.join(where, MANIFEST))
    except StorageError:
        return False
