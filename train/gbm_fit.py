"""Fitting the gbm family: distributed feature extraction, fit on rank 0, broadcast.

Every rank pools features (per channel/band mean+std over time) of its share of the
training loader's chunks on its own device; rank 0 gathers them, fits PCA + LightGBM
and sends the fitted state (tensors and booster text) back, so every rank validates
the same model.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from tqdm import tqdm

from shards.manifest import TaskSpec
from train import distributed
from train.models.gbm import GBMModel, pooled_features


@torch.no_grad()
def extract(loader: Any, bands: int | None, *, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) pooled features and (N, ...) labels of this rank's share of one epoch."""
    feats, labels = [], []
    for batch in tqdm(loader, desc="gbm features", disable=not progress, leave=False):
        feats.append(pooled_features(batch["x"], bands).cpu())
        labels.append(batch["y"].cpu())
    return torch.cat(feats), torch.cat(labels)


def fit_distributed(
    model: GBMModel, loader: Any, task: TaskSpec, *, is_main: bool, threads: int | None
) -> dict[str, float]:
    """Extract everywhere, fit on rank 0, broadcast the fitted state; returns timing/size stats."""
    t0 = time.perf_counter()
    feats, labels = extract(loader, model.bands, progress=is_main)
    all_feats = distributed.gather_tensors(feats)
    all_labels = distributed.gather_tensors(labels)
    t1 = time.perf_counter()
    stats: dict[str, float] = {}
    if is_main:
        assert all_feats is not None and all_labels is not None
        x, y = torch.cat(all_feats), torch.cat(all_labels)
        model.fit(x, y, task.kind, task.head_sizes, threads=threads or 0)
        stats = {"gbm/samples": float(len(x)), "gbm/features": float(x.shape[1])}
    state = distributed.broadcast_object(model.get_extra_state() if is_main else None)
    model.set_extra_state(state)
    stats = distributed.broadcast_object(stats)
    stats.update({"gbm/extract_s": t1 - t0, "gbm/fit_s": time.perf_counter() - t1})
    return stats
