"""Chunk -> track aggregation.

A track is cut into several 6 s chunks; the model scores each chunk and the track's
prediction is the mean (or max) of its chunk probabilities. A long track is stored as
segments that may be evaluated on different ranks, so this runs on the gathered chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import torch

from eval.config import Aggregate

Array = TypeVar("Array", torch.Tensor, np.ndarray)
"""The array type of a ``ScoredRows``: torch tensors or numpy arrays."""


@dataclass
class ScoredRows(Generic[Array]):
    """Rows of probabilities with their labels and track ids.

    ``probs`` (N, sum(head_sizes)) float32; ``target`` single (N,), multi (N, K) 0/1,
    hier (N, L), all int64; ``track`` (N,) int64. Torch tensors while evaluating
    (``ScoredRows[torch.Tensor]``), numpy arrays in an ``EvalResult``
    (``ScoredRows[np.ndarray]``).
    """

    probs: Array
    target: Array
    track: Array

    def __len__(self) -> int:
        return int(self.track.shape[0])

    def numpy(self) -> ScoredRows[np.ndarray]:
        conv = lambda a: a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)  # noqa: E731
        return ScoredRows(conv(self.probs), conv(self.target), conv(self.track))

    def torch(self) -> ScoredRows[torch.Tensor]:
        conv = lambda a: a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        return ScoredRows(conv(self.probs), conv(self.target), conv(self.track))


def aggregate_tracks(chunks: ScoredRows, how: Aggregate = "mean") -> ScoredRows[torch.Tensor]:
    """One row per track (sorted by track id): mean or max of its chunks' probabilities.

    Every chunk of a track must carry the same label; a mismatch means the loader mixed
    tracks up, so it is an error naming the track rather than a silent vote.
    """
    if how not in ("mean", "max"):
        raise ValueError(f"aggregate: {how!r} is not mean or max")
    c = chunks.torch()
    probs, target, track = c.probs.float(), c.target, c.track.reshape(-1).long()
    if probs.shape[0] != track.shape[0] or target.shape[0] != track.shape[0]:
        raise ValueError(
            f"aggregate: {probs.shape[0]} probability rows, {target.shape[0]} labels, {track.shape[0]} ids"
        )
    ids, inverse = torch.unique(track, sorted=True, return_inverse=True)
    n = ids.shape[0]
    index = inverse.view(-1, *([1] * (probs.dim() - 1))).expand_as(probs)
    out = torch.zeros((n, *probs.shape[1:]), dtype=probs.dtype)
    if how == "mean":
        out.index_add_(0, inverse, probs)
        counts = torch.bincount(inverse, minlength=n).clamp_min(1).to(probs.dtype)
        out /= counts.view(-1, *([1] * (probs.dim() - 1)))
    else:
        out.fill_(-torch.inf).scatter_reduce_(0, index, probs, reduce="amax")
    first = torch.full((n,), track.shape[0], dtype=torch.long).scatter_reduce_(
        0, inverse, torch.arange(track.shape[0]), reduce="amin"
    )
    track_target = target[first]
    mismatch = target != track_target[inverse]
    if mismatch.dim() > 1:
        mismatch = mismatch.flatten(1).any(dim=1)
    if bool(mismatch.any()):
        bad = int(track[mismatch.nonzero()[0, 0]])
        raise ValueError(f"aggregate: track {bad} has chunks with different labels")
    return ScoredRows(out, track_target, ids)
