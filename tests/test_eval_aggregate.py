"""Chunk -> track aggregation on constructed chunks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval.aggregate import ScoredRows, aggregate_tracks


def _chunks() -> ScoredRows:
    # track 7: three chunks, track 2: two chunks (interleaved, out of order)
    probs = torch.tensor([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5], [0.9, 0.1], [0.1, 0.9]])
    track = torch.tensor([7, 2, 7, 2, 7])
    target = torch.tensor([1, 0, 1, 0, 1])
    return ScoredRows(probs, target, track)


def test_mean_per_track_sorted_by_id() -> None:
    out = aggregate_tracks(_chunks(), "mean")
    assert out.track.tolist() == [2, 7]
    np.testing.assert_allclose(out.probs.numpy(), [[0.75, 0.25], [0.8 / 3, 2.2 / 3]], atol=1e-6)
    assert out.target.tolist() == [0, 1]


def test_max_per_track() -> None:
    out = aggregate_tracks(_chunks(), "max")
    np.testing.assert_allclose(out.probs.numpy(), [[0.9, 0.4], [0.5, 0.9]], atol=1e-6)


def test_multi_label_targets_kept_per_track() -> None:
    c = ScoredRows(
        torch.rand(4, 3),
        torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 1], [0, 1, 0]]),
        torch.tensor([0, 1, 0, 1]),
    )
    out = aggregate_tracks(c)
    assert out.target.tolist() == [[1, 0, 1], [0, 1, 0]]


def test_inconsistent_labels_name_the_track() -> None:
    c = _chunks()
    c.target[4] = 0
    with pytest.raises(ValueError, match="track 7 has chunks with different labels"):
        aggregate_tracks(c)


def test_empty_input_gives_empty_tracks() -> None:
    out = aggregate_tracks(ScoredRows(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), torch.zeros(0)))
    assert out.probs.shape == (0, 3) and len(out) == 0


def test_unknown_mode_is_an_error() -> None:
    with pytest.raises(ValueError, match="median"):
        aggregate_tracks(_chunks(), "median")  # type: ignore[arg-type]
