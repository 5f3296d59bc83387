"""Constructed eval inputs for tests and demos: batches whose ``x`` already holds the
probabilities, so an identity "model" makes every metric predictable."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


def identity(x: torch.Tensor) -> torch.Tensor:
    """A predictor whose chunk probabilities are the batch's ``x``."""
    return x


def batches(
    probs: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    track: np.ndarray | torch.Tensor,
    size: int = 4,
) -> list[dict[str, torch.Tensor]]:
    """Chunk rows -> loader-style dicts {x: probabilities (B, D), y, track (B,)}."""
    p, y, t = (torch.as_tensor(np.asarray(a)) for a in (probs, target, track))
    return [
        {"x": p[i : i + size].float(), "y": y[i : i + size], "track": t[i : i + size].long()}
        for i in range(0, len(t), size)
    ]


def rank_share(
    rows: list[dict[str, torch.Tensor]], rank: int, world_size: int
) -> Iterator[dict[str, torch.Tensor]]:
    """This rank's chunks when tracks are dealt out by ``track % world_size`` (as the
    eval loader shards by track)."""
    for b in rows:
        keep = b["track"] % world_size == rank
        if bool(keep.any()):
            yield {k: v[keep] for k, v in b.items()}
